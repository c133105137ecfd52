"""Rollups per rack/row/hall/site against the simulator's own arrays, and their history."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.store import Store
from tests.twin_sim import START_S, SimHarness, drop_metric, override
from twin.rollup_history import to_ts
from twin.rollups import THROTTLE_MASK
from twin.state import Twin
from twin.twin_config import TwinConfig

RACK = "t1/h1/row1/r11"


@pytest.fixture
def h(tmp_path):
    store = Store(tmp_path / "roll.duckdb")
    yield SimHarness(store)
    store.close()


def test_rollups_match_the_simulator(h):
    twin = Twin(h.site, h.store, config=TwinConfig())
    # 3 GPUs of r11 thermally throttled (0x40), 2 merely idle (0x1): 3 count
    for g, bits in ((0, 0x40), (1, 0x40 | 0x1), (9, 0x20), (2, 0x1), (3, 0x10)):
        h.transforms.append(
            override(f"{RACK}/n0{g // 8 + 1}/gpu{g % 8}", "throttle_reasons", lambda v, b=bits: b)
        )
    h.write()
    twin.tick(h.time_ms)
    psu_e0 = h.sim.psu_energy_kwh.copy()
    tick = twin.tick(h.step(10.0))
    sim, sc, r = h.sim, twin.scope_index, tick.rollups
    racks = sc.slices["rack"]
    # the twin sees what the devices report: whole-watt PSUs, NVML's whole degrees and mW
    assert r["power_kw"][racks] == pytest.approx(sim.rack_in_w / 1e3, rel=1e-4)
    lay = sim.layout
    temp_read = np.floor(sim.gpu_temp_read_c + 0.5)
    gpu_max = [temp_read[lay.gpu_rack == k].max() for k in range(len(lay.rack_ids))]
    gpu_mean = [temp_read[lay.gpu_rack == k].mean() for k in range(len(lay.rack_ids))]
    assert r["gpu_temp_max_c"][racks] == pytest.approx(gpu_max, rel=1e-12)
    assert r["gpu_temp_mean_c"][racks] == pytest.approx(gpu_mean, rel=1e-12)
    assert r["gpu_power_kw"][racks] == pytest.approx(
        np.bincount(lay.gpu_rack, sim.gpu_power_read_w) / 1e3, rel=1e-6
    )
    # energy since the previous tick from PSU counters
    rack_e = np.bincount(lay.psu_rack, sim.psu_energy_kwh - psu_e0)
    assert r["energy_kwh"][racks] == pytest.approx(rack_e, abs=0.024 + 1e-9)  # 24 x 1 Wh
    i = sc.index
    # the overridden bits, plus GPUs the power cap holds back on their own (0x4)
    reasons = sim.gpu_throttle_reasons.copy()
    for g, bits in ((0, 0x40), (1, 0x40 | 0x1), (9, 0x20), (2, 0x1), (3, 0x10)):
        reasons[lay.gpu_ids.index(f"{RACK}/n0{g // 8 + 1}/gpu{g % 8}")] = bits
    held = (reasons & THROTTLE_MASK) != 0
    in_rack = np.array([gid.startswith(f"{RACK}/") for gid in lay.gpu_ids])
    in_row1 = np.array([gid.startswith("t1/h1/row1/") for gid in lay.gpu_ids])
    assert r["throttled_gpus"][i[RACK]] == held[in_rack].sum() >= 3
    assert r["throttled_gpus"][i["t1/h1/row1"]] == held[in_row1].sum()
    assert r["throttled_gpus"][i["t1"]] == held.sum()
    assert r["power_kw"][i["t1/h1/row2"]] == pytest.approx(sim.rack_in_w[3:].sum() / 1e3, rel=1e-4)
    assert r["power_kw"][i["t1"]] == pytest.approx(sim.plant.it_kw, rel=1e-4)
    assert r["gpu_temp_max_c"][i["t1"]] == pytest.approx(temp_read.max())
    assert r["gpu_temp_mean_c"][i["t1/h1"]] == pytest.approx(temp_read.mean())
    assert r["gpus_reporting"][i["t1"]] == 192 and r["stale_inputs"][i["t1"]] == 0
    # coolant: a row reads its loop; the site is the flow-weighted mean of the loops
    assert r["coolant_return_c"][i["t1/h1/row2"]] == pytest.approx(sim.cdu_return_c[1], abs=0.006)
    assert r["coolant_supply_c"][i["t1"]] == pytest.approx(
        np.average(sim.cdu_supply_c, weights=sim.cdu_flow_lpm), abs=0.01
    )  # 0.01 degC and 0.1 L/min registers
    assert r["cdu_pump_kw"][i["t1/h1"]] == pytest.approx(sim.cdu_pump_w.sum() / 1e3, abs=0.002)
    assert r["crah_fan_kw"][i["t1"]] == pytest.approx(sim.crah_fan_w.sum() / 1e3, abs=0.002)


def test_missing_psu_makes_power_unknown_not_low(h):
    twin = Twin(h.site, h.store, config=TwinConfig())
    h.transforms.append(drop_metric(f"{RACK}/shelf/psu24", "input_power_w"))  # the last
    tick = twin.tick(h.step(10.0))
    i = twin.scope_index.index
    assert np.isnan(tick.rollups["power_kw"][i[RACK]])
    assert np.isnan(tick.rollups["power_kw"][i["t1"]])
    assert tick.rollups["missing_inputs"][i[RACK]] == 1
    assert not np.isnan(tick.rollups["power_kw"][i["t1/h1/row2"]])
    assert tick.pue["hall:h1"].value is None and "hall" not in (tick.pue["site"].reason or "")
    hb = tick.heat_balance
    assert np.isnan(hb.residual_pct[0]) and "PSU input_power_w" in hb.reasons[0]


def test_rollup_history_minute_and_tick_tables(tmp_path):
    store = Store(tmp_path / "hist.duckdb")
    h = SimHarness(store, start_time_s=START_S + 57 * 60)  # 5 minutes across 04:00
    twin = Twin(h.site, h.store, config=TwinConfig())
    start = h.write()
    values = []
    for _ in range(30):  # 5 minutes at 10 s
        tick = twin.tick(h.step(10.0))
        values.append((tick.time_ms, tick.rollups["power_kw"][twin.scope_index.index[RACK]]))
    end = h.time_ms + 1
    src, df = twin.series(RACK, "power_kw", to_ts(start), to_ts(end), 60.0)
    assert src == "rollup_1m+tick"
    t = np.array([v[0] for v in values])
    p = np.array([v[1] for v in values])
    minute = (t // 60000) * 60000
    for row in df.iter_rows(named=True):
        m = int((row["bucket"] - to_ts(0)).total_seconds() * 1000)
        sel = minute == m
        assert row["count"] == sel.sum()
        assert row["mean"] == pytest.approx(p[sel].mean(), rel=1e-12)
        assert row["max"] == pytest.approx(p[sel].max()) and row["last"] == p[sel][-1]
    assert df["count"].sum() == len(values)
    n_minute_rows = (
        store.cursor()
        .execute("SELECT count(*) FROM twin_rollups_1m WHERE scope_id = ?", [RACK])
        .fetchall()[0][0]
    )
    assert n_minute_rows == 3  # 03:57, 03:58, 03:59: the hour before 04:00 is compacted
    src, df10 = twin.series(RACK, "power_kw", to_ts(start), to_ts(end), 10.0)
    assert src == "rollup_tick" and df10.height == len(values)
    # energy sums per bucket: the minute table keeps sums, so energy adds up
    _, de = twin.series(RACK, "energy_kwh", to_ts(start), to_ts(end), 300.0)
    assert de["sum"].sum() == pytest.approx(
        sum(tick_e for tick_e in _tick_values(twin, RACK, "energy_kwh")), rel=1e-9
    )
    store.close()


def _tick_values(twin: Twin, scope: str, col: str) -> list[float]:
    rows = (
        twin.store.cursor()
        .execute(
            f"SELECT {col} FROM twin_rollups WHERE scope_id = ? AND {col} IS NOT NULL", [scope]
        )
        .fetchall()
    )
    return [r[0] for r in rows]


def test_hall_ppue_over_an_interval_from_rollups(h):
    twin = Twin(h.site, h.store, config=TwinConfig())
    start = h.write()
    e_pump = e_fan = e_it = 0.0
    prev = None
    for _ in range(60):
        twin.tick(h.step(10.0))
        sim = h.sim
        now = (sim.cdu_pump_w.sum() / 1e3, sim.crah_fan_w.sum() / 1e3, sim.plant.it_kw)
        if prev is not None:  # trapezoids over the ticks, by hand
            e_pump += (prev[0] + now[0]) / 2 * 10 / 3600
            e_fan += (prev[1] + now[1]) / 2 * 10 / 3600
            e_it += (prev[2] + now[2]) / 2 * 10 / 3600
        prev = now
    first_tick = start + 10_000
    res = twin.pue_interval("hall:h1", to_ts(first_tick), to_ts(h.time_ms), now=to_ts(h.time_ms))
    o = res.overall
    assert o.figure == "pPUE" and o.quality.status == "ok"
    # from whole-watt readings (PSUs, pumps, fans) against the simulator's truth
    assert o.it == pytest.approx(e_it, rel=1e-4)
    assert o.value == pytest.approx((e_it + e_pump + e_fan) / e_it, rel=1e-4)
