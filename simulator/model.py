"""Vectorized physics of a simulated site (numpy only, so it runs on a rack).

Energy flows IT -> PSU losses -> PDU losses -> UPS losses -> utility meter; heat flows
IT -> liquid loops (CDUs) and air (CRAHs) -> chilled-water plant -> cooling tower. PUE is
never set: it emerges from these. Every array is indexed by device in the order of
`SiteLayout`. The parts live in their own modules (power, thermal, liquid, air, plant,
controls, workload, weather, faults, injector, telemetry); this one wires them together
and keeps the energy books. See docs/simulator.md for equations and parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from domain.site import Site
from simulator import power as pw
from simulator.air import CrahModel
from simulator.controls import Controls
from simulator.faults import Fault, FaultPlan, parse_faults
from simulator.injector import FaultInjector, SimEvent
from simulator.layout import SiteLayout
from simulator.liquid import DP_MIN_DEFAULT_KPA, DT_DEFAULT_K, CduModel
from simulator.parts import PartCatalog, swap_part
from simulator.plant import PlantModel
from simulator.telemetry import TelemetryPlan
from simulator.thermal import GpuModel
from simulator.ups import UpsModel
from simulator.weather import Climate, Weather
from simulator.workload import Workload, WorkloadMix

__all__ = ["PlantState", "SiteLayout", "SiteSimulator", "psu_efficiency"]

psu_efficiency = pw.psu_efficiency
COIL_DESIGN_DT_K = 6.0  # chilled-water rise across CRAH coils and electrical-room fan coils
NODE_OVERHEAD_IDLE = 0.6  # node overhead (CPUs, NICs, fans) at zero GPU activity
WARMUP_S = 900.0
# facility sensor noise, 1 sigma: (absolute in the reading's unit, relative to the reading).
# RTDs resolve a hundredth of a kelvin, flow meters a few tenths of a percent (their
# accuracy is a bias, not modeled); GPU,
# power and meter readings are exact (NVML and revenue meters are far better than these).
SENSOR_NOISE = {
    "cdu_supply_c": (0.01, 0.0),
    "cdu_return_c": (0.01, 0.0),
    "cdu_primary_supply_c": (0.01, 0.0),
    "cdu_primary_return_c": (0.01, 0.0),
    "cdu_flow_lpm": (0.0, 0.003),
    "cdu_primary_flow_lpm": (0.0, 0.003),
    "cdu_dp_kpa": (0.1, 0.0),
    "psu_temp_c": (0.2, 0.0),
    "crah_supply_c": (0.1, 0.0),
    "crah_return_c": (0.1, 0.0),
    "gpu_temp_read_c": (0.3, 0.0),  # on-die sensor, read through NVML
    "gpu_mem_temp_read_c": (0.3, 0.0),
    "gpu_power_read_w": (1.0, 0.002),  # NVML's power reading (1 s average)
}
# per-sensor calibration offsets, 1 sigma, drawn once per device from the seed: a
# sensor's accuracy is a fixed bias (RTDs paired in the CDU are matched to a few
# hundredths of a kelvin; on-die and PSU sensors are good to a degree or so)
SENSOR_OFFSET_K = {
    "cdu_supply_c": 0.02,
    "cdu_return_c": 0.02,
    "cdu_primary_supply_c": 0.02,
    "cdu_primary_return_c": 0.02,
    "psu_temp_c": 1.0,
    "crah_supply_c": 0.2,
    "crah_return_c": 0.2,
    "gpu_temp_read_c": 0.5,
    "gpu_mem_temp_read_c": 0.5,
}
# seeded part-to-part variation of healthy devices (1 sigma, relative): two GPUs at the
# same work differ in cold-plate/TIM resistance and in power, PSUs in efficiency, fans
# and pumps along their curves
PART_SPREAD = {
    "gpu_rth": 0.04,  # cold plate contact, TIM thickness: ~1.3 K at 700 W
    "gpu_idle_power": 0.08,
    "gpu_dynamic_power": 0.03,
    "psu_loss": 0.06,
    "crah_fan_power": 0.05,
    "cdu_pump_power": 0.04,
}


@dataclass
class PlantState:
    """Facility-level results of one step, in kW unless the name says otherwise."""

    it_kw: float = 0.0  # at IT equipment input (sum of PSU input)
    pdu_output_kw: float = 0.0
    ups_output_kw: float = 0.0
    ups_input_kw: float = 0.0
    psu_loss_kw: float = 0.0
    pdu_loss_kw: float = 0.0
    ups_loss_kw: float = 0.0
    switchgear_loss_kw: float = 0.0
    transformer_loss_kw: float = 0.0
    chiller_kw: float = 0.0
    tower_kw: float = 0.0
    chw_pump_kw: float = 0.0
    cw_pump_kw: float = 0.0
    cdu_pump_kw: float = 0.0
    crah_fan_kw: float = 0.0
    misc_kw: float = 0.0
    facility_kw: float = 0.0
    cooling_load_kw: float = 0.0  # heat picked up by the chilled water
    chiller_load_kw: float = 0.0
    free_cooling_kw: float = 0.0
    chiller_cop: float = 0.0
    chillers_on: int = 0
    heat_produced_kw: float = 0.0  # in the hall: IT + CDU pumps + CRAH fans
    heat_removed_kw: float = 0.0  # CDU exchangers + CRAH coils
    chw_supply_c: float = 18.0
    chw_return_c: float = 24.0
    cw_supply_c: float = 27.0
    outdoor_drybulb_c: float = 20.0
    outdoor_wetbulb_c: float = 15.0
    outdoor_rh_pct: float = 60.0
    makeup_water_lpm: float = 0.0  # cooling-tower make-up water (issue 27)

    @property
    def plant_kw(self) -> float:
        """Chilled-water plant sub-meter: chillers, towers and plant pumps."""
        return self.chiller_kw + self.tower_kw + self.chw_pump_kw + self.cw_pump_kw

    @property
    def pue(self) -> float:
        return self.facility_kw / self.it_kw if self.it_kw > 0 else float("nan")


LEDGER_KEYS = (
    "facility",
    "it_input",
    "gpu",
    "node_overhead",
    "psu_loss",
    "pdu_loss",
    "ups_loss",
    "switchgear_loss",
    "transformer_loss",
    "chiller",
    "tower",
    "chw_pump",
    "cw_pump",
    "cdu_pump",
    "crah_fan",
    "misc",
)


def _utc_offset_h(tz: str, at_s: float) -> float:
    try:
        from zoneinfo import ZoneInfo

        off = datetime.fromtimestamp(at_s, UTC).astimezone(ZoneInfo(tz)).utcoffset()
        return off.total_seconds() / 3600.0 if off else 0.0
    except Exception:  # unknown zone name: the weather just runs on UTC
        return 0.0


class SiteSimulator:
    """Steps the site forward in time. Deterministic for a given seed and step sequence."""

    # facility sensor readings, set by _measure (one entry of SENSOR_NOISE each)
    cdu_supply_c: NDArray[np.float64]
    cdu_return_c: NDArray[np.float64]
    cdu_primary_supply_c: NDArray[np.float64]
    cdu_primary_return_c: NDArray[np.float64]
    cdu_flow_lpm: NDArray[np.float64]
    cdu_primary_flow_lpm: NDArray[np.float64]
    cdu_dp_kpa: NDArray[np.float64]
    psu_temp_c: NDArray[np.float64]
    crah_supply_c: NDArray[np.float64]
    crah_return_c: NDArray[np.float64]
    gpu_temp_read_c: NDArray[np.float64]
    gpu_mem_temp_read_c: NDArray[np.float64]
    gpu_power_read_w: NDArray[np.float64]

    def __init__(
        self,
        site: Site,
        seed: int = 0,
        start_time_s: float = 0.0,
        faults: str | FaultPlan | None = None,
        climate: str | Climate = "temperate",
        workload: WorkloadMix | None = None,
        constant_util: float | None = None,
        horizon_s: float = 24 * 3600.0,
        warmup_s: float = WARMUP_S,
    ) -> None:
        self.site, self.seed = site, seed
        self.layout = lay = SiteLayout(site)
        self.rng = np.random.default_rng(seed)
        self.start_time_s = self.time_s = float(start_time_s)
        utc_h = _utc_offset_h(site.site.timezone, start_time_s)
        self.weather = Weather(climate, seed, utc_h)
        self.workload = Workload(lay, seed, workload, utc_h, constant_util)
        cdu_sp = np.array([c.secondary_supply_setpoint_c for c in lay.cdu_spec])
        crah_sp = np.array([a.supply_air_setpoint_c for a in lay.crah_spec])
        self.controls = Controls(
            lay,
            site.plant.chw_supply_setpoint_c,
            site.plant.cw_supply_setpoint_c,
            cdu_sp,
            crah_sp,
            DP_MIN_DEFAULT_KPA,
            DT_DEFAULT_K,
        )
        plan = (
            faults
            if isinstance(faults, FaultPlan)
            else parse_faults(faults, lay, start_time_s, seed, horizon_s)
        )
        self.fault_plan = plan
        self.faults = FaultInjector(plan, lay, seed)
        chw0 = self.controls.get("chw_supply_setpoint_c")
        self.cdu = CduModel(
            lay.cdu_rated_kw,
            lay.cdu_nominal_flow_lpm,
            lay.cdu_cp,
            lay.cdu_rho,
            self.controls.value("cdu_supply_setpoint_c"),
            chw0,
        )
        self.crah = CrahModel(
            lay.crah_rated_kw,
            lay.crah_fan_rated_w,
            lay.crah_hall,
            lay.n_hall,
            self.controls.value("crah_supply_setpoint_c"),
        )
        self.plant_model = PlantModel(
            site.plant.rated_kw, chw0, self.controls.get("cw_supply_setpoint_c")
        )
        coolant0 = (
            self.controls.value("cdu_supply_setpoint_c")[lay.rack_cdu][lay.gpu_rack]
            if lay.n_cdu
            else np.full(lay.n_gpu, 30.0)
        )
        # part-to-part variation and sensor offsets: their own stream, so that they do
        # not shift the workload's random numbers; the same seed gives the same parts
        parts = np.random.default_rng([seed, 0xBA27])

        def spread(key: str, n: int) -> NDArray[np.float64]:
            return np.exp(parts.normal(0.0, PART_SPREAD[key], n))  # lognormal, median 1

        self.gpu_rth_part = spread("gpu_rth", lay.n_gpu)
        self.psu_loss_part = spread("psu_loss", lay.n_psu)
        self.crah_fan_part = spread("crah_fan_power", lay.n_crah)
        self.cdu_pump_part = spread("cdu_pump_power", lay.n_cdu)
        idle_w = lay.gpu_idle_w * spread("gpu_idle_power", lay.n_gpu)
        demand = spread("gpu_dynamic_power", lay.n_gpu)
        # one offset per device of the class the reading's name starts with
        sizes = {"cdu": lay.n_cdu, "psu": lay.n_psu, "crah": lay.n_crah, "gpu": lay.n_gpu}
        self.sensor_offset = {
            k: parts.normal(0.0, sd, sizes[k.split("_")[0]]) for k, sd in SENSOR_OFFSET_K.items()
        }
        self.gpu = GpuModel(
            lay.gpu_tdp_w,
            np.minimum(idle_w, 0.5 * lay.gpu_tdp_w),
            coolant0,
            self.rng.uniform(1e9, 5e9, lay.n_gpu),
            demand,
        )
        self.cdu.pump_power_factor = self.cdu_pump_part
        self.ups_coef = pw.ups_loss_coefficients(site.ups.efficiency)
        # the UPS battery; its own stream (the self-test phase) so no other draw moves
        phase = float(np.random.default_rng([seed, 0x0B5]).uniform())
        self.ups = UpsModel(site.ups, self.start_time_s, phase)
        self.rack_dt_k = np.zeros(lay.n_rack)
        self.psu_temp_true_c = np.full(lay.n_psu, 35.0)
        self.sensor_rng = np.random.default_rng([seed, 0x5E45])
        self.psu_energy_kwh = np.zeros(lay.n_psu)
        self.pdu_energy_kwh = np.zeros(lay.n_pdu)
        self.gpu_ecc_corrected = np.zeros(lay.n_gpu)
        self.gpu_ecc_uncorrected = np.zeros(lay.n_gpu)
        self.gpu_remapped_correctable = np.zeros(lay.n_gpu)
        self.gpu_remapped_uncorrectable = np.zeros(lay.n_gpu)
        self.meter_energy_kwh = {
            "facility": 0.0,
            "ups_output": 0.0,
            "pdu_output": 0.0,
            "it_input": 0.0,
            "cooling": 0.0,
        }
        self.ledger_kwh = dict.fromkeys(LEDGER_KEYS, 0.0)
        self.makeup_water_l = 0.0  # tower make-up water since the start (issue 27)
        # issue 27 (whatif): racks not yet energised draw nothing (installed positions)
        self.rack_energised = np.ones(lay.n_rack, dtype=bool)
        self.plant = PlantState()
        self._telemetry: TelemetryPlan | None = None
        self.parts = PartCatalog(self)  # GPU/PSU identity (UUID, serial) per slot
        # settle loops, valves and temperatures at the start conditions; the clock, the
        # counters and the faults do not move
        for _ in range(int(warmup_s // 10.0)):
            self._advance(10.0, settle=True)
        if warmup_s <= 0:
            self._advance(1.0, settle=True)
        # faults whose onset is the start time show from the first read on
        self.faults.effects(self, self.time_s - 1e-3, self.time_s)

    # -- public API ---------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Advance the site by dt_s seconds."""
        if dt_s > 0:
            self._advance(float(dt_s), settle=False)

    @property
    def telemetry(self) -> TelemetryPlan:
        if self._telemetry is None:
            self._telemetry = TelemetryPlan(self)
        return self._telemetry

    def drain_events(self) -> list[SimEvent]:
        """Device events raised since the last call (XIDs, leaks, failed pumps, ...)."""
        return self.faults.drain_events()

    def inject(self, spec: str) -> list[Fault]:
        """Add the faults of a spec (docs/simulator.md) to the running simulation, onsets
        relative to now; raises FaultSpecError naming the bad item (issue 26: scenarios)."""
        added = parse_faults(spec, self.layout, self.time_s, self.seed).faults
        self.faults.add(added)
        return added

    def labels(self) -> list[dict]:
        """Ground truth: one row per injected fault."""
        return self.fault_plan.labels()

    def write_labels(self, path: str | Path) -> Path:
        """Ground truth as JSON lines (onset/failure as Unix ms and ISO time)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            for row in self.labels():
                iso = {
                    k.replace("_ms", "_time"): None
                    if row[k] is None
                    else datetime.fromtimestamp(row[k] / 1000, UTC).isoformat()
                    for k in ("onset_ms", "failure_ms")
                }
                fh.write(json.dumps({**row, **iso}) + "\n")
        return path

    def swap_part(self, device_id: str) -> tuple[dict, dict]:
        """Maintenance: a new part in a GPU or PSU slot (new UUID/serial, the old part's
        faults gone); (old identity, new identity). See simulator/parts.py."""
        return swap_part(self, device_id)

    @property
    def gpu_lost(self) -> np.ndarray:
        return self.faults.gpu_lost

    # -- per-device views the telemetry reads ------------------------------------------

    gpu_temp_c = property(lambda s: s.gpu.temp_c)  # truth; the sensors: gpu_temp_read_c
    gpu_mem_temp_c = property(lambda s: s.gpu.mem_temp_c)
    gpu_power_w = property(lambda s: s.gpu.power_w)
    gpu_energy_mj = property(lambda s: s.gpu.energy_mj)
    gpu_util = property(lambda s: s.gpu.util)
    gpu_sm_clock_mhz = property(lambda s: s.gpu.sm_clock_mhz)
    gpu_throttle_reasons = property(lambda s: s.gpu.throttle_reasons)
    cdu_pump_speed = property(lambda s: s.cdu.speed)
    cdu_pump_w = property(lambda s: s.cdu.pump_w)
    cdu_heat_kw = property(lambda s: s.cdu.heat_removed_kw)
    cdu_approach_k = property(lambda s: s.cdu.approach_k)
    crah_fan_speed = property(lambda s: s.crah.fan_speed)
    crah_fan_w = property(lambda s: s.crah.fan_w)
    crah_airflow_m3h = property(lambda s: s.crah.airflow_m3h)

    # -- one time step ------------------------------------------------------------------

    def _advance(self, dt_s: float, settle: bool) -> None:
        lay, ctl, rng = self.layout, self.controls, self.rng
        t_prev = self.time_s
        t = t_prev if settle else t_prev + dt_s
        self.time_s = t
        ctl.step(dt_s)
        eff = (
            self.faults.effects(self, t_prev, t)
            if not settle
            else self.faults.effects(self, t_prev - 1.0, t_prev - 1.0)
        )
        drybulb, rh, wetbulb = (float(x) for x in self.weather.at(t))

        # hydraulics first: flows depend on controls and pump health, not on this step's heat
        wear = eff.cdu_pump_wear * np.where(eff.cdu_reservoir_pct > 0, 1.0, 0.0)
        self.cdu.hydraulics(
            dt_s,
            ctl.value("cdu_dp_setpoint_kpa"),
            ctl.value("cdu_dt_setpoint_k"),
            self.cdu.heat_in_kw,
            wear,
        )
        self.cdu.pump_w = self.cdu.pump_w * eff.cdu_pump_power_factor  # bearing drag (issue 21)
        self.cdu_reservoir_pct, self.cdu_leak_detected = (
            eff.cdu_reservoir_pct,
            eff.cdu_leak_detected,
        )

        # GPUs: work offered, minus nodes drained for a lost or failed GPU
        util = self.workload.gpu_util(t, dt_s, rng)
        dark = ~self.rack_energised[lay.gpu_rack]
        if dark.any():
            util = np.where(dark, 0.0, util)
        bad = self.faults.gpu_lost | self.faults.gpu_failed
        if bad.any():
            drained = np.bincount(lay.gpu_node, bad, lay.n_node)[lay.gpu_node] > 0
            util = np.where(drained, 0.0, util)
        if lay.n_cdu:
            rack_cs = self.cdu.c_s[lay.rack_cdu] / lay.cdu_rack_count[lay.rack_cdu]
            coolant = (self.cdu.supply_c[lay.rack_cdu] + 0.5 * self.rack_dt_k)[lay.gpu_rack]
        else:
            rack_cs, coolant = np.ones(lay.n_rack), np.full(lay.n_gpu, 30.0)
        self.gpu.step(
            dt_s,
            util,
            coolant,
            eff.gpu_rth_factor * self.gpu_rth_part,
            self.faults.gpu_lost,
            eff.gpu_mem_rth_factor,
        )
        if dark.any():
            self.gpu.power_w = np.where(dark, 0.0, self.gpu.power_w)

        # electrical chain
        n_gpus = np.maximum(lay.rack_gpu_count, 1)
        rack_util = np.bincount(lay.gpu_rack, self.gpu.util, lay.n_rack) / n_gpus
        rack_gpu_w = np.bincount(lay.gpu_rack, self.gpu.power_w, lay.n_rack)
        overhead_w = lay.node_overhead_w * (
            NODE_OVERHEAD_IDLE + (1 - NODE_OVERHEAD_IDLE) * rack_util
        )
        overhead_w = np.where(self.rack_energised, overhead_w, 0.0)
        rack_dc_w = rack_gpu_w + overhead_w
        rated = lay.rack_psu_rated_w[lay.psu_rack]
        self.psu_out_w, self.psu_in_w, psu_loss_w = pw.psu_stage(
            rack_dc_w,
            lay.psu_rack,
            lay.rack_psus,
            rated,
            eff.psu_failed,
            eff.psu_loss_factor * self.psu_loss_part,
        )
        # held-out fault (issue 21): worn input capacitors lose fixed watts at any load
        extra_w = np.where(self.psu_out_w > 0, eff.psu_extra_loss_w, 0.0)
        psu_loss_w, self.psu_in_w = psu_loss_w + extra_w, self.psu_in_w + extra_w
        rack_in_w = np.bincount(lay.psu_rack, self.psu_in_w, lay.n_rack)
        self.rack_dc_w, self.rack_in_w = rack_dc_w, rack_in_w
        self.pdu_out_w = np.bincount(lay.rack_pdu, rack_in_w, lay.n_pdu)
        pdu_loss_w = self.pdu_out_w * (1.0 / lay.pdu_eff - 1.0)
        self.pdu_in_w = self.pdu_out_w + pdu_loss_w
        ups_out_kw = float(self.pdu_in_w.sum()) / 1000.0
        ups_loss = pw.ups_loss_kw(ups_out_kw, self.site.ups.rated_kw, self.ups_coef)

        # heat: rack power to liquid and air; pumps heat the loop, fans the air
        liquid_w = rack_in_w * lay.rack_liquid
        air_w = rack_in_w - liquid_w
        self.rack_dt_k = liquid_w / 1000.0 / rack_cs
        chw_supply = self.plant_model.chw_supply_c
        if lay.n_cdu:
            heat_in = (
                np.bincount(lay.rack_cdu, liquid_w, lay.n_cdu) / 1000.0 + self.cdu.pump_w / 1000.0
            )
            self.cdu.thermal(
                dt_s, heat_in, ctl.value("cdu_supply_setpoint_c"), chw_supply, eff.cdu_ua_factor
            )
        # PDUs (transformers, switchboards) and the UPS sit in electrical rooms next to the
        # hall, cooled by chilled-water fan coils; the hall air gets the racks' air share
        hall_air_kw = np.bincount(lay.rack_hall, air_w, lay.n_hall) / 1000.0
        self.crah.step(
            dt_s,
            hall_air_kw,
            ctl.value("crah_supply_setpoint_c"),
            chw_supply,
            eff.crah_failed,
            eff.crah_fan_power_factor * self.crah_fan_part,
            eff.crah_slip,
        )
        inlet = self.crah.hall_inlet_c[lay.rack_hall][lay.psu_rack]
        target = inlet + pw.PSU_TEMP_RISE_K * (self.psu_in_w > 0) + pw.PSU_TEMP_K_PER_W * psu_loss_w
        # held-out fault (issue 21): a failing PSU fan multiplies the case's rise over inlet
        target = target + (target - inlet) * (eff.psu_thermal_factor - 1.0)
        self.psu_temp_true_c += (target - self.psu_temp_true_c) * (
            1 - np.exp(-dt_s / pw.PSU_TIME_CONSTANT_S)
        )

        # chilled-water plant: CDU exchangers, CRAH coils, electrical-room coils
        q_liquid = float(self.cdu.heat_removed_kw.sum())
        q_air = float(self.crah.removed_kw.sum())
        q_elec = ups_loss + float(pdu_loss_w.sum()) / 1000.0
        c_chw = float(self.cdu.c_p.sum()) + (q_air + q_elec) / COIL_DESIGN_DT_K
        po = self.plant_model.step(
            dt_s,
            q_liquid + q_air + q_elec,
            c_chw,
            float(ctl.value("chw_supply_setpoint_c")[0]),
            float(ctl.value("cw_supply_setpoint_c")[0]),
            wetbulb,
            bool(ctl.value("economizer_enabled")[0] >= 0.5),
            eff.refrigerant_severity,
            eff.chillers_tripped,
        )

        p = self.plant
        p.outdoor_drybulb_c, p.outdoor_wetbulb_c, p.outdoor_rh_pct = drybulb, wetbulb, rh
        p.chw_supply_c, p.chw_return_c = self.plant_model.chw_supply_c, po.chw_return_c
        p.cw_supply_c = self.plant_model.cw_supply_c
        p.chiller_kw, p.tower_kw = po.chiller_kw, po.tower_kw
        p.chw_pump_kw, p.cw_pump_kw = po.chw_pump_kw, po.cw_pump_kw
        p.makeup_water_lpm = po.makeup_water_lpm
        p.chiller_load_kw, p.free_cooling_kw = po.chiller_load_kw, po.free_cooling_kw
        p.chiller_cop, p.chillers_on, p.cooling_load_kw = po.cop, po.chillers_on, po.chw_load_kw
        p.cdu_pump_kw = float(self.cdu.pump_w.sum()) / 1000.0
        p.crah_fan_kw = float(self.crah.fan_w.sum()) / 1000.0
        p.misc_kw = self.site.site.misc_load_kw
        p.it_kw = float(rack_in_w.sum()) / 1000.0
        p.psu_loss_kw = float(psu_loss_w.sum()) / 1000.0
        p.pdu_output_kw = float(self.pdu_out_w.sum()) / 1000.0
        p.pdu_loss_kw = float(pdu_loss_w.sum()) / 1000.0
        p.ups_output_kw, p.ups_loss_kw = ups_out_kw, ups_loss
        self.ups.step(0.0 if settle else dt_s, t, ups_out_kw, drybulb, eff.ups)
        p.ups_input_kw = ups_out_kw + ups_loss
        # everything on the LV board goes through the switchgear and the MV/LV transformer;
        # the utility meter sits on the MV side (their heat goes to outdoor/ventilated rooms)
        lv_kw = p.ups_input_kw + p.plant_kw + p.cdu_pump_kw + p.crah_fan_kw + p.misc_kw
        el = self.site.electrical
        p.switchgear_loss_kw = lv_kw * el.switchgear_loss
        p.transformer_loss_kw = pw.transformer_loss_kw(
            lv_kw + p.switchgear_loss_kw,
            el.transformer_rated_kw,
            el.transformer_no_load_loss,
            el.transformer_load_loss,
        )
        p.facility_kw = lv_kw + p.switchgear_loss_kw + p.transformer_loss_kw
        p.heat_produced_kw = p.it_kw + p.cdu_pump_kw + p.crah_fan_kw  # in the hall
        p.heat_removed_kw = q_liquid + q_air
        self._measure()
        if not settle:
            self._account(
                dt_s, p, float(self.gpu.power_w.sum()) / 1000.0, float(overhead_w.sum()) / 1000.0
            )

    def _measure(self) -> None:
        """What the sensors read this step: truth plus their calibration offset and noise.
        The physics keeps using the truth (self.cdu, self.crah, psu_temp_true_c,
        self.gpu); the telemetry quantizes to each register's resolution."""
        rng, c, a, g = self.sensor_rng, self.cdu, self.crah, self.gpu
        for name, truth in (
            ("cdu_supply_c", c.supply_c),
            ("cdu_return_c", c.return_c),
            ("cdu_primary_supply_c", c.primary_supply_c),
            ("cdu_primary_return_c", c.primary_return_c),
            ("cdu_flow_lpm", c.flow_lpm),
            ("cdu_primary_flow_lpm", c.primary_flow_lpm),
            ("cdu_dp_kpa", c.dp_kpa),
            ("psu_temp_c", self.psu_temp_true_c),
            ("crah_supply_c", a.supply_c),
            ("crah_return_c", a.return_c),
            ("gpu_temp_read_c", g.temp_c),
            ("gpu_mem_temp_read_c", g.mem_temp_c),
            ("gpu_power_read_w", g.power_w),
        ):
            absolute, relative = SENSOR_NOISE[name]
            sigma = absolute + relative * np.abs(truth)
            reading = truth + rng.normal(0.0, 1.0, truth.shape) * sigma
            offset = self.sensor_offset.get(name)
            setattr(self, name, reading if offset is None else reading + offset)

    def _account(self, dt_s: float, p: PlantState, gpu_kw: float, overhead_kw: float) -> None:
        hours = dt_s / 3600.0
        self.psu_energy_kwh += self.psu_in_w / 1000.0 * hours
        self.pdu_energy_kwh += self.pdu_out_w / 1000.0 * hours
        m = self.meter_energy_kwh
        m["facility"] += p.facility_kw * hours
        m["ups_output"] += p.ups_output_kw * hours
        m["pdu_output"] += p.pdu_output_kw * hours
        m["it_input"] += p.it_kw * hours
        m["cooling"] += p.plant_kw * hours
        self.makeup_water_l += p.makeup_water_lpm * dt_s / 60.0
        led = self.ledger_kwh
        for key, kw in (
            ("facility", p.facility_kw),
            ("it_input", p.it_kw),
            ("gpu", gpu_kw),
            ("node_overhead", overhead_kw),
            ("psu_loss", p.psu_loss_kw),
            ("pdu_loss", p.pdu_loss_kw),
            ("ups_loss", p.ups_loss_kw),
            ("switchgear_loss", p.switchgear_loss_kw),
            ("transformer_loss", p.transformer_loss_kw),
            ("chiller", p.chiller_kw),
            ("tower", p.tower_kw),
            ("chw_pump", p.chw_pump_kw),
            ("cw_pump", p.cw_pump_kw),
            ("cdu_pump", p.cdu_pump_kw),
            ("crah_fan", p.crah_fan_kw),
            ("misc", p.misc_kw),
        ):
            led[key] += kw * hours
