"""The shared model every layer speaks: the wire contract, the site model, plant limits.

Bottom layer: imports nothing else of the project (import-linter enforces it), so a rack
collector, ingest, the twin, the API and the simulator all agree on one definition.
"""
