"""Directions a facility engineer knows, the controls' envelopes and dynamics, workload
and weather. Small sites, coarse steps."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.model import SiteSimulator
from simulator.thermal import NVML_GPU_IDLE, NVML_SW_POWER_CAP
from simulator.weather import Weather
from simulator.workload import ROLE_INFERENCE, ROLE_TRAINING, Workload
from tests.simtools import JAN, JUL, H, small_site

W27_SITE = small_site(128, cdu_supply_c=25.0)  # warm-water CDUs close to the chw supply
SITE = small_site(128)


def settle(
    site, hours=1.5, dt=30.0, setpoints=None, faults=None, start=JUL, climate="hot-humid", util=0.8
) -> SiteSimulator:
    sim = SiteSimulator(
        site, seed=3, start_time_s=start, climate=climate, constant_util=util, faults=faults
    )
    for name, value in (setpoints or {}).items():
        sim.controls.set(name, value)
    for _ in range(int(hours * H / dt)):
        sim.step(dt)
    return sim


def test_raising_chw_setpoint_lowers_chiller_power_and_raises_gpu_temperatures():
    runs = [settle(W27_SITE, setpoints={"chw_supply_setpoint_c": c}) for c in (18, 21, 24, 27)]
    chiller = [s.plant.chiller_kw for s in runs]
    gpu = [float(s.gpu_temp_c.mean()) for s in runs]
    assert all(a > b for a, b in zip(chiller, chiller[1:], strict=False)), chiller
    assert all(b >= a - 0.01 for a, b in zip(gpu, gpu[1:], strict=False)), gpu
    assert gpu[-1] > gpu[0] + 2.0  # once the CDU approach binds, GPUs see the warmer water
    cops = [s.plant.chiller_cop for s in runs]
    assert cops == sorted(cops)


def test_warm_water_cdus_decouple_gpus_from_chw_until_the_approach_binds():
    cold, warm = (settle(SITE, setpoints={"chw_supply_setpoint_c": c}) for c in (16, 22))
    assert warm.plant.chiller_kw < cold.plant.chiller_kw
    assert float(warm.gpu_temp_c.mean()) == pytest.approx(float(cold.gpu_temp_c.mean()), abs=0.05)
    assert warm.cdu_primary_flow_lpm.mean() > cold.cdu_primary_flow_lpm.mean()  # valves open


def test_fouled_heat_exchanger_raises_approach_temperature():
    dev = SiteSimulator(SITE, warmup_s=0).layout.cdu_ids[0]
    spec = f"hx_fouling@{dev}:onset=0,duration=1h,severity=0.6"
    # normal operation: the valve compensates, the closest approach rises
    clean, fouled = settle(SITE, 1.5), settle(SITE, 1.5, faults=spec)
    assert fouled.cdu_approach_k[0] > clean.cdu_approach_k[0] + 0.5
    assert fouled.cdu_primary_flow_lpm[0] > clean.cdu_primary_flow_lpm[0]
    # valve wide open (CDU asked for water near the chw supply): supply - facility supply
    sp = {"cdu_supply_setpoint_c": 17.0, "chw_supply_setpoint_c": 16.5}
    clean, fouled = settle(SITE, 1.5, setpoints=sp), settle(SITE, 1.5, setpoints=sp, faults=spec)
    approach = [s.cdu_supply_c[0] - s.cdu_primary_supply_c[0] for s in (clean, fouled)]
    assert approach[1] > approach[0] + 0.5
    assert fouled.gpu_temp_c.mean() > clean.gpu_temp_c.mean()


def test_degrading_pump_needs_more_speed_for_the_same_flow():
    dev = SiteSimulator(SITE, warmup_s=0).layout.cdu_ids[0]
    spec = f"pump_degradation@{dev}:onset=0,fail_after=4h,severity=0.35"
    healthy, worn = settle(SITE, 3.0), settle(SITE, 3.0, faults=spec)
    assert worn.cdu.flow_lpm[0] == pytest.approx(healthy.cdu.flow_lpm[0], rel=1e-3)
    assert worn.cdu_pump_speed[0] > healthy.cdu_pump_speed[0] + 0.05
    assert worn.cdu_pump_w[0] > healthy.cdu_pump_w[0]


def test_pump_differential_pressure_trades_pump_power_for_gpu_temperature():
    # a low floor leaves the flow to the delta-T control; a high one forces more flow
    low, high = (settle(SITE, setpoints={"cdu_dp_setpoint_kpa": dp}) for dp in (20.0, 150.0))
    assert high.cdu.flow_lpm[0] > 1.3 * low.cdu.flow_lpm[0]
    assert high.cdu_pump_w[0] > 2 * low.cdu_pump_w[0]
    assert high.gpu_temp_c.mean() < low.gpu_temp_c.mean()
    # above the floor the pump follows the load at the delta-T setpoint
    dt = low.cdu.return_c[0] - low.cdu.supply_c[0]
    assert dt == pytest.approx(low.controls.get("cdu_dt_setpoint_k"), abs=0.1)


def test_cdu_flow_follows_load_at_its_delta_t_setpoint():
    light, heavy = (
        settle(SITE, util=u, setpoints={"cdu_dp_setpoint_kpa": 5.0}) for u in (0.3, 0.9)
    )
    assert heavy.cdu.flow_lpm[0] > 1.5 * light.cdu.flow_lpm[0]
    assert heavy.cdu_pump_speed[0] > light.cdu_pump_speed[0]


def test_condenser_water_setpoint_trades_tower_fans_for_chiller_power():
    sp = {"economizer_enabled": 0}
    low, high = (
        settle(SITE, start=JUL, climate="hot-dry", setpoints={**sp, "cw_supply_setpoint_c": cw})
        for cw in (26.0, 32.0)
    )
    assert high.plant.cw_supply_c > low.plant.cw_supply_c + 4
    assert high.plant.tower_kw < low.plant.tower_kw
    assert high.plant.chiller_kw > low.plant.chiller_kw


def test_economizer_covers_cold_weather_and_not_hot_humid_weather():
    winter = settle(SITE, 2.0, start=JAN, climate="temperate")
    summer = settle(SITE, 2.0, start=JUL, climate="hot-humid")
    assert winter.plant.free_cooling_kw > 0.9 * winter.plant.cooling_load_kw
    assert winter.plant.chiller_kw < 0.1 * summer.plant.chiller_kw
    assert summer.plant.free_cooling_kw == 0 and summer.plant.chillers_on >= 1
    locked = settle(SITE, 2.0, start=JAN, climate="temperate", setpoints={"economizer_enabled": 0})
    assert locked.plant.free_cooling_kw == 0 and locked.plant.chiller_kw > winter.plant.chiller_kw


def test_controls_have_envelopes_and_ramp():
    sim = SiteSimulator(SITE, seed=1, start_time_s=JUL, climate="hot-humid", constant_util=0.8)
    env = sim.controls.envelopes()
    assert {
        "chw_supply_setpoint_c",
        "cw_supply_setpoint_c",
        "cdu_supply_setpoint_c",
        "cdu_dp_setpoint_kpa",
        "crah_supply_setpoint_c",
    } <= set(env)
    with pytest.raises(ValueError, match="chw_supply_setpoint_c.*outside its envelope"):
        sim.controls.set("chw_supply_setpoint_c", 40.0)
    with pytest.raises(ValueError, match="unknown"):
        sim.controls.set("warp_factor", 9)
    with pytest.raises(ValueError, match="no cdu"):
        sim.controls.set("cdu_supply_setpoint_c", 30.0, device="syn/h1/cdu-nope")
    cdu = sim.layout.cdu_ids[0]
    sim.controls.set("cdu_supply_setpoint_c", 30.0, device=cdu)
    assert sim.controls.snapshot()["cdu_supply_setpoint_c"][cdu] == 30.0
    sim.controls.set("chw_supply_setpoint_c", 24.0)
    assert sim.controls.get("chw_supply_setpoint_c") == 24.0
    with pytest.raises(ValueError):
        sim.controls.set("chw_supply_setpoint_c", 2.0)
    for _ in range(10):
        sim.step(30.0)  # 5 minutes: the active setpoint ramps at 0.5 K/min
    assert sim.controls.get("chw_supply_setpoint_c", active=True) == pytest.approx(20.5)
    assert 18.0 < sim.plant.chw_supply_c < 20.5  # and the water lags behind it
    for _ in range(120):
        sim.step(30.0)
    assert sim.plant.chw_supply_c == pytest.approx(24.0, abs=0.1)


def test_gpu_power_cap_and_idle_reasons_as_nvml_reports_them():
    busy = settle(SITE, 0.2, util=1.0)
    assert (busy.gpu_power_w <= busy.layout.gpu_tdp_w + 1e-6).all()
    assert (busy.gpu_throttle_reasons & NVML_SW_POWER_CAP).all()
    assert (busy.gpu_sm_clock_mhz < 1980).all()
    idle = settle(SITE, 0.2, util=0.0)
    assert (idle.gpu_throttle_reasons == NVML_GPU_IDLE).all()
    assert idle.gpu_power_w.mean() < 1.3 * idle.layout.gpu_idle_w.mean()


def test_workload_training_is_synchronized_and_inference_diurnal():
    site = small_site(2048)
    lay = SiteSimulator(site, warmup_s=0).layout
    wl = Workload(lay, seed=9)
    rng = np.random.default_rng(0)
    assert (wl.rack_role == ROLE_TRAINING).any() and (wl.rack_role == ROLE_INFERENCE).any()
    day = JAN + 14 * H
    busy = []
    for t in np.arange(day, day + 24 * H, 600.0):
        rack = wl.rack_util(t, 600.0, rng)
        for g in range(wl.n_groups):  # one signal for every rack of a job
            u = rack[wl.rack_group == g]
            assert np.ptp(u) == 0.0
        busy.append(rack[wl.rack_role == ROLE_INFERENCE].mean())
    hours = (np.arange(len(busy)) * 600.0 / H + 14) % 24
    afternoon = np.mean([b for b, h in zip(busy, hours, strict=True) if 12 <= h <= 18])
    night = np.mean([b for b, h in zip(busy, hours, strict=True) if 1 <= h <= 6])
    assert afternoon > night + 0.2
    again = Workload(lay, seed=9)
    assert np.array_equal(again.rack_role, wl.rack_role)
    assert np.array_equal(again.training_util(day), wl.training_util(day))


def test_weather_is_seeded_with_seasons_days_and_wet_bulb_below_dry_bulb():
    w = Weather("temperate", seed=1)
    t = JAN + np.arange(0, 365 * 24 * H, H)
    db, rh, wb = w.at(t)
    assert (wb <= db + 1e-9).all() and (rh > 0).all() and (rh <= 100).all()
    winter, summer = db[: 24 * 30].mean(), db[24 * 180 : 24 * 210].mean()
    assert summer > winter + 12
    day = db[: 24 * 30].reshape(30, 24)
    assert day[:, 14:17].mean() > day[:, 3:6].mean() + 5  # afternoons warmer than nights
    assert np.array_equal(Weather("temperate", seed=1).at(t)[0], db)
    assert not np.array_equal(Weather("temperate", seed=2).at(t)[0], db)
    # Stull's formula: 20 degC / 50 % RH -> 13.7 degC wet-bulb
    from simulator.weather import wet_bulb_c

    assert float(wet_bulb_c(np.array(20.0), np.array(50.0))) == pytest.approx(13.7, abs=0.1)
