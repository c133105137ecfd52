"""Capacity headroom and forecast (issue 27)."""
