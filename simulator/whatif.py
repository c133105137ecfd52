"""What-if runs (issue 27): the physics started from the twin's live state, a scenario's
changes applied on schedule, the figures an operator asks for collected as it runs.

Taken from telemetry (`domain.whatif.LiveState`): the time, every GPU's utilisation (held
from then on unless the scenario changes it; training racks pause for checkpoints as the
workload model runs them, HeldWorkload), the plant's chilled- and condenser-water
setpoints, the CRAH supply-air setpoints, and the outdoor dry-bulb and wet-bulb (the
offset of the live reading from the climate's seasonal and diurnal normal is kept over
the horizon). Each GPU's coolant-to-die thermal resistance is calibrated, so a GPU that
runs hot now runs hot in the prediction: the least-squares slope through the origin of its
recent readings' temperature rise over the modelled coolant on their measured power (the
live state's window, twin/whatif/live_state.py, 10 min; reads above CALIBRATE_MIN_POWER_W,
at least CALIBRATE_MIN_READS of them), else its latest temperature's rise over the model's
power (issue 27: a single reading, at 1 K resolution and taken while the load moved, put
the hottest GPU of the second reference set 1.95 K off at 95 %). Model-initialised:
loop flows, valve positions, water and air temperatures (settled at the live load and
setpoints), CDU setpoints (the site file's), part-to-part power spread (the run's seed).
The run is numpy only; the twin gives it plain data and gets plain data back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from domain.plant import ENVELOPES
from domain.site import Site
from domain.whatif import (
    LiveState,
    Scenario,
    SetpointChange,
    WeatherChange,
    WhatIfResult,
    failed_device_id,
)
from simulator.model import SiteSimulator
from simulator.thermal import R_TH_K_PER_W, SW_SLOWDOWN_C, GpuModel
from simulator.weather import CLIMATES, DAY_S, YEAR_S, Climate, Weather, wet_bulb_c
from simulator.workload import Workload

SETTLE_STEPS = 90  # 15 min of 10 s settle steps: loops, valves and temperatures converge
CALIBRATE_MIN_POWER_W = (
    300.0  # below it the 1 K reading resolution and sensor offset dominate the rise
)
RTH_RANGE = (0.5, 3.0)  # calibrated resistance as a multiple of the nominal one
# fewer window reads above CALIBRATE_MIN_POWER_W than this: the latest reading alone
# (a GPU that just came under load, a twin with a minute of history)
CALIBRATE_MIN_READS = 6
# limits a run checks (first breach and peak per device)
CRAH_SUPPLY_MAX_C = 27.0  # ASHRAE TC9.9 recommended inlet maximum
CDU_SUPPLY_MARGIN_K = 3.0  # a CDU that cannot hold its supply setpoint within 3 K
CHW_SUPPLY_MARGIN_K = 2.0  # the plant short of capacity: chilled water 2 K over setpoint
FINE_STEP_S = 10.0  # the step while GPUs are near their limits (the telemetry's own rate)
FINE_ABOVE_C = 78.0
FINE_AFTER_CHANGE_S = 1800.0
# issue 27 (whatif2): training as the workload model runs it (simulator/workload.py)
TRAINING_ABOVE = 0.85  # a rack whose median GPU is this busy is training (inference < 0.8)
CKPT_UTIL, CKPT_S = 0.10, 120.0  # a checkpoint: 2 min at 10 % every 30-60 min
CKPT_PERIOD_S = (1800.0, 3600.0)
PSU_EFFICIENCY = 0.94  # GPU watts to rack input watts within a substep (domain/capacity.py)


class RunCancelledError(Exception):
    """The run was cancelled between two steps."""


def failure_spec(site: Site, sc: Scenario, start_s: float) -> str:
    """The simulator's fault spec for a scenario's failures: a CDU's pumps stop (no
    standby), a CRAH's fan stops, the lead chiller trips, a PSU fails, a GPU falls off the
    bus, each at its time."""
    items = []
    for f in sc.failures:
        dev = failed_device_id(site, f.component)
        cls = next(d.device_class for d in site.devices() if d.id == dev)
        onset = datetime.fromtimestamp(start_s + f.at_h * 3600.0, UTC).isoformat()
        onset = onset.replace("+00:00", "Z")
        items.append(
            {
                "cdu": f"pump_degradation@{dev}:onset={onset},fail_after=1s,severity=0,redundant=0",
                "crah": f"crah_fan_failure@{dev}:onset={onset},precursor=0",
                "chiller_plant": f"chiller_low_refrigerant@{dev}:onset={onset},fail_after=1s,"
                "severity=0",
                "psu": f"psu_aging@{dev}:onset={onset},fail_after=1s,severity=0",
                "gpu": f"gpu_off_bus@{dev}:onset={onset}",
            }[cls]
        )
    return ";".join(items)


def _shift(db: NDArray, rh: NDArray, change: WeatherChange) -> tuple[NDArray, NDArray]:
    db = db + change.drybulb_offset_k
    if change.drybulb_c is not None:
        db = np.full_like(db, change.drybulb_c + change.drybulb_offset_k)
    if change.rh_pct is not None:
        rh = np.full_like(rh, change.rh_pct)
    return db, rh


class ChangedWeather(Weather):
    """Another weather with a scenario's change from `from_s` on (a heat wave)."""

    def __init__(self, base: Weather, change: WeatherChange, from_s: float) -> None:
        self.base, self.change, self.from_s = base, change, from_s

    def at(self, t_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        db, rh, wb = self.base.at(t_s)
        if np.all(np.asarray(t_s) < self.from_s):
            return db, rh, wb
        db2, rh2 = _shift(db, rh, self.change)
        on = np.asarray(t_s) >= self.from_s
        db, rh = np.where(on, db2, db), np.where(on, rh2, rh)
        return db, rh, wet_bulb_c(db, rh)


class ForecastWeather(Weather):
    """The climate's seasonal and diurnal normal plus the live reading's departure from
    it, held over the horizon (multi-day weather systems are not forecast)."""

    def __init__(
        self,
        climate: Climate,
        utc_offset_h: float,
        t0_s: float,
        db0: float | None,
        wb0: float | None,
    ) -> None:
        self.climate = climate
        self.utc_offset_s = utc_offset_h * 3600.0
        n_db, n_rh = self._normal(np.asarray(t0_s, float))
        self.db_offset = 0.0 if db0 is None else db0 - float(n_db)
        self.rh_offset = 0.0
        if db0 is not None and wb0 is not None:  # the RH that gives the live wet-bulb
            grid = np.linspace(5.0, 99.0, 941)
            rh0 = float(grid[np.argmin(np.abs(wet_bulb_c(np.full_like(grid, db0), grid) - wb0))])
            self.rh_offset = rh0 - float(n_rh)

    def _normal(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.climate
        doy = (t % YEAR_S) / DAY_S
        hour = ((t + self.utc_offset_s) % DAY_S) / 3600.0
        diurnal = np.cos(2 * np.pi * (hour - 15.0) / 24.0)
        seasonal = -c.seasonal_amplitude_k * np.cos(2 * np.pi * (doy - 20.0) / 365.25)
        db = c.annual_mean_c + seasonal + c.diurnal_amplitude_k * diurnal
        return db, c.rh_mean_pct - c.rh_diurnal_pct * diurnal

    def at(self, t_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        db, rh = self._normal(np.asarray(t_s, float))
        db, rh = db + self.db_offset, np.clip(rh + self.rh_offset, 8.0, 100.0)
        return db, rh, wet_bulb_c(db, rh)


class HeldWorkload(Workload):
    """Each GPU at its live utilisation, training racks with the workload model's
    checkpoint pauses; a scenario's steps override racks from their time.

    Training (a rack's median GPU above TRAINING_ABOVE: inference peaks below 0.8) pauses
    for a checkpoint, 2 min at 10 %, every 30-60 min, as simulator/workload.py runs it;
    each resume heats the GPUs faster than their thermal controller reacts, which is what
    sets the peak temperature on a loop near its limits. The period and phase of each rack
    are drawn from the run's seed (a live snapshot does not show them); a rack caught in a
    pause or a job start-up is held at that level."""

    def __init__(self, sim: SiteSimulator, gpu_util: NDArray[np.float64]) -> None:
        super().__init__(sim.layout, sim.seed)
        lay = sim.layout
        self.held = gpu_util
        self.steps: list[tuple[float, NDArray[np.bool_], float]] = []
        n_gpus = np.maximum(lay.rack_gpu_count, 1)
        order = np.lexsort((gpu_util, lay.gpu_rack))  # per-rack median, vectorized
        first = np.concatenate([[0], np.cumsum(lay.rack_gpu_count)[:-1]])
        mid = np.minimum(first + n_gpus // 2, len(gpu_util) - 1)
        rack_median = np.where(lay.rack_gpu_count > 0, gpu_util[order][mid], 0.0)
        self.training_rack = rack_median >= TRAINING_ABOVE
        rng = np.random.default_rng([sim.seed, 0xC4B])
        self.ckpt_period_s = rng.uniform(*CKPT_PERIOD_S, lay.n_rack)
        self.ckpt_phase_s = rng.uniform(0.0, 1.0, lay.n_rack) * self.ckpt_period_s

    def gpu_util(self, t_s: float, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        lay = self.layout
        pause = self.training_rack & (
            (t_s + self.ckpt_phase_s) % self.ckpt_period_s > self.ckpt_period_s - CKPT_S
        )
        util = np.where(pause[lay.gpu_rack], CKPT_UTIL, self.held)
        for at_s, gpus, value in self.steps:
            if t_s >= at_s:
                util = np.where(gpus, value, util)
        return util


class SubsteppedGpuModel(GpuModel):
    """The GPU model stepped at FINE_STEP_S within a longer site step while a GPU is near
    its limits: GPUs heat and throttle within seconds (20 s lag, 5 s controller), CDUs,
    air and the plant in minutes, so only the GPUs need the fine step. Their coolant
    follows their rack's power within the step (the rack's coolant rise is its liquid heat
    over the loop's flow, large on a loop whose pumps stopped); the rest of the site is
    held. A 30 s step of the whole site there overshoots."""

    sim: SiteSimulator

    @classmethod
    def of(cls, sim: SiteSimulator) -> SubsteppedGpuModel:
        fine = cls.__new__(cls)
        fine.__dict__.update(sim.gpu.__dict__)
        fine.sim = sim
        return fine

    def step(
        self,
        dt_s: float,
        util: np.ndarray,
        coolant_c: np.ndarray,
        rth_factor: np.ndarray,
        hung: np.ndarray,
        mem_rth_factor: np.ndarray | None = None,
    ) -> None:
        hot = dt_s > FINE_STEP_S and self.temp_c.max(initial=0.0) >= FINE_ABOVE_C
        n = int(np.ceil(dt_s / FINE_STEP_S - 1e-9)) if hot else 1
        if n == 1:
            super().step(dt_s, util, coolant_c, rth_factor, hung, mem_rth_factor)
            self.step_max_temp_c = self.temp_c
            return
        lay = self.sim.layout
        rack_cs = self.sim.cdu.c_s[lay.rack_cdu] / lay.cdu_rack_count[lay.rack_cdu]
        # K of coolant (mid-rack) per W of GPU power in the rack (PSU losses ~6 %)
        k_rack = 0.5 * lay.rack_liquid / (PSU_EFFICIENCY * 1000.0 * np.maximum(rack_cs, 1e-6))
        rack_w0 = np.bincount(lay.gpu_rack, self.power_w, lay.n_rack)
        energy_mj = self.energy_mj
        power_j = np.zeros_like(self.power_w)
        coolant = coolant_c
        for k in range(n):
            super().step(dt_s / n, util, coolant, rth_factor, hung, mem_rth_factor)
            power_j += self.power_w * (dt_s / n)
            # the hottest reading within the site step, for the run's peaks and limits
            self.step_max_temp_c = (
                self.temp_c if k == 0 else np.maximum(self.step_max_temp_c, self.temp_c)
            )
            rack_w = np.bincount(lay.gpu_rack, self.power_w, lay.n_rack)
            coolant = coolant_c + (k_rack * (rack_w - rack_w0))[lay.gpu_rack]
        # the site step's heat and energy: the mean power over its substeps
        self.power_w = power_j / dt_s
        self.energy_mj = energy_mj + power_j * 1000.0


def _by_id(ids: list[str], values: dict[str, float], default: float) -> NDArray[np.float64]:
    return np.array([values.get(i, default) for i in ids], dtype=float)


class WhatIfSimulator(SiteSimulator):
    """The site simulator without its sensors: a run reads the physics, never telemetry
    (the sensors draw from their own generator, so the physics is the same)."""

    def _measure(self) -> None:
        pass


def whatif_simulator(site: Site, sc: Scenario, live: LiveState) -> SiteSimulator:
    """A simulator of the scenario's site in the live state (see the module docstring),
    settled, calibrated, the scenario's failures planned; its changes not yet applied."""
    horizon_s = sc.horizon_h * 3600.0
    sim = WhatIfSimulator(
        site,
        seed=sc.seed,
        start_time_s=live.time_s,
        faults=failure_spec(site, sc, live.time_s) or None,
        climate=sc.climate,
        horizon_s=horizon_s,
        warmup_s=0.0,
    )
    lay = sim.layout
    climate = CLIMATES[sc.climate]
    sim.weather = ForecastWeather(
        climate,
        sim.weather.utc_offset_s / 3600.0,
        live.time_s,
        live.outdoor_drybulb_c,
        live.outdoor_wetbulb_c,
    )
    # GPUs without a live reading (new racks): their scenario utilisation, else the mean
    mean_util = float(np.mean(list(live.gpu_util.values()))) if live.gpu_util else 0.5
    util = _by_id(lay.gpu_ids, live.gpu_util, np.nan)
    rack_of = {r: i for i, r in enumerate(lay.rack_keys)}
    for add in sc.add_racks:
        for rack in add.racks:
            util[lay.gpu_rack == rack_of[rack]] = add.utilisation
    util = np.where(np.isnan(util), mean_util, np.clip(util, 0.0, 1.0))
    sim.workload = HeldWorkload(sim, util)
    sim.gpu = SubsteppedGpuModel.of(sim)
    ctl = sim.controls
    for name, value in live.setpoints.items():
        env = ENVELOPES.get(name)
        if env is not None and env.scope == "site" and np.isfinite(value):
            v = float(np.clip(value, env.min, env.max))
            ctl.commanded[name][:] = v
            ctl.active[name][:] = v
    env = ENVELOPES["crah_supply_setpoint_c"]
    for i, crah in enumerate(lay.crah_ids):
        sp_c = live.crah_supply_setpoint_c.get(crah)
        if sp_c is not None and np.isfinite(sp_c):
            ctl.commanded["crah_supply_setpoint_c"][i] = ctl.active["crah_supply_setpoint_c"][i] = (
                float(np.clip(sp_c, env.min, env.max))
            )
    if live.chw_supply_c is not None:
        sim.plant_model.chw_supply_c = live.chw_supply_c
    if live.cw_supply_c is not None:
        sim.plant_model.cw_supply_c = live.cw_supply_c
    _settle(sim, SETTLE_STEPS)
    # calibrate each reported GPU's thermal resistance: over its window of recent readings,
    # else to its latest temperature
    temp = _by_id(lay.gpu_ids, live.gpu_temp_c, np.nan)
    temp_w, power_w = _windows(lay.gpu_ids, live)
    for _ in range(2):
        coolant = (sim.cdu.supply_c[lay.rack_cdu] + 0.5 * sim.rack_dt_k)[lay.gpu_rack]
        sim.gpu_rth_part = calibrated_rth(
            temp, sim.gpu.power_w, coolant, temp_w, power_w, sim.gpu_rth_part
        )
        _settle(sim, SETTLE_STEPS // 3)
    return sim


def _windows(ids: list[str], live: LiveState) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The GPUs' window reads as (GPU, read) arrays, NaN-padded (no window: all NaN)."""
    n = max((len(v) for v in live.gpu_temp_window_c.values()), default=0)
    temp_w = np.full((len(ids), n), np.nan)
    power_w = np.full((len(ids), n), np.nan)
    for i, g in enumerate(ids):  # per GPU, not per read
        t, p = live.gpu_temp_window_c.get(g), live.gpu_power_window_w.get(g)
        if t and p and len(t) == len(p):
            temp_w[i, n - len(t) :], power_w[i, n - len(p) :] = t, p
    return temp_w, power_w


def calibrated_rth(
    temp_c: NDArray[np.float64],
    power_model_w: NDArray[np.float64],
    coolant_c: NDArray[np.float64],
    temp_window_c: NDArray[np.float64],
    power_window_w: NDArray[np.float64],
    rth_part: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Each GPU's thermal resistance as a multiple of the nominal one (RTH_RANGE).

    With at least CALIBRATE_MIN_READS window reads above CALIBRATE_MIN_POWER_W: the
    least-squares slope through the origin of the reads' rise over the modelled coolant
    on their measured power (the 1 K resolution, the read noise and the die's lag behind
    a load that moves average out over the window). Else the latest temperature's rise
    over the model's power; no usable reading: `rth_part` as it is."""
    use = (
        np.isfinite(temp_window_c)
        & np.isfinite(power_window_w)
        & (power_window_w > CALIBRATE_MIN_POWER_W)
    )
    p_w = np.where(use, power_window_w, 0.0)
    rise_k = np.where(use, temp_window_c - coolant_c[:, None], 0.0)
    p2 = (p_w * p_w).sum(axis=1)
    fit = use.sum(axis=1) >= CALIBRATE_MIN_READS
    r_window = np.divide((rise_k * p_w).sum(axis=1), p2, out=np.full_like(p2, np.nan), where=fit)
    ok = np.isfinite(temp_c) & (power_model_w > CALIBRATE_MIN_POWER_W)
    r_latest = np.divide(
        temp_c - coolant_c, power_model_w, out=np.full_like(power_model_w, np.nan), where=ok
    )
    r = np.where(fit, r_window, r_latest)
    factor = np.clip(r / R_TH_K_PER_W, *RTH_RANGE)
    return np.where(np.isfinite(factor), factor, rth_part)


def _settle(sim: SiteSimulator, n: int) -> None:
    for _ in range(n):
        sim._advance(10.0, settle=True)  # the clock, the counters and the faults stay


def apply_changes(
    sim: SiteSimulator, sc: Scenario, start_s: float
) -> list[tuple[float, Callable[[], None]]]:
    """The scenario's scheduled changes as (time, action), for a what-if run or for a
    reference simulator continued with the same change (experiments/whatif_eval.py)."""
    lay = sim.layout
    out: list[tuple[float, Callable[[], None]]] = []
    for sp in sc.setpoints:

        def command(sp: SetpointChange = sp) -> None:
            sim.controls.set(sp.name, sp.value, sp.device)

        out.append((start_s + sp.at_h * 3600.0, command))
    if sc.weather is not None:
        w = sc.weather
        sim.weather = ChangedWeather(sim.weather, w, start_s + w.at_h * 3600.0)
    rack_of = {r: i for i, r in enumerate(lay.rack_keys)}
    for u in sc.utilisation:
        racks = np.ones(lay.n_rack, bool)
        if u.racks:
            racks = np.isin(np.arange(lay.n_rack), [rack_of[r] for r in u.racks])
        at_s = start_s + u.at_h * 3600.0
        if isinstance(sim.workload, HeldWorkload):
            sim.workload.steps.append((at_s, racks[lay.gpu_rack], u.value))
        else:  # the reference's own workload model: a fixed utilisation from then on

            def step(racks: NDArray[np.bool_] = racks, v: float = u.value) -> None:
                sim.workload.util_override = np.where(racks, v, sim.workload.util_override)

            out.append((at_s, step))
    return sorted(out, key=lambda x: x[0])


class Recorder:
    """Energy books, peaks and first breaches of a run, vectorized per step."""

    def __init__(self, sim: SiteSimulator) -> None:
        lay = sim.layout
        self.sim = sim
        self.t0_s = sim.time_s
        self.facility_kwh = self.it_kwh = self.water_l = 0.0
        self.gpu_peak = np.full(lay.n_gpu, -np.inf)
        self.hourly: dict[str, list[float]] = {
            "it_kw": [],
            "facility_kw": [],
            "pue": [],
            "gpu_max_c": [],
        }
        self._hour: list[tuple[float, float, float, float]] = []
        self.peak = {"cdu_supply_c": -np.inf, "crah_supply_c": -np.inf, "chw_supply_c": -np.inf}
        self.cdu_heat_peak = np.zeros(lay.n_cdu)
        self.pdu_peak_kw = np.zeros(lay.n_pdu)
        self.ups_peak_kw = self.plant_load_peak_kw = 0.0
        self.it_peak_kw = -1.0
        self.peak_state: dict[str, list] = {"id": [], "metric": [], "value": []}
        # (limit, device ids, first-breach time per device (nan), peak per device)
        self.limits: dict[str, tuple[list[str], NDArray, NDArray, str]] = {}

    def _check(
        self, name: str, ids: list[str], value: NDArray, limit: NDArray | float, unit: str
    ) -> None:
        if name not in self.limits:
            self.limits[name] = (ids, np.full(len(ids), np.nan), np.full(len(ids), -np.inf), unit)
        _ids, first, peak, _u = self.limits[name]
        over = value > limit
        first[:] = np.where(np.isnan(first) & over, self.sim.time_s, first)
        peak[:] = np.maximum(peak, value)

    def record(self, dt_s: float, gpu_temp_c: NDArray | None = None) -> None:
        s, p, lay = self.sim, self.sim.plant, self.sim.layout
        h = dt_s / 3600.0
        self.facility_kwh += p.facility_kw * h
        self.it_kwh += p.it_kw * h
        self.water_l += p.makeup_water_lpm * dt_s / 60.0
        temp = s.gpu.temp_c if gpu_temp_c is None else gpu_temp_c
        if gpu_temp_c is None and isinstance(s.gpu, SubsteppedGpuModel):
            temp = s.gpu.step_max_temp_c
        self.gpu_peak = np.maximum(self.gpu_peak, temp)
        sp = s.controls
        self.peak["cdu_supply_c"] = max(
            self.peak["cdu_supply_c"], float(s.cdu.supply_c.max(initial=-np.inf))
        )
        self.peak["crah_supply_c"] = max(
            self.peak["crah_supply_c"], float(s.crah.supply_c.max(initial=-np.inf))
        )
        self.peak["chw_supply_c"] = max(self.peak["chw_supply_c"], p.chw_supply_c)
        self.cdu_heat_peak = np.maximum(self.cdu_heat_peak, s.cdu.heat_removed_kw)
        self.pdu_peak_kw = np.maximum(self.pdu_peak_kw, s.pdu_out_w / 1000.0)
        self.ups_peak_kw = max(self.ups_peak_kw, p.ups_output_kw)
        self.plant_load_peak_kw = max(self.plant_load_peak_kw, p.cooling_load_kw)
        if p.it_kw > self.it_peak_kw:  # the state capacity headroom is computed at
            self.it_peak_kw = p.it_kw
            plant = s.site.plant_id()
            self.peak_state = {
                "id": [*lay.rack_ids, *lay.cdu_ids, plant, plant],
                "metric": ["power_kw"] * lay.n_rack
                + ["heat_kw"] * lay.n_cdu
                + ["heat_kw", "outdoor_wetbulb_c"],
                "value": [
                    *(s.rack_in_w / 1000.0).tolist(),
                    *s.cdu.heat_removed_kw.tolist(),
                    p.cooling_load_kw,
                    p.outdoor_wetbulb_c,
                ],
            }
        self._check("gpu_temp_c", lay.gpu_ids, temp, SW_SLOWDOWN_C, "Cel")
        self._check("cdu_heat_kw", lay.cdu_ids, s.cdu.heat_removed_kw, lay.cdu_rated_kw, "kW")
        self._check(
            "cdu_supply_c",
            lay.cdu_ids,
            s.cdu.supply_c,
            sp.value("cdu_supply_setpoint_c") + CDU_SUPPLY_MARGIN_K,
            "Cel",
        )
        self._check("crah_supply_c", lay.crah_ids, s.crah.supply_c, CRAH_SUPPLY_MAX_C, "Cel")
        self._check(
            "pdu_kw",
            lay.pdu_ids,
            s.pdu_out_w / 1000.0,
            np.array([d.rated_kw for d in lay.pdu_spec]),
            "kW",
        )
        site = s.site
        self._check("ups_kw", [lay.ups_id], np.array([p.ups_output_kw]), site.ups.rated_kw, "kW")
        self._check(
            "chw_supply_c",
            [site.plant_id()],
            np.array([p.chw_supply_c]),
            float(sp.value("chw_supply_setpoint_c")[0]) + CHW_SUPPLY_MARGIN_K,
            "Cel",
        )
        self._check(
            "plant_load_kw",
            [site.plant_id()],
            np.array([p.cooling_load_kw]),
            site.plant.rated_kw,
            "kW",
        )
        self._hour.append(
            (p.it_kw * dt_s, p.facility_kw * dt_s, float(temp.max(initial=-np.inf)), dt_s)
        )
        if s.time_s - self.t0_s >= 3600.0 * (len(self.hourly["pue"]) + 1) - 1e-6:
            it, fac = sum(x[0] for x in self._hour), sum(x[1] for x in self._hour)
            span = max(sum(x[3] for x in self._hour), 1e-9)
            self.hourly["it_kw"].append(round(it / span, 2))
            self.hourly["facility_kw"].append(round(fac / span, 2))
            self.hourly["pue"].append(round(fac / it, 4) if it > 0 else float("nan"))
            self.hourly["gpu_max_c"].append(round(max(x[2] for x in self._hour), 2))
            self._hour = []

    def violations(self) -> list[dict]:
        out = []
        for name, (ids, first, peak, unit) in self.limits.items():
            for i in np.flatnonzero(~np.isnan(first)):
                out.append(
                    {
                        "limit": name,
                        "device_id": ids[i],
                        "first_breach": datetime.fromtimestamp(float(first[i]), UTC).isoformat(),
                        "after_h": round((float(first[i]) - self.t0_s) / 3600.0, 4),
                        "peak": round(float(peak[i]), 3),
                        "unit": unit,
                    }
                )
        return sorted(out, key=lambda v: (v["after_h"], v["limit"], v["device_id"]))

    def peak_load(self) -> list[dict[str, Any]]:
        """Rating minus the peak load over the horizon, per element (the twin adds the
        capacity module's headroom, N and N-1, at the peak state)."""
        s, lay = self.sim, self.sim.layout
        rows: list[dict[str, Any]] = [
            {"device_id": d, "kind": "cdu", "rated_kw": float(r), "peak_kw": round(float(q), 2)}
            for d, r, q in zip(lay.cdu_ids, lay.cdu_rated_kw, self.cdu_heat_peak, strict=True)
        ]
        rows += [
            {
                "device_id": d,
                "kind": "pdu",
                "rated_kw": spec.rated_kw,
                "peak_kw": round(float(q), 2),
            }
            for d, spec, q in zip(lay.pdu_ids, lay.pdu_spec, self.pdu_peak_kw, strict=True)
        ]
        rows.append(
            {
                "device_id": lay.ups_id,
                "kind": "ups",
                "rated_kw": s.site.ups.rated_kw,
                "peak_kw": round(self.ups_peak_kw, 2),
            }
        )
        rows.append(
            {
                "device_id": s.site.plant_id(),
                "kind": "plant",
                "rated_kw": s.site.plant.rated_kw,
                "peak_kw": round(self.plant_load_peak_kw, 2),
            }
        )
        for r in rows:
            r["headroom_kw"] = round(r["rated_kw"] - r["peak_kw"], 2)
            r["headroom_pct"] = round(100.0 * r["headroom_kw"] / r["rated_kw"], 2)
        return rows


def run(
    site: Site,
    sc: Scenario,
    live: LiveState,
    progress: Callable[[float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> WhatIfResult:
    """Run a validated scenario (`site` is the scenario's site, domain.whatif.scenario_site)
    from the live state; RunCancelledError if `cancelled()` turns true."""
    wall = time.perf_counter()
    sim = whatif_simulator(site, sc, live)
    changes = apply_changes(sim, sc, live.time_s)
    rec = Recorder(sim)
    end_s = live.time_s + sc.horizon_h * 3600.0
    next_report = 0.0
    fine_until = live.time_s + FINE_AFTER_CHANGE_S  # the start is a change too
    while sim.time_s < end_s - 1e-6:
        if cancelled is not None and cancelled():
            raise RunCancelledError()
        while changes and changes[0][0] <= sim.time_s + 1e-6:
            changes.pop(0)[1]()
            fine_until = sim.time_s + FINE_AFTER_CHANGE_S
        # fine steps of the whole site after a change (loops and valves settle); while a
        # GPU is near its limits only the GPUs take fine steps (SubsteppedGpuModel)
        dt = min(sc.step_s, FINE_STEP_S) if sim.time_s < fine_until else sc.step_s
        if changes:  # land on the next change
            dt = min(dt, max(changes[0][0] - sim.time_s, 1.0))
        dt = min(dt, end_s - sim.time_s)
        sim.step(dt)
        rec.record(dt)
        done = 1.0 - (end_s - sim.time_s) / (end_s - live.time_s)
        if progress is not None and done >= next_report:
            progress(min(done, 1.0))
            next_report = done + 0.01
    return result_of(rec, time.perf_counter() - wall)


def result_of(rec: Recorder, seconds: float) -> WhatIfResult:
    lay = rec.sim.layout
    k = int(np.argmax(rec.gpu_peak))
    violations = rec.violations()
    return WhatIfResult(
        pue=rec.facility_kwh / rec.it_kwh if rec.it_kwh > 0 else float("nan"),
        it_energy_kwh=rec.it_kwh,
        facility_energy_kwh=rec.facility_kwh,
        peak_gpu_temp_c=float(rec.gpu_peak[k]),
        peak_gpu_id=lay.gpu_ids[k],
        peak_cdu_supply_c=float(rec.peak["cdu_supply_c"]),
        peak_crah_supply_c=float(rec.peak["crah_supply_c"]),
        peak_chw_supply_c=float(rec.peak["chw_supply_c"]),
        makeup_water_l=rec.water_l,
        violations=violations,
        first_breach=violations[0] if violations else None,
        peak_load=rec.peak_load(),
        peak_state=rec.peak_state,
        series=rec.hourly,
        seconds=seconds,
    )
