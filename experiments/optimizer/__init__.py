"""Offline optimizer experiments (see experiments/__init__.py)."""
