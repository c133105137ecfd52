"""Issue 21 acceptance: a GPU swapped in the simulator (same slot, new UUID) is recorded
by the twin as a swap, and the new part starts a fresh failure-risk history.

End to end: simulated collector -> real broker -> ingest -> DuckDB -> part history and
failure-risk service (the server's wiring: `on_scored` -> `record_risk`) -> API."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import polars as pl
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from dctwin.broker import DevBroker
from domain.site import load_site
from domain.topics import ensure_topics
from ingest.consumer import Ingestor
from ingest.store import Store
from simulator.injector import SimEvent
from tests.apihelpers import bearer, keys_per_role
from tests.helpers import ingest_until
from tests.twin_sim import SMALL_SITE
from twin.failure import registry
from twin.failure.features import CLASSES, FEATURES, features_asof
from twin.failure.model import ClassModel, FailureModel
from twin.failure.service import FailureRiskService
from twin.parts import PartHistory
from twin.state import Twin


@pytest.fixture
def models(tmp_path):
    """An approved model in a real registry. Its classes have no classifier (what `fit`
    leaves for a class with too few failures): every device scores, lost ones at 1; what
    it predicts does not matter here, that it is served and recorded does."""
    model = FailureModel(
        1800.0,
        {c: ClassModel(FEATURES[c], None, None, 1.0, {}, {}, 0.0, 0, 0) for c in CLASSES},
    )
    v = registry.save(model, {"note": "identity test"}, tmp_path / "models")
    registry.approve(v.version, tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture
def own_broker(tmp_path) -> Iterator[str]:
    """A broker of this test's own: the store starts empty, as a new site's does. (On the
    session's broker the ingestor would also take every earlier test's messages; a device
    first seen after a 5-min feature tick only joins the risk table at the next tick, see
    docs/failure-prediction.md, so the new slot would not be scored yet.)"""
    broker = DevBroker(log_path=tmp_path / "broker.log").start()
    try:
        ensure_topics(broker.bootstrap, 4)
        yield broker.bootstrap
    finally:
        broker.stop()


def test_gpu_swap_is_recorded_and_the_new_part_starts_a_fresh_risk_history(
    settings, unique, models, tmp_path, own_broker
):
    site = load_site(SMALL_SITE)
    gpu = site.racks()[0].gpu_id(0, 2)
    source = SimulatedSource(SimulatedSourceConfig(site_file=SMALL_SITE, seed=5))
    collector = CollectorDaemon(
        CollectorConfig(
            name=f"sim-{unique}",
            site=site.site.id,
            interval_s=0.2,
            kafka={"bootstrap": own_broker},
            sources=[{"type": "simulated", "site_file": str(SMALL_SITE), "seed": 5}],
        ),
        sources=[source],
    )
    store = Store(settings.db_path)
    ingestor = Ingestor(store, own_broker, settings.consumer_group)
    parts = PartHistory(store)
    risk = FailureRiskService(store, 1800.0, models, tick_s=1e-3)  # rescore every round
    risk.on_scored.append(parts.record_risk)  # as dctwin.server.Server wires it

    def inventory_of(uuid: str) -> bool:
        """The part's identity and the slot's readings are stored (the events topic and
        the telemetry topics are consumed independently)."""
        return bool(
            store.cursor()
            .execute(
                "SELECT (SELECT count(*) FROM events WHERE kind = 'inventory' "
                "AND attrs->>'uuid' = ?) * (SELECT count(*) FROM latest WHERE device_id = ?)",
                [uuid, gpu],
            )
            .fetchall()[0][0]
        )

    def run(intervals: int, until) -> None:
        collector.run(max_intervals=intervals)
        ingest_until(ingestor, until)
        parts.update()
        assert risk.refresh() is True

    def xid94_of_slot() -> int:
        """The slot's `xid94_2h` failure feature as of the newest reading (the reference
        features a fresh store's risk is scored from)."""
        cur = store.cursor()
        [(newest,)] = cur.execute("SELECT max(read_time) FROM samples").fetchall()
        feats = features_asof(cur, newest).filter(pl.col("device_id") == gpu)
        assert feats.height == 1, feats
        return int(feats["xid94_2h"][0])

    def a_second_after(uuid: str) -> bool:
        """A reading stored over a second after the part's first report."""
        return bool(
            store.cursor()
            .execute(
                "SELECT max(read_time) >= (SELECT min(read_time) FROM events WHERE "
                "kind = 'inventory' AND attrs->>'uuid' = ?) + INTERVAL 1100 MILLISECOND "
                "FROM samples",
                [uuid],
            )
            .fetchall()[0][0]
        )

    def old_xid_stored() -> bool:
        return bool(
            store.cursor()
            .execute("SELECT count(*) FROM events WHERE kind = 'xid' AND device_id = ?", [gpu])
            .fetchall()[0][0]
        )

    try:
        old = source.sim.parts.identity(gpu)
        # the old part raises a contained ECC error (XID 94, a failure feature)
        source.sim.faults.events.append(
            SimEvent(int(source.sim.time_s * 1000), gpu, "xid", "critical", "XID 94", {"xid": 94})
        )
        # over a second of readings: features are scored as of the newest whole second
        run(7, lambda: inventory_of(str(old["uuid"])) and old_xid_stored())
        assert (parts.current(gpu) or {}).get("uuid") == old["uuid"]
        before = parts.risk_history(str(old["uuid"]))
        assert len(before) == 1 and before[0]["device_id"] == gpu
        assert xid94_of_slot() == 1

        # maintenance: the GPU in the slot is replaced
        swapped_old, new = source.sim.swap_part(gpu)
        assert swapped_old == old and new["uuid"] != old["uuid"]
        assert new["serial"] != old["serial"]
        # over a second of the new part's readings: features are scored as of a whole
        # second, which must be after the swap
        run(7, lambda: inventory_of(str(new["uuid"])) and a_second_after(str(new["uuid"])))

        # the twin recorded the swap, as an event the stream and alert rules see
        [(t_swap, attrs)] = (
            store.cursor()
            .execute(
                "SELECT read_time, CAST(attrs AS VARCHAR) FROM events "
                "WHERE kind = 'part_swapped' AND device_id = ?",
                [gpu],
            )
            .fetchall()
        )
        a = orjson.loads(attrs)
        assert (a["old_uuid"], a["new_uuid"]) == (old["uuid"], new["uuid"])
        assert (a["old_serial"], a["new_serial"]) == (old["serial"], new["serial"])
        slot = parts.slot_history(gpu)
        assert [(s["uuid"], s["removed_at"]) for s in slot] == [
            (old["uuid"], t_swap),
            (new["uuid"], None),
        ]
        # a fresh risk history for the new part; the old part's history stops at the swap
        fresh = parts.risk_history(str(new["serial"]))
        assert len(fresh) == 1 and fresh[0]["time"] >= t_swap
        assert parts.risk_history(str(old["uuid"])) == before
        assert before[0]["time"] < t_swap
        # the new part's failure features start at the swap: the old part's XID is in
        # the slot's 2-h window but no longer counts
        assert xid94_of_slot() == 0

        keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
        client = TestClient(
            create_app(Twin(site, store), keys=keys, failure_risk=risk, parts=parts),
            headers=bearer(tokens[Role.viewer]),
        )
        now = client.get(f"/v1/parts/{new['uuid']}").json()
        assert now["slot"] == gpu and now["risk"]["points"] == 1
        assert now["events"][0]["kind"] == "part_swapped"
        gone = client.get(f"/v1/parts/{old['serial']}").json()
        assert gone["slot"] is None and gone["last_slot"] == gpu
        assert gone["risk"]["points"] == 1
        state = client.get(f"/v1/devices/{gpu}").json()
        assert state["part"]["uuid"] == new["uuid"]
        assert state["failure_risk"]["model_version"] == risk.model_version
    finally:
        collector.close()
        ingestor.close()
        store.close()
