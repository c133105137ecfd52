"""Healthy means quiet (issue #23): six simulated hours of the healthy example site through
the simulated collector source, the batcher, the store, the twin and the alert engine
with the shipped default rules fire no alert. Simulated time (tests/twin_sim.py), no
sleeping. A fault still fires (the rules are not merely deaf)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.site import EXAMPLE_SITE
from ingest.store import Store
from tests.twin_sim import SimHarness
from twin.alerts.providers import twin_providers
from twin.alerts.rules import load_rules
from twin.alerts.service import AlertService
from twin.state import Twin
from twin.twin_config import TwinConfig

STEP_S = 60.0  # one read a minute: every rule's `for` and window spans several reads


def fired_alerts(path, hours: float, seed: int, faults: str | None = None) -> list[tuple]:
    """(alertname, device or loop) of every alert that fired, default rules, example site.
    Anomaly and failure-risk rules are inactive here: they need trained models."""
    store = Store(path)
    try:
        h = SimHarness(store, site_file=EXAMPLE_SITE, seed=seed, faults=faults)
        twin = Twin(h.site, store, config=TwinConfig(telemetry_interval_s=STEP_S))
        rules = load_rules(None)
        svc = AlertService(store, h.site, rules, [], providers=twin_providers(twin, 3 * STEP_S))
        fired = []
        for _ in range(int(hours * 3600 / STEP_S)):
            t_ms = h.step(STEP_S)
            twin.tick(t_ms)
            now = datetime.fromtimestamp(t_ms / 1000, UTC).replace(tzinfo=None)
            for a in svc.evaluate(now).new:
                fired.append(
                    (a.labels["alertname"], a.labels.get("device_id", a.labels.get("cdu")))
                )
        errors = {n: s.error for n, s in svc.engine.status.items() if s.error}
        assert not errors, errors  # a rule that errors would be quiet for the wrong reason
        return fired
    finally:
        store.close()


@pytest.mark.slow
def test_six_healthy_hours_of_the_example_site_fire_no_alert(tmp_path):
    assert fired_alerts(tmp_path / "quiet.duckdb", 6.0, seed=3) == []


@pytest.mark.slow
def test_a_failing_cold_plate_still_fires(tmp_path):
    gpu = "sv1/h1/row2/rk203/n04/gpu6"
    fired = fired_alerts(
        tmp_path / "fault.duckdb",
        1.0,
        seed=3,
        faults=f"tim_degradation@{gpu}:onset=5m,duration=30m",
    )
    assert ("GpuTemperatureHigh", gpu) in fired
