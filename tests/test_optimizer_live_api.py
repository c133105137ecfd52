"""Accepting a live recommendation over the API (issue 19): what may not be accepted (409
stale / already applied / another change in flight, 422 outside the envelope or the
rate-of-change limit), a write that fails or reads back differently (502, `failed`, the
plant unchanged), advisory only, and the status without a model.

Real parts without the broker: the simulator's readings go into a real DuckDB store
(tests/twin_sim.py, read times on the wall clock), the write path is a real pymodbus TCP
server: the simulated BMS bound to that simulator, or a test server that misbehaves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pymodbus.constants import ExcCodes

from api.app import create_app
from api.keys import KeyStore, Role
from collectors.sources.modbus.source import load_register_map
from collectors.sources.modbus.writer import (
    ModbusSetpointWriter,
    ModbusWriterConfig,
    WritePoint,
    encode,
)
from collectors.sources.simulated.bms import CONTROL_OF, SimulatedBms, bms_writer_config
from domain.control import SetpointWriteError, SetpointWriter
from ingest.store import Store
from tests.apihelpers import bearer
from tests.modbus_server import ModbusTestServer, free_port
from tests.twin_sim import SimHarness
from twin.optimizer.live import LiveConfig, LiveOptimizer
from twin.optimizer.observe import current_state
from twin.optimizer.recommendations import store_opener
from twin.optimizer.search import Decision
from twin.state import Twin

PROBLEM = "application/problem+json"


@dataclass
class Rig:
    h: SimHarness
    store: Store
    opt: LiveOptimizer
    client: TestClient

    def propose(self, **changes: float) -> int:
        """A proposal made for the current state: current setpoints + `changes`."""
        obs = current_state(self.store.cursor(), max_age_s=60)
        assert obs.complete, obs.missing
        rec = {**obs.setpoints, **changes}
        d = Decision(rec, "test", "recommended", obs.setpoints, obs.state, "test-model")
        d.predicted_savings_kw = 1.0
        return self.opt.open_store().propose(d, "t1")

    def accept(self, rec_id: int):  # type: ignore[no-untyped-def]
        return self.client.post(f"/v1/recommendations/{rec_id}/accept", json={"note": "t"})

    def status_of(self, rec_id: int) -> dict:
        return self.client.get(f"/v1/recommendations/{rec_id}").json()


def _rig(tmp_path: Path, writer: SetpointWriter | None, advisory: bool = False) -> Rig:
    store = Store(tmp_path / "twin.duckdb")
    h = SimHarness(store, start_time_s=time.time() - 20.0)  # read times ~ now
    h.step(10.0)
    opt = LiveOptimizer(
        LiveConfig(site_id="t1", model_path=tmp_path / "absent.pkl", advisory_only=advisory),
        store_opener(store.cursor),
        store.cursor,
        writer,
    )
    keys = KeyStore(tmp_path / "keys.duckdb")
    _, token = keys.create("op-grace", Role.operator)
    app = create_app(Twin(h.site, store), keys=keys, optimizer=opt)
    return Rig(h, store, opt, TestClient(app, headers=bearer(token)))


@pytest.fixture
def bms_rig(tmp_path) -> Iterator[tuple[Rig, SimulatedBms]]:
    store_rig = _rig(tmp_path, None)
    bms = SimulatedBms(store_rig.h.sim, store_rig.h.site, "127.0.0.1", free_port()).start()
    writer = ModbusSetpointWriter(bms_writer_config(store_rig.h.site, "127.0.0.1", bms.port))
    store_rig.opt.writer = writer
    try:
        yield store_rig, bms
    finally:
        writer.close()
        bms.stop()
        store_rig.store.close()


def test_cannot_accept_stale_applied_or_outside_the_envelope(bms_rig):
    rig, bms = bms_rig
    ctl = rig.h.sim.controls
    chw = ctl.get("chw_supply_setpoint_c")
    # outside the envelope, and a move beyond the per-change step: 422 naming the control
    for change, words in (
        ({"chw_supply_setpoint_c": 40.0}, "outside the envelope"),
        ({"chw_supply_setpoint_c": chw + 5.0}, "more than the 2 allowed per change"),
    ):
        rec_id = rig.propose(**change)
        r = rig.accept(rec_id)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        assert "chw_supply_setpoint_c" in r.json()["detail"] and words in r.json()["detail"]
        assert rig.status_of(rec_id)["status"] == "proposed"  # nothing decided or written
    assert bms.writes == []
    # stale: the state moved on since the proposal -> 409, and it is now expired
    rec_id = rig.propose(chw_supply_setpoint_c=chw + 1.0)
    rig.store.cursor().execute(
        "UPDATE recommendations SET state = json_object('gpu_util_mean', 0.0, "
        "'gpu_util_p95', 0.0, 'outdoor_drybulb_c', -40.0, 'outdoor_wetbulb_c', -40.0) "
        "WHERE id = ?",
        [rec_id],
    )
    r = rig.accept(rec_id)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert "stale" in r.json()["detail"]
    assert rig.status_of(rec_id)["status"] == "expired"
    # accepted and written; accepting it again is refused, and so is another change while
    # this one is watched (one change in flight per plant)
    rec_id = rig.propose(chw_supply_setpoint_c=chw + 1.0)
    other = rig.propose(chw_supply_setpoint_c=chw + 0.5)
    ok = rig.accept(rec_id)
    assert ok.status_code == 200, ok.text
    assert ok.json()["applied_setpoints"]["chw_supply_setpoint_c"] == pytest.approx(chw + 1.0)
    assert ctl.get("chw_supply_setpoint_c") == pytest.approx(chw + 1.0)
    again = rig.accept(rec_id)
    assert again.status_code == 409 and "'accepted'" in again.json()["detail"]
    busy = rig.accept(other)
    assert busy.status_code == 409 and "one change in flight" in busy.json()["detail"]
    writes = rig.client.get(f"/v1/recommendations/{rec_id}/writes").json()
    assert [(w["action"], w["ok"], w["who"]) for w in writes] == [("apply", True, "op-grace")]


def test_write_to_a_device_that_is_down_fails_and_changes_nothing(tmp_path):
    dead = free_port()  # nothing listens there
    site_rig = _rig(tmp_path, None)
    writer = ModbusSetpointWriter(
        bms_writer_config(site_rig.h.site, "127.0.0.1", dead).model_copy(update={"timeout_s": 0.3})
    )
    site_rig.opt.writer = writer
    try:
        before = site_rig.h.sim.controls.snapshot()
        rec_id = site_rig.propose(chw_supply_setpoint_c=before["chw_supply_setpoint_c"] + 1.0)  # type: ignore[operator]
        r = site_rig.accept(rec_id)
        assert r.status_code == 502 and r.headers["content-type"] == PROBLEM
        assert f"127.0.0.1:{dead}" in r.json()["detail"]
        rec = site_rig.status_of(rec_id)
        assert rec["status"] == "failed" and "cannot" in rec["status_note"]
        assert site_rig.h.sim.controls.snapshot() == before
    finally:
        writer.close()
        site_rig.store.close()


class ClampingDevice(ModbusTestServer):
    """A controller that takes a write to holding 101 but stores its own value (it clamps
    the condenser-water setpoint), so the read-back differs."""

    async def _action(self, fc, _start, address, count, _registers, _values):  # type: ignore[no-untyped-def]
        if _values is not None and address <= 101 < address + count:
            _values[101 - address] = 150  # 15.0 degC
        return await super()._action(fc, _start, address, count, _registers, _values)


def test_read_back_mismatch_fails_and_restores_what_was_written(tmp_path):
    rig = _rig(tmp_path, None)
    obs = current_state(rig.store.cursor(), max_age_s=60)
    maps = {1: ("plant", "chiller-plant"), 2: ("cdu", "cdu"), 3: ("crah", "crah")}
    points, units = [], {}
    for unit, (device_class, name) in maps.items():
        regs: dict[int, int] = {}
        for r in load_register_map(Path(name)).registers:
            control = CONTROL_OF.get((device_class, r.metric))
            if r.function == "holding" and control is not None:
                words = encode(obs.setpoints[control], r)
                regs.update({r.address + i: w for i, w in enumerate(words)})
                points.append(
                    WritePoint(
                        control=control, unit_id=unit, register_map=Path(name), metric=r.metric
                    )
                )
        units[unit] = (regs, {})
    assert {p.control for p in points} == set(obs.setpoints)
    with ClampingDevice(units) as dev:  # type: ignore[arg-type]
        writer = ModbusSetpointWriter(
            ModbusWriterConfig(host="127.0.0.1", port=dev.port, points=points)
        )
        rig.opt.writer = writer
        try:
            start = {k: v for k, v in writer.read().items()}
            chw = obs.setpoints["chw_supply_setpoint_c"]
            rec_id = rig.propose(
                chw_supply_setpoint_c=chw + 1.0,
                cw_supply_setpoint_c=obs.setpoints["cw_supply_setpoint_c"] + 1.0,
            )
            r = rig.accept(rec_id)
            assert r.status_code == 502, r.text
            detail = r.json()["detail"]
            assert "cw_supply_setpoint_c" in detail and "holding 101" in detail
            assert "read back 15" in detail
            assert rig.status_of(rec_id)["status"] == "failed"
            # chw (holding 100) had been written before the mismatch: it is put back
            assert writer.read()["chw_supply_setpoint_c"] == pytest.approx(
                start["chw_supply_setpoint_c"]
            )
            writes = rig.client.get(f"/v1/recommendations/{rec_id}/writes").json()
            assert [(w["action"], w["ok"]) for w in writes] == [("apply", False)]
        finally:
            writer.close()
            rig.store.close()


def test_advisory_only_records_the_decision_and_writes_nothing(tmp_path):
    rig = _rig(tmp_path, None, advisory=True)
    bms = SimulatedBms(rig.h.sim, rig.h.site, "127.0.0.1", free_port()).start()
    rig.opt.writer = ModbusSetpointWriter(bms_writer_config(rig.h.site, "127.0.0.1", bms.port))
    try:
        before = rig.h.sim.controls.snapshot()
        rec_id = rig.propose(chw_supply_setpoint_c=before["chw_supply_setpoint_c"] + 1.0)  # type: ignore[operator]
        r = rig.accept(rec_id)
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["status"] == "accepted" and rec["decided_by"] == "op-grace"
        assert rec["applied_at"] is None and "advisory only" in rec["status_note"]
        assert bms.writes == [] and rig.h.sim.controls.snapshot() == before
        # no model: the round proposes nothing and the status says why
        assert rig.opt.propose() is None
        st = rig.client.get("/v1/recommendations/status").json()
        assert st["last_outcome"] == "no_model" and "dctwin optimize train" in st["reason"]
        assert st["advisory_only"] is True and st["model_version"] is None
    finally:
        rig.opt.writer.close()
        bms.stop()
        rig.store.close()


def test_status_without_a_live_optimizer(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    try:
        keys = KeyStore(tmp_path / "keys.duckdb")
        _, token = keys.create("viewer", Role.viewer)
        h = SimHarness(store)
        c = TestClient(create_app(Twin(h.site, store), keys=keys), headers=bearer(token))
        st = c.get("/v1/recommendations/status").json()
        assert st == {
            "running": False,
            "reason": "the live optimizer is not running in this process",
        }
    finally:
        store.close()


def test_write_point_must_be_a_holding_register():
    with pytest.raises(ValueError, match="input point .* only holding registers are writable"):
        ModbusWriterConfig(
            host="h",
            points=[
                WritePoint(
                    control="chw_supply_setpoint_c",
                    register_map=Path("chiller-plant"),
                    metric="chw_supply_temp_c",
                )
            ],
        )
    assert ExcCodes.ILLEGAL_VALUE == 3  # what the simulated BMS answers outside the envelope


def test_points_are_read_and_written_unit_by_unit(bms_rig):
    """`read_points` / `write_points`: what a revert uses to give every unit its own value
    back (issue 19: units of one control may differ). An unknown point or a value that
    is not a number is refused before anything is written."""
    rig, bms = bms_rig
    writer = rig.opt.writer
    assert writer is not None
    points = writer.read_points()
    crahs = sorted(k for k in points if k.startswith("crah_supply_setpoint_c@"))
    assert len(crahs) >= 2 and all("/crah" in k for k in crahs)  # keyed by device id
    own = {k: 20.0 + 0.5 * i for i, k in enumerate(crahs)}
    back = writer.write_points(own)
    assert back == pytest.approx(own)
    assert writer.read_points() == pytest.approx({**points, **own})
    n = len(bms.writes)
    for bad in ({"crah_supply_setpoint_c@nowhere": 21.0}, {crahs[0]: float("nan")}):
        with pytest.raises(SetpointWriteError):
            writer.write_points(bad)
    assert len(bms.writes) == n
