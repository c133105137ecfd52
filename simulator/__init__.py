"""Physics simulator of an AI data center: power, liquid and air cooling, the chilled-water
plant, workload, weather, controls and a fault catalog with ground-truth labels.

Depends only on `domain`. Runtime packages never import it; the simulated collector source
(`collectors/sources/simulated/`) is its one adapter into the pipeline.
"""
