"""GPU/PSU identity: the twin's slot -> part history, swaps and moves, risk history by part,
and the parts API; over a real DuckDB store fed with inventory events as ingest stores
them, and the simulator's identities and swaps through the real simulated source."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import orjson
import polars as pl
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import Event, EventBatch, EventKind
from domain.site import load_site
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role
from tests.twin_sim import SMALL_SITE, START_S, SimHarness
from twin.parts import HEARTBEAT_S, PartHistory
from twin.state import Twin

A = "sv1/h1/row1/rk101/n01/gpu0"
B = "sv1/h1/row1/rk101/n01/gpu1"
U1, U2, U3 = (f"GPU-{i}1111111-2222-3333-4444-555555555555" for i in "abc")
T0 = datetime(2025, 6, 1, 3, 0, 0)
_seq = itertools.count()


def event(device: str, t: datetime, kind: EventKind = EventKind.inventory, **attrs) -> Event:
    ms = int((t - datetime(1970, 1, 1)).total_seconds() * 1000)
    return Event(device_id=device, kind=kind, severity="info", read_time_ms=ms, attrs=attrs)


def store_events(store: Store, *events: Event) -> None:
    """As ingest stores an event batch off the events topic."""
    batch = EventBatch(
        collector="test",
        site="sv1",
        rack="rk101",
        seq=next(_seq),
        sent_time_ms=0,
        events=list(events),
    )
    store.write([], [batch], {})


def current(ph: PartHistory, device_id: str) -> dict:
    part = ph.current(device_id)
    assert part is not None, device_id
    return part


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def swaps(store: Store) -> list[tuple]:
    return (
        store.cursor()
        .execute(
            "SELECT device_id, read_time, CAST(attrs AS VARCHAR), collector FROM events "
            "WHERE kind = 'part_swapped' ORDER BY read_time"
        )
        .fetchall()
    )


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "twin.duckdb")
    yield s
    s.close()


def test_swap_is_recorded_and_identical_reports_are_not(store):
    ph = PartHistory(store)
    store_events(store, event(A, at(0), uuid=U1, serial="100"), event(B, at(0), uuid=U3))
    assert ph.update() == 2
    # the same identity again (a collector restart, a driver update): no swap
    store_events(store, event(A, at(5), uuid=U1, serial="100", driver_version="560.1"))
    store_events(store, event(A, at(6), uuid=U1, serial="100"))
    assert ph.update() == 0 and swaps(store) == []
    store_events(store, event(A, at(10), uuid=U2, serial="200"))
    assert ph.update() == 1
    [(dev, t, attrs, collector)] = swaps(store)
    assert (dev, t, collector) == (A, at(10), "twin")
    assert orjson.loads(attrs) == {
        "old_uuid": U1,
        "old_serial": "100",
        "new_uuid": U2,
        "new_serial": "200",
        "moved_from": None,
    }
    history = ph.slot_history(A)
    assert [(h["uuid"], h["installed_at"], h["removed_at"]) for h in history] == [
        (U1, at(0), at(10)),
        (U2, at(10), None),
    ]
    assert history[0]["last_reported"] == at(6)
    assert current(ph, A)["serial"] == "200" and current(ph, B)["uuid"] == U3
    # a restarted twin resumes from its cursor: nothing repeated, nothing lost
    again = PartHistory(store)
    assert again.update() == 0 and len(swaps(store)) == 1
    assert current(again, A)["uuid"] == U2


def test_part_moving_between_slots_is_followed(store):
    ph = PartHistory(store)
    store_events(store, event(A, at(0), uuid=U1, serial="100"))
    store_events(store, event(B, at(0), uuid=U2, serial="200"))
    ph.update()
    # U1 re-seated from A into B (B's part U2 out): one round, several reports
    store_events(store, event(B, at(20), uuid=U1, serial="100"))
    store_events(store, event(A, at(25), uuid=U3, serial="300"))
    assert ph.update() == 2
    moved = ph.part("100")
    assert moved is not None
    assert moved["slot"] == B and moved["last_slot"] == B
    assert [(s["device_id"], s["removed_at"]) for s in moved["slots"]] == [
        (A, at(20)),
        (B, None),
    ]
    out = ph.part(U2)
    assert out is not None and out["slot"] is None and out["last_slot"] == B
    events = {(d, orjson.loads(a)["moved_from"]) for d, _t, a, _c in swaps(store)}
    assert events == {(B, A), (A, None)}  # A: a new part where U1 left
    assert current(ph, A)["uuid"] == U3


def test_missing_serial_or_uuid_is_tolerated(store):
    ph = PartHistory(store)
    store_events(
        store,
        event(A, at(0), uuid=U1, serial="[N/A]"),  # NVML's "not supported"
        event(B, at(0), serial=None),  # nothing to know it by
        event("sv1/h1/row1/rk101/psu0", at(0), serial="PSU-9", part_number="PWS-1"),
    )
    assert ph.update() == 2 and ph.unidentified == 1
    assert ph.current(A) == {
        "uuid": U1,
        "serial": None,
        "part_number": None,
        "name": None,
        "installed_at": at(0),
    }
    assert ph.current(B) is None
    # the serial becomes readable later: the same part, now with its serial
    store_events(store, event(A, at(3), uuid=U1, serial="100"))
    assert ph.update() == 0 and swaps(store) == []
    assert current(ph, A)["serial"] == "100"
    assert (ph.part("100") or {}).get("slot") == A
    assert (ph.part("PSU-9") or {}).get("part", {}).get("part_number") == "PWS-1"
    assert ph.part("nope") is None


def risk_table(*rows: tuple[str, float, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device_id": [r[0] for r in rows],
            "risk": [r[1] for r in rows],
            "status": [r[2] for r in rows],
            "model_version": ["m1"] * len(rows),
        }
    )


def test_risk_history_is_by_part_and_written_on_change(store):
    ph = PartHistory(store)
    store_events(store, event(A, at(0), uuid=U1, serial="100"))
    ph.update()
    # CDU without identity: not in the per-part history
    assert ph.record_risk(risk_table((A, 0.10, "ok"), ("sv1/h1/cdu1", 0.2, "ok")), at(1)) == 1
    assert ph.record_risk(risk_table((A, 0.12, "ok")), at(2)) == 0  # < RISK_STEP
    assert ph.record_risk(risk_table((A, 0.60, "at_risk")), at(3)) == 1
    assert ph.record_risk(risk_table((A, 0.60, "at_risk")), at(3 + HEARTBEAT_S / 60)) == 1
    store_events(store, event(A, at(400), uuid=U2, serial="200"))
    ph.update()
    assert ph.record_risk(risk_table((A, 0.60, "at_risk")), at(401)) == 1  # a new part
    old, new = ph.risk_history(U1), ph.risk_history("200")
    assert [r["risk"] for r in old] == [0.10, 0.60, 0.60]
    assert [(r["time"], r["risk"], r["device_id"]) for r in new] == [(at(401), 0.60, A)]
    summary = (ph.part(U1) or {}).get("risk") or {}
    assert summary["points"] == 3 and summary["max_risk"] == 0.60
    assert summary["max_risk_time"] == at(3) and summary["latest_status"] == "at_risk"
    # a restarted twin knows what it wrote last
    assert PartHistory(store).record_risk(risk_table((A, 0.61, "at_risk")), at(402)) == 0


def test_events_follow_the_part_that_was_in_the_slot(store):
    ph = PartHistory(store)
    store_events(store, event(A, at(0), uuid=U1, serial="100"))
    store_events(store, event(A, at(5), EventKind.xid, xid=79))
    store_events(store, event(A, at(10), uuid=U2, serial="200"))
    store_events(store, event(A, at(15), EventKind.xid, xid=48))
    ph.update()
    old, new = ph.part(U1), ph.part(U2)
    assert old is not None and new is not None
    assert [(e["kind"], e["attrs"].get("xid")) for e in old["events"]] == [
        ("part_swapped", None),
        ("xid", 79),
    ]
    assert [(e["kind"], e["attrs"].get("xid")) for e in new["events"]] == [
        ("xid", 48),
        ("part_swapped", None),
    ]


def test_parts_api(store, tmp_path):
    site = load_site(SMALL_SITE)
    gpu = site.racks()[0].gpu_id(0, 0)
    store_events(store, event(gpu, at(0), uuid=U1, serial="100", name="NVIDIA H100"))
    store_events(store, event(gpu, at(10), uuid=U2, serial="200"))
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    ph = PartHistory(store)
    client = TestClient(
        create_app(Twin(site, store), keys=keys, parts=ph), headers=bearer(tokens[Role.viewer])
    )
    r = client.get("/v1/parts/100")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["slot"] is None and body["last_slot"] == gpu
    assert body["part"] == {"uuid": U1, "serial": "100", "part_number": None, "name": "NVIDIA H100"}
    assert body["slots"][0]["removed_at"] == "2025-06-01T03:10:00Z"
    assert body["events"][0]["kind"] == "part_swapped" and body["risk"] is None
    assert client.get(f"/v1/parts/{U2}").json()["slot"] == gpu
    r = client.get(f"/v1/devices/{gpu}/parts")
    assert r.status_code == 200, r.text
    assert [p["serial"] for p in r.json()["parts"]] == ["100", "200"]
    assert r.json()["current"]["uuid"] == U2
    # device state names the part in the slot
    assert client.get(f"/v1/devices/{gpu}").json()["part"]["serial"] == "200"
    other = site.racks()[0].gpu_id(0, 1)  # a known slot that never reported identity
    assert client.get(f"/v1/devices/{other}/parts").json() == {
        "device_id": other,
        "current": None,
        "parts": [],
    }
    for path, code in (
        ("/v1/parts/GPU-unknown", 404),
        ("/v1/devices/sv1/nowhere/parts", 404),
        ("/v1/parts/bad%20serial", 422),
        ("/v1/parts/100?events=0", 422),
    ):
        r = client.get(path)
        assert r.status_code == code, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == code


def test_simulator_identity_is_deterministic_and_swappable(tmp_path):
    """The simulated source reports every GPU and PSU like NVML/Redfish do (once, then on
    change); a scheduled swap gives the slot a new UUID and serial, the same on every run."""

    def source(**kw) -> SimulatedSource:
        cfg = SimulatedSourceConfig(site_file=SMALL_SITE, seed=1, **kw)
        return SimulatedSource(cfg)

    gpu = load_site(SMALL_SITE).racks()[0].gpu_id(0, 2)
    src = source(part_swaps=[{"device_id": gpu, "after_s": 20}])
    src.sim.step(10)
    first = [e for e in src.snapshot(0).events if e.kind == EventKind.inventory]
    lay = src.sim.layout
    assert len(first) == lay.n_gpu + lay.n_psu
    ident = {e.device_id: e.attrs for e in first}
    uuid = str(ident[gpu]["uuid"])
    assert uuid.startswith("GPU-") and [len(p) for p in uuid[4:].split("-")] == [8, 4, 4, 4, 12]
    assert len({a.get("uuid") for a in ident.values() if "uuid" in a}) == lay.n_gpu
    assert {"serial", "part_number"} <= set(ident[lay.psu_ids[0]])
    assert source().snapshot(0).events[0].attrs == first[0].attrs  # deterministic
    src.sim.step(5)
    assert [e for e in src.snapshot(0).events if e.kind == EventKind.inventory] == []
    src.sim.step(10)  # past the scheduled swap
    [swap] = [e for e in src.snapshot(0).events if e.kind == EventKind.inventory]
    assert swap.device_id == gpu and swap.attrs["uuid"] != uuid
    assert swap.attrs["serial"] != ident[gpu]["serial"]
    with pytest.raises(ValueError, match="part_swaps"):
        source(part_swaps=[{"device_id": "sv1/nope/gpu0", "after_s": 1}])


def test_swap_clears_the_old_parts_faults(tmp_path):
    store = Store(":memory:")
    h = SimHarness(store, faults="gpu_off_bus@any:onset=0m")
    lost = int(h.sim.gpu_lost.argmax())
    assert h.sim.gpu_lost[lost]
    h.sim.swap_part(h.sim.layout.gpu_ids[lost])
    h.step(10)
    assert not h.sim.gpu_lost.any()
    assert h.sim.time_s > START_S
    store.close()


@pytest.mark.parametrize(
    ("mockup", "collection"),
    [
        ("public-power-shelf", "Chassis/PowerShelf/PowerSubsystem/PowerSupplies"),
        ("public-telemetry", None),  # legacy Chassis/1/Power: PowerSupplies[] members
    ],
)
def test_redfish_psus_send_their_identity_once(mockup, collection, tmp_path):
    """A Redfish PSU's SerialNumber/PartNumber become an inventory event at the first read
    (not again while unchanged), and the twin records the PSU as a part of its slot."""
    from collectors.sources.redfish.source import RedfishSource, RedfishSourceConfig
    from dctwin.redfish_mockup import MockupServer, mockup_json

    prefix = "sv1/h1/rf"
    with MockupServer(mockup) as srv:
        src = RedfishSource(
            RedfishSourceConfig(
                base_url=srv.url,
                auth="none",
                device_prefix=prefix,
                rack="h1",
                timeout_s=5.0,
                events="off",
            )
        )
        first, second = src.read(), src.read()
        src.close()
    inv = {e.device_id: e.attrs for e in first.events if e.kind == EventKind.inventory}
    if collection is not None:
        docs = {
            f"{prefix}/{m['@odata.id'].removeprefix('/redfish/v1/')}": mockup_json(
                mockup, m["@odata.id"].removeprefix("/redfish/v1/")
            )
            for m in mockup_json(mockup, collection)["Members"]
        }
    else:
        power = mockup_json(mockup, "Chassis/1/Power")
        docs = {
            f"{prefix}/Chassis/1/Power/PowerSupplies/{m['MemberId']}": m
            for m in power["PowerSupplies"]
        }
    named = {d: doc for d, doc in docs.items() if doc.get("SerialNumber")}
    assert named and set(named) <= set(inv)
    for device, doc in named.items():
        assert inv[device]["serial"] == doc["SerialNumber"]
        assert inv[device]["part_number"] == doc["PartNumber"]
        assert inv[device]["model"] == doc["Model"]
    assert not set(docs) - set(named) & set(inv)  # a bay without a serial sends none
    assert [e for e in second.events if e.kind == EventKind.inventory] == []
    # through the wire contract into the store, and into the part history
    store = Store(tmp_path / "rf.duckdb")
    try:
        store_events(store, *[e for e in first.events if e.kind == EventKind.inventory])
        ph = PartHistory(store)
        ph.update()
        for serial in {doc["SerialNumber"] for doc in named.values()}:
            found = ph.part(serial)
            # public-telemetry gives several PSUs one serial: the twin reads each report
            # as the part moving, so it is current in one of them
            assert found is not None
            assert found["slot"] in {d for d, a in inv.items() if a["serial"] == serial}
    finally:
        store.close()
