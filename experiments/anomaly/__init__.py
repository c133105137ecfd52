"""Offline anomaly experiments (see experiments/__init__.py)."""
