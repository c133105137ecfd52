"""Offline failure experiments (see experiments/__init__.py)."""
