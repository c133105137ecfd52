"""Every fault type of the catalog: its signature shows in the telemetry, its label is right.

Small sites (128 GPUs: 4 racks, 1 CDU, 2 CRAHs), coarse steps, a few simulated hours.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator.faults import CATALOG, FaultSpecError, parse_faults
from simulator.model import SiteSimulator
from simulator.thermal import NVML_SW_THERMAL_SLOWDOWN
from tests.simtools import JAN, JUL, H, Recorder, small_site

SITE = small_site(128)


def sim_with(spec: str, start: float = JAN, **kw) -> SiteSimulator:
    kw.setdefault("constant_util", 0.8)
    return SiteSimulator(SITE, seed=5, start_time_s=start, faults=spec, **kw)


def only_label(
    sim: SiteSimulator,
    fault: str,
    device: str,
    onset_h: float,
    failure_h: float | None,
    metric: str | None = None,
) -> None:
    labels = sim.labels()
    assert len(labels) == 1
    lab = labels[0]
    assert (lab["fault"], lab["device_id"], lab["metric"]) == (fault, device, metric)
    assert lab["signature"] == CATALOG[fault].signature
    assert lab["onset_ms"] == round((sim.start_time_s + onset_h * H) * 1000)
    if failure_h is None:
        assert lab["failure_ms"] is None
    else:
        assert lab["failure_ms"] == round((sim.start_time_s + failure_h * H) * 1000)


def test_catalog_covers_the_issue():
    assert {
        "pump_degradation",
        "hx_fouling",
        "tim_degradation",
        "psu_aging",
        "crah_fan_failure",
        "sensor_drift",
        "sensor_stuck",
        "coolant_leak",
        "gpu_off_bus",
        "ecc_storm",
        "chiller_low_refrigerant",
    } <= set(CATALOG)


def test_pump_degradation_needs_more_speed_then_fails_over_to_standby():
    cdu = SITE.halls[0].cdus[0].id
    dev = f"syn/h1/{cdu}"
    sim = sim_with(f"pump_degradation@{dev}:onset=30m,fail_after=3h,severity=0.35")
    rec = Recorder(sim).run(4.0, 60.0)
    only_label(sim, "pump_degradation", dev, 0.5, 3.5)
    t = rec.t_h()
    speed, flow = rec.series(dev, "pump_speed_pct"), rec.series(dev, "flow_lpm")
    power = rec.series(dev, "pump_power_w")
    before, late = t < 0.5, (t > 3.2) & (t < 3.5)
    assert speed[late].mean() > speed[before].mean() + 10.0  # % points
    assert power[late].mean() > 1.2 * power[before].mean()
    assert abs(flow[late].mean() - flow[before].mean()) < 0.01 * flow[before].mean()
    fails = [e for e in rec.events_of(dev) if e.kind == "pump_failed"]
    assert len(fails) == 1 and fails[0].time_ms == sim.labels()[0]["failure_ms"]
    after = t > 3.7  # the standby pump runs at the healthy speed
    assert abs(speed[after].mean() - speed[before].mean()) < 1.0


def test_hx_fouling_raises_approach_and_primary_flow():
    dev = f"syn/h1/{SITE.halls[0].cdus[0].id}"
    sim = sim_with(f"hx_fouling@{dev}:onset=15m,duration=2h,severity=0.7")
    rec = Recorder(sim).run(3.0, 60.0)
    only_label(sim, "hx_fouling", dev, 0.25, None)
    t = rec.t_h()

    def s(m):
        return rec.series(dev, m)

    approach = np.minimum(
        s("return_temp_c") - s("primary_return_temp_c"),
        s("supply_temp_c") - s("primary_supply_temp_c"),
    )
    pflow = rec.series(dev, "primary_flow_lpm")
    assert approach[t > 2.5].mean() > approach[t < 0.25].mean() + 1.0
    assert pflow[t > 2.5].mean() > 1.1 * pflow[t < 0.25].mean()
    assert not rec.events  # gradual, no device event


def test_tim_degradation_heats_one_gpu_until_thermal_slowdown():
    gpu = "syn/h1/row1/r10102/n03/gpu5"
    sim = sim_with(f"tim_degradation@{gpu}:onset=10m,duration=2h,severity=1.0")
    rec = Recorder(sim).run(3.0, 60.0)
    only_label(sim, "tim_degradation", gpu, 1 / 6, None)
    peer = "syn/h1/row1/r10102/n03/gpu4"
    t = rec.t_h()
    temp, peer_temp = rec.series(gpu, "gpu_temp_c"), rec.series(peer, "gpu_temp_c")
    # healthy parts differ (cold-plate resistance, sensor offset): a few kelvin at most
    assert abs(temp[t < 0.15].mean() - peer_temp[t < 0.15].mean()) <= 4.0
    assert temp[t > 2.5].mean() > peer_temp[t > 2.5].mean() + 10.0
    reasons = rec.series(gpu, "throttle_reasons").astype(int)
    assert (reasons[t > 2.5] & NVML_SW_THERMAL_SLOWDOWN).all()
    assert not (rec.series(peer, "throttle_reasons").astype(int) & NVML_SW_THERMAL_SLOWDOWN).any()


def test_psu_aging_loses_efficiency_runs_hot_then_fails():
    psu = "syn/h1/row1/r10101/shelf/psu3"
    sim = sim_with(f"psu_aging@{psu}:onset=30m,fail_after=2h")
    rec = Recorder(sim).run(3.0, 60.0)
    only_label(sim, "psu_aging", psu, 0.5, 2.5)
    t = rec.t_h()
    with np.errstate(invalid="ignore"):  # a failed PSU reads 0 W in and out
        eff = rec.series(psu, "output_power_w") / rec.series(psu, "input_power_w")
    temp = rec.series(psu, "temp_c")
    assert eff[(t > 2.2) & (t < 2.5)].mean() < eff[t < 0.5].mean() - 0.03
    assert temp[(t > 2.2) & (t < 2.5)].mean() > temp[t < 0.5].mean() + 5.0
    assert (rec.series(psu, "input_power_w")[t > 2.6] == 0).all()
    peer = rec.series("syn/h1/row1/r10101/shelf/psu1", "output_power_w")
    n = SITE.templates["hgx"].psus  # the rack's PSUs share the load: n - 1 carry it now
    assert peer[t > 2.6].mean() > 0.99 * n / (n - 1) * peer[t < 0.5].mean()
    assert [e.kind for e in rec.events_of(psu)] == ["psu_fault"]


def test_crah_fan_failure_with_precursor():
    crah, peer = "syn/h1/crah1", "syn/h1/crah2"
    sim = sim_with(f"crah_fan_failure@{crah}:onset=30m,precursor=1h")
    rec = Recorder(sim).run(2.5, 60.0)
    only_label(sim, "crah_fan_failure", crah, 0.5, 1.5)
    t = rec.t_h()
    fan_w = rec.series(crah, "fan_power_w")
    assert fan_w[(t > 1.3) & (t < 1.5)].mean() > 1.15 * fan_w[t < 0.5].mean()  # bearing wear
    for metric in ("fan_power_w", "fan_speed_pct", "airflow_m3h"):
        assert (rec.series(crah, metric)[t > 1.55] == 0).all()
    ret = rec.series(peer, "return_air_temp_c")
    assert ret[t > 2.0].mean() > ret[t < 0.5].mean() + 1.0  # the other unit takes the load
    ev = rec.events_of(crah)
    assert [e.kind for e in ev] == ["fan_failed"]
    assert ev[0].time_ms == sim.labels()[0]["failure_ms"]


def test_sensor_drift_moves_the_reading_not_the_truth():
    dev = f"syn/h1/{SITE.halls[0].cdus[0].id}"
    sim = sim_with(f"sensor_drift@{dev}#return_temp_c:onset=1h,rate=0.8")
    rec = Recorder(sim).run(3.0, 60.0, probe=lambda s: {"truth": float(s.cdu_return_c[0])})
    only_label(sim, "sensor_drift", dev, 1.0, None, metric="return_temp_c")
    t = rec.t_h()
    error = rec.series(dev, "return_temp_c") - np.array([x["truth"] for x in rec.truth])
    assert abs(error[t < 1.0]).max() < 0.3  # sensor noise only
    expected = 0.8 * (t[t > 1.5] - 1.0)
    assert np.allclose(error[t > 1.5], expected, atol=0.3)
    supply_err = rec.series(dev, "supply_temp_c") - np.array(
        [float(v) for v in (sim.cdu_supply_c[0],)] * len(t)
    )
    assert abs(supply_err[-10:]).max() < 0.3  # other sensors unaffected


def test_sensor_stuck_flow_reading_ignores_a_real_flow_change():
    dev = f"syn/h1/{SITE.halls[0].cdus[0].id}"
    sim = sim_with(f"sensor_stuck@{dev}#flow_lpm:onset=30m")
    rec = Recorder(sim).run(1.0, 30.0)
    sim.controls.set("cdu_dp_setpoint_kpa", 150.0)
    rec.run(1.0, 30.0, probe=lambda s: {"flow": float(s.cdu_flow_lpm[0])})
    only_label(sim, "sensor_stuck", dev, 0.5, None, metric="flow_lpm")
    t, flow = rec.t_h(), rec.series(dev, "flow_lpm")
    assert np.ptp(flow[t >= 0.5]) == 0.0  # frozen, noise included
    assert np.ptp(flow[t < 0.5]) > 0.0  # a live sensor is noisy
    assert rec.truth[-1]["flow"] > 1.15 * flow[-1]  # the real flow went up 22 %
    dp = rec.series(dev, "diff_pressure_kpa")
    assert dp[-1] > 140.0  # the dp sensor still tells the truth


def test_coolant_leak_drains_reservoir_trips_sensor_then_pump_loses_prime():
    dev = f"syn/h1/{SITE.halls[0].cdus[0].id}"
    sim = sim_with(f"coolant_leak@{dev}:onset=20m,rate=35%,detect_after=15m")
    rec = Recorder(sim).run(3.0, 60.0)
    only_label(sim, "coolant_leak", dev, 1 / 3, 1 / 3 + 2.0)
    t = rec.t_h()
    level = rec.series(dev, "reservoir_level_pct")
    assert level[t < 1 / 3].min() == 100.0
    i = np.searchsorted(t, 1.0)
    assert level[i] == pytest.approx(100 - 35 * (t[i] - 1 / 3), abs=0.06)  # 0.1 % register
    detected = rec.series(dev, "leak_detected")
    assert detected[t < 1 / 3 + 0.24].max() == 0 and (detected[t > 0.6] == 1).all()
    flow = rec.series(dev, "flow_lpm")
    assert flow[t > 2.5].mean() < 0.6 * flow[t < 0.3].mean()
    gpu_t = rec.series("syn/h1/row1/r10101/n01/gpu0", "gpu_temp_c")
    assert gpu_t[t > 2.5].mean() > gpu_t[t < 0.3].mean() + 2.0
    assert [e.kind for e in rec.events_of(dev)] == ["leak_detected", "pump_failed"]


def test_gpu_off_bus_stops_its_telemetry_and_raises_xid79():
    gpu = "syn/h1/row1/r10103/n02/gpu6"
    sim = sim_with(f"gpu_off_bus@{gpu}:onset=40m")
    rec = Recorder(sim).run(1.5, 60.0)
    only_label(sim, "gpu_off_bus", gpu, 2 / 3, 2 / 3)
    t = rec.t_h()
    for metric in ("power_w", "gpu_temp_c", "energy_mj"):
        s = rec.series(gpu, metric)
        assert not np.isnan(s[t < 2 / 3]).any() and np.isnan(s[t > 2 / 3 + 0.01]).all()
    node_peer = rec.series("syn/h1/row1/r10103/n02/gpu1", "util_gpu_pct")
    assert node_peer[t < 0.6].min() > 50 and (node_peer[t > 0.7] == 0).all()  # node drained
    other = rec.series("syn/h1/row1/r10103/n03/gpu1", "util_gpu_pct")
    assert other[t > 0.7].min() > 50
    ev = rec.events_of(gpu)
    assert [(e.kind, e.attrs.get("xid")) for e in ev] == [("xid", 79), ("device_lost", None)]
    assert ev[0].time_ms == sim.labels()[0]["onset_ms"]


def test_ecc_storm_precedes_an_uncorrectable_failure():
    gpu = "syn/h1/row1/r10104/n04/gpu2"
    sim = sim_with(f"ecc_storm@{gpu}:onset=30m,fail_after=4h")
    rec = Recorder(sim).run(5.0, 60.0)
    only_label(sim, "ecc_storm", gpu, 0.5, 4.5)
    t = rec.t_h()
    corrected = rec.series(gpu, "ecc_corrected_total")
    assert (np.diff(corrected) >= 0).all()
    first, last = (t > 0.5) & (t < 1.5), (t > 3.5) & (t < 4.5)
    assert np.ptp(corrected[last]) > 20 * max(np.ptp(corrected[first]), 1.0)
    xids = [e.attrs["xid"] for e in rec.events_of(gpu) if e.kind == "xid"]
    assert xids == [92, 63, 63, 94, 63, 48, 95, 64]
    fail_ms = sim.labels()[0]["failure_ms"]
    assert all(e.time_ms <= fail_ms for e in rec.events_of(gpu))
    assert rec.series(gpu, "remapped_rows_correctable")[-1] == 3
    assert rec.series(gpu, "remapped_rows_uncorrectable")[-1] == 1
    assert rec.series(gpu, "ecc_uncorrected_total")[-1] == 2
    assert (rec.series(gpu, "util_gpu_pct")[t > 4.6] == 0).all()  # drained after failure
    healthy = rec.series("syn/h1/row1/r10101/n01/gpu0", "ecc_corrected_total")
    assert np.ptp(healthy) == 0


def test_chiller_low_refrigerant_lowers_cop_then_trips():
    plant = SITE.plant_id()
    spec = f"chiller_low_refrigerant@{plant}:onset=30m,fail_after=3h"
    kw = {"start": JUL, "climate": "hot-humid"}
    sick, healthy = sim_with(spec, **kw), sim_with("", **kw)
    r1, r0 = Recorder(sick).run(4.0, 60.0), Recorder(healthy).run(4.0, 60.0)
    only_label(sick, "chiller_low_refrigerant", plant, 0.5, 3.5)
    t = r1.t_h()

    def cop(rec):
        return rec.series(plant, "cooling_load_kw") / rec.series(plant, "chiller_power_kw")

    late = (t > 3.0) & (t < 3.5)
    assert np.allclose(cop(r1)[t < 0.5], cop(r0)[t < 0.5], rtol=1e-6)
    assert cop(r1)[late].mean() < 0.92 * cop(r0)[late].mean()
    power = r1.series(plant, "chiller_power_kw")
    assert power[late].mean() > 1.08 * r0.series(plant, "chiller_power_kw")[late].mean()
    ev = r1.events_of(plant)
    assert [e.kind for e in ev] == ["health_changed"] and "low refrigerant" in ev[0].message
    assert sick.plant_model.out.chillers_on <= 2  # the tripped lead unit is out


def test_driver_reload_restarts_the_energy_counters_of_one_node():
    node = "syn/h1/row1/r10102/n01"
    sim = sim_with(f"driver_reload@{node}:onset=20m")
    rec = Recorder(sim).run(1.0, 60.0)
    only_label(sim, "driver_reload", node, 1 / 3, None)
    t = rec.t_h()
    e = rec.series(f"{node}/gpu3", "energy_mj")
    step_mj = np.diff(e)[0]  # one minute of energy
    after = np.flatnonzero(t > 1 / 3 - 1e-9)[0]  # the read at the onset already shows it
    assert (np.diff(e[:after]) > 0).all()
    assert e[after] <= step_mj + 1 and e[after] < e[after - 1]  # restarted from zero
    assert (np.diff(e[after:]) > 0).all()
    other = rec.series("syn/h1/row1/r10102/n02/gpu3", "energy_mj")
    assert (np.diff(other) > 0).all()
    assert [e.kind for e in rec.events_of(node)] == ["health_changed"]


def test_spec_errors_name_the_item_and_field():
    lay = SiteSimulator(SITE, warmup_s=0).layout
    cases = {
        "warp_core@any": "unknown fault 'warp_core'",
        "pump_degradation@syn/h1/nope": "not in site",
        "pump_degradation@syn/h1/crah1": "applies to a cdu",
        "sensor_drift@syn/h1/crah1": "needs a metric",
        "sensor_drift@syn/h1/crah1#flow_lpm": "does not report 'flow_lpm'",
        "hx_fouling@any:onset=soon": "onset: 'soon' is not a duration",
        "hx_fouling@any:colour=red": "unknown parameter 'colour'",
        "hx_fouling@any:severity": "expected KEY=VALUE",
        "random:n=x": "n and seed must be integers",
    }
    for spec, msg in cases.items():
        with pytest.raises(FaultSpecError, match=msg) as info:
            parse_faults(spec, lay, JAN)
        assert "faults item 1" in str(info.value)


def test_random_catalog_is_seeded_and_covers_every_type():
    lay = SiteSimulator(SITE, warmup_s=0).layout
    a = parse_faults("random:n=24", lay, JAN, seed=3, horizon_s=12 * H).labels()
    b = parse_faults("random:n=24", lay, JAN, seed=3, horizon_s=12 * H).labels()
    c = parse_faults("random:n=24", lay, JAN, seed=4, horizon_s=12 * H).labels()
    assert a == b and a != c
    # every type but the UPS's (one per site: named in specs, never drawn)
    assert {r["fault"] for r in a} == {n for n, t in CATALOG.items() if t.random}
    assert {n for n, t in CATALOG.items() if not t.random} == {
        "ups_battery_fade",
        "ups_battery_test_failed",
        "utility_dip",
        "ups_battery_overtemp",
    }
    for r in a:
        assert JAN * 1000 <= r["onset_ms"] <= (JAN + 12 * H) * 1000
        if r["failure_ms"] is not None:
            assert r["failure_ms"] >= r["onset_ms"]
