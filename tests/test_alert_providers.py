"""Providers backed by the real twin core: heat-balance residual per cooling loop and
energy-based site PUE over an interval, feeding alert rules."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from collectors.batching import Batcher
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import EventBatch, TelemetryBatch
from ingest.store import Store
from tests.alerting import write_samples
from twin.alerts.outbox import utcnow
from twin.alerts.providers import twin_providers
from twin.alerts.rules import parse_rules
from twin.alerts.service import AlertService
from twin.state import Twin

RULES = """
rules:
  - name: LoopImbalance
    kind: heat_balance
    value: 0.15
    clear: 0.10
    annotations: {summary: "{cdu} off by {value:.0%}"}
"""


@pytest.fixture
def twin_with_data(tmp_path, site):
    """A minute of the whole simulated site, written through the store."""
    store = Store(tmp_path / "twin.duckdb")
    source = SimulatedSource(SimulatedSourceConfig(seed=2))
    batcher = Batcher("sim", "sv1", 1.0)
    now = utcnow().replace(microsecond=0)
    start_ms = int(now.replace(tzinfo=UTC).timestamp() * 1000) - 60_000
    for k in range(60):
        source.sim.step(1.0)
        batches = batcher.batches(source.snapshot(start_ms + k * 1000))
        store.write(
            [b for b in batches if isinstance(b, TelemetryBatch)],
            [b for b in batches if isinstance(b, EventBatch)],  # the parts' inventory
            {},
        )
    return Twin(site, store), source.sim, now


def test_twin_pue_interval_provider_matches_the_simulated_plant(twin_with_data):
    twin, sim, now = twin_with_data
    pue = twin_providers(twin).pue_interval(now - timedelta(seconds=30), now)
    assert pue == pytest.approx(sim.plant.facility_kw / sim.plant.ups_output_kw, rel=0.01)


def test_heat_balance_residual_from_the_twin_fires_for_the_faulty_loop(twin_with_data, site):
    twin, sim, now = twin_with_data
    svc = AlertService(twin.store, site, parse_rules(RULES)[0], [], providers=twin_providers(twin))
    twin.tick()
    assert not svc.evaluate(now).new  # the simulated site balances
    # a flow meter reading half the real flow on loop row2: Q = m·cp·ΔT looks halved
    cdu = "sv1/h1/cdu-row2"
    flow = float(sim.cdu_flow_lpm[sim.layout.cdu_ids.index(cdu)])
    write_samples(twin.store, "cooling", [(cdu, "flow_lpm", flow / 2, now)])
    twin.tick()
    (alert,) = svc.evaluate(now + timedelta(seconds=1)).new
    assert alert.labels["cdu"] == cdu and alert.labels["alertname"] == "LoopImbalance"
    assert alert.value == pytest.approx(0.5, abs=0.05)  # liquid heat halved vs its IT load
    svc.stop()
