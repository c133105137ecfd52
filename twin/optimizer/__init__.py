"""Chilled-water setpoint optimization: learned plant/thermal models, a constrained
search that never extrapolates, and recommendations with a lifecycle (docs/optimizer.md)."""
