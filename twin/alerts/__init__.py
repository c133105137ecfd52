"""Alerts: YAML rules, lifecycle in DuckDB, topology-aware inhibition, durable delivery.

See docs/alerts.md. Entry point for a process: `twin.alerts.service.AlertService`.
"""
