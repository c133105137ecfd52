"""End to end through the real broker: simulated collector -> Kafka -> ingest -> DuckDB ->
twin -> API."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role
from tests.helpers import ingest_until
from twin.state import Twin

INTERVALS = 3


@pytest.fixture
def collector(settings, unique):
    cfg = CollectorConfig(
        name=f"sim-{unique}",
        site="sv1",
        interval_s=0.2,
        kafka={"bootstrap": settings.kafka_bootstrap, "compression": "lz4"},
        sources=[{"type": "simulated", "seed": 3}],
    )
    source = SimulatedSource(SimulatedSourceConfig(seed=3))
    daemon = CollectorDaemon(cfg, sources=[source])
    yield daemon
    daemon.close()


def test_simulated_batches_are_stored_exactly_and_pue_matches_hand_computation(
    settings, collector, site
):
    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)
    try:
        collector.run(max_intervals=INTERVALS)
        produced = collector.stats.samples_delivered
        # every sample of the example site, each interval (28784 before the setpoint and
        # plant-state metrics of issue 19: 4 CDUs x 2 setpoints + 6 plant metrics)
        assert produced == INTERVALS * 28798

        def stored() -> int:
            return (
                store.cursor()
                .execute(
                    "SELECT coalesce(sum(n_samples), 0) FROM ingested_batches WHERE collector = ?",
                    [collector.config.name],
                )
                .fetchone()[0]
            )

        ingest_until(ingestor, lambda: stored() >= produced)
        assert stored() == produced
        rows = (
            store.cursor()
            .execute(  # topics are shared: only this collector's events
                "SELECT count(*) FROM samples s JOIN events e USING (device_id) "
                "WHERE e.collector = ? AND e.kind <> 'inventory'",
                [collector.config.name],
            )
            .fetchone()[0]
        )
        assert rows == 0  # a simulated healthy site raises no events...
        inventory = (
            store.cursor()
            .execute(
                "SELECT count(DISTINCT device_id), count(*) FROM events "
                "WHERE collector = ? AND kind = 'inventory'",
                [collector.config.name],
            )
            .fetchone()
        )
        sim = collector.sources[0].sim  # ...but says which part is in every GPU/PSU slot, once
        assert inventory == (sim.layout.n_gpu + sim.layout.n_psu,) * 2

        # PUE by hand from the last interval the simulator produced
        plant = collector.sources[0].sim.plant

        def reading(kw: float) -> float:  # Modbus meters report tenths of a kW
            return float(np.floor(kw / 0.1 + 0.5) * 0.1)

        facility_kw, ups_output_kw = reading(plant.facility_kw), reading(plant.ups_output_kw)
        expected = facility_kw / ups_output_kw
        twin = Twin(site, store)
        keys, tokens = keys_per_role(settings.db_path.parent / "keys.duckdb")
        client = TestClient(create_app(twin, keys=keys), headers=bearer(tokens[Role.viewer]))
        body = client.get("/v1/pue").json()
        assert body["category"] == "PUE1"
        assert body["reason"] is None
        by_id = {i["device_id"]: i["value"] for i in body["inputs"]}
        assert by_id["sv1/facility/utility"] == pytest.approx(facility_kw, rel=1e-12)
        assert by_id["sv1/facility/ups-out"] == pytest.approx(ups_output_kw, rel=1e-12)
        assert body["value"] == pytest.approx(expected, rel=1e-12)
        assert 1.0 < body["value"] < 2.0
        assert body["dcie"] == pytest.approx(1 / expected, rel=1e-12)

        gpu = client.get("/v1/devices/sv1/h1/row1/rk101/n01/gpu0").json()
        assert gpu["device_class"] == "gpu"
        metrics = {m["metric"]: m["value"] for m in gpu["metrics"]}
        read_w = collector.sources[0].sim.gpu_power_read_w[0]  # NVML: milliwatts
        assert metrics["power_w"] == pytest.approx(read_w, abs=0.0005 + 1e-9)
        assert client.get("/v1/devices/sv1/nowhere").status_code == 404
    finally:
        ingestor.close()
        store.close()


def test_replayed_messages_are_not_stored_twice(settings, collector):
    """A second consumer group over the same topics, into the same DuckDB, stores nothing new:
    batch ids already stored are recognised."""
    store = Store(settings.db_path)
    try:
        collector.run(max_intervals=1)
        first = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)

        def stored() -> int:
            return (
                store.cursor()
                .execute(
                    "SELECT coalesce(sum(n_samples), 0) FROM ingested_batches WHERE collector = ?",
                    [collector.config.name],
                )
                .fetchone()[0]
            )

        ingest_until(first, lambda: stored() >= collector.stats.samples_delivered)
        first.close()
        count = store.cursor().execute("SELECT count(*) FROM samples").fetchone()[0]
        second = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group + "-replay")
        store.cursor().execute("DELETE FROM kafka_offsets")  # force a full replay
        ingest_until(second, lambda: second.stats.batches_skipped > 0)
        for _ in range(5):
            second.poll_once(timeout_ms=300)
        second.close()
        assert store.cursor().execute("SELECT count(*) FROM samples").fetchone()[0] >= count
        dupes = (
            store.cursor()
            .execute(
                "SELECT count(*) FROM (SELECT device_id, metric, read_time FROM samples "
                "GROUP BY ALL HAVING count(*) > 1)"
            )
            .fetchone()[0]
        )
        assert dupes == 0
    finally:
        store.close()


def test_server_starts_and_stops_every_background_job(tmp_path):
    """One Server builds every service and is the one place their background jobs start
    and stop: all are running after start_jobs(), none after stop(), and the store closes
    last (no scorer thread left running against a closed store)."""
    import threading

    from dctwin.server import Server
    from dctwin.settings import Settings

    settings = Settings(
        db_path=tmp_path / "twin.duckdb",
        apikey_db=tmp_path / "keys.duckdb",
        alerts_topic="",
        failure_models=tmp_path / "models",
        failure_horizon="30m",
    )
    server = Server(settings)
    assert server.failure_risk.root == tmp_path / "models"
    assert server.failure_risk.horizon_s == 1800
    before = set(threading.enumerate())
    server.start_jobs()
    try:
        assert [name for name, _, _ in server.jobs] == server._started
        assert server.anomaly.running and server.failure_risk.running
        app = server.uvicorn_server().config.app
        services = app.state.services
        assert services.anomaly is server.anomaly and services.alerts is server.alerts
        assert services.failure_risk is server.failure_risk and services.live is server.live
    finally:
        server.stop()
    assert server._started == []
    assert not server.anomaly.running and not server.failure_risk.running
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == [], leftover
