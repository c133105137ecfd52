"""Vectorized physics of a simulated site (numpy only, so it runs on a rack).

Energy flows IT -> PSU losses -> PDU losses -> UPS losses -> utility meter; heat flows
IT -> liquid loops (CDUs) and air (CRAHs) -> chiller plant. PUE is never set: it emerges
from these. Every array is indexed by device in the order of `SiteLayout`.
See docs/simulator.md for equations and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ingest.site import Site

WATER_CP_KJ_KG_K = 4.186
WATER_DENSITY_KG_M3 = 997.0
GPU_THERMAL_RESISTANCE_K_PER_W = 0.055  # cold plate + TIM, coolant to die
GPU_THERMAL_TIME_CONSTANT_S = 20.0
GPU_SLOWDOWN_TEMP_C = 87.0


def psu_efficiency(load_fraction: np.ndarray) -> np.ndarray:
    """80 PLUS Titanium-like curve: 90% at 10% load, 96% at 50%, 94% at 100%."""
    x = np.clip(load_fraction, 0.02, 1.2)
    return 0.962 - 0.09 * (x - 0.5) ** 2 - 0.05 * np.exp(-x / 0.06)


def chiller_cop(chw_supply_c: float, cw_supply_c: float) -> float:
    """COP rises with chilled-water supply temperature and falls with condenser water."""
    cop = 6.2 + 0.20 * (chw_supply_c - 18.0) - 0.17 * (cw_supply_c - 27.0)
    return float(np.clip(cop, 2.0, 12.0))


@dataclass
class SiteLayout:
    """Index arrays mapping each device to its parents, built once from the site."""

    site: Site
    rack_ids: list[str] = field(init=False)
    rack_keys: list[str] = field(init=False)
    gpu_ids: list[str] = field(init=False)
    gpu_rack: np.ndarray = field(init=False)  # rack index per GPU
    psu_ids: list[str] = field(init=False)
    psu_rack: np.ndarray = field(init=False)
    rack_row: np.ndarray = field(init=False)  # row index per rack
    row_ids: list[str] = field(init=False)
    cdu_ids: list[str] = field(init=False)
    pdu_ids: list[str] = field(init=False)
    row_cdu: np.ndarray = field(init=False)
    row_pdu: np.ndarray = field(init=False)
    crah_ids: list[str] = field(init=False)
    crah_hall: np.ndarray = field(init=False)
    rack_hall: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        s = self.site
        sid = s.site.id
        racks = s.racks()
        self.rack_ids = [r.prefix for r in racks]
        self.rack_keys = [r.rack for r in racks]
        self.row_ids, self.cdu_ids, self.pdu_ids, self.crah_ids = [], [], [], []
        row_cdu, row_pdu, crah_hall, rack_row, rack_hall = [], [], [], [], []
        self.cdu_spec, self.pdu_spec, self.crah_spec = [], [], []
        for h_idx, hall in enumerate(s.halls):
            cdu_index = {}
            for c in hall.cdus:
                cdu_index[c.id] = len(self.cdu_ids)
                self.cdu_ids.append(f"{sid}/{hall.id}/{c.id}")
                self.cdu_spec.append(c)
            pdu_index = {}
            for p in hall.pdus:
                pdu_index[p.id] = len(self.pdu_ids)
                self.pdu_ids.append(f"{sid}/{hall.id}/{p.id}")
                self.pdu_spec.append(p)
            for a in hall.crahs:
                self.crah_ids.append(f"{sid}/{hall.id}/{a.id}")
                self.crah_spec.append(a)
                crah_hall.append(h_idx)
            for row in hall.rows:
                r_idx = len(self.row_ids)
                self.row_ids.append(f"{sid}/{hall.id}/{row.id}")
                row_cdu.append(cdu_index[row.cdu])
                row_pdu.append(pdu_index[row.pdu])
                for _ in row.racks:
                    rack_row.append(r_idx)
                    rack_hall.append(h_idx)
        self.row_cdu = np.array(row_cdu)
        self.row_pdu = np.array(row_pdu)
        self.crah_hall = np.array(crah_hall, dtype=int)
        self.rack_row = np.array(rack_row)
        self.rack_hall = np.array(rack_hall)
        self.gpu_ids, gpu_rack, self.psu_ids, psu_rack = [], [], [], []
        self.gpu_tdp_w, self.gpu_idle_w, self.node_overhead_w = [], [], []
        self.rack_nodes, self.rack_psus, self.rack_psu_rated_w, self.rack_liquid = [], [], [], []
        for k, r in enumerate(racks):
            t = r.template
            for n in range(t.nodes):
                for g in range(t.gpus_per_node):
                    self.gpu_ids.append(r.gpu_id(n, g))
                    gpu_rack.append(k)
                    self.gpu_tdp_w.append(t.gpu_tdp_w)
                    self.gpu_idle_w.append(t.gpu_idle_w)
            for i in range(t.psus):
                self.psu_ids.append(r.psu_id(i))
                psu_rack.append(k)
            self.node_overhead_w.append(t.node_overhead_w * t.nodes)
            self.rack_nodes.append(t.nodes)
            self.rack_psus.append(t.psus)
            self.rack_psu_rated_w.append(t.psu_rated_w)
            self.rack_liquid.append(t.liquid_fraction)
        self.gpu_rack = np.array(gpu_rack, dtype=int)
        self.psu_rack = np.array(psu_rack, dtype=int)
        self.gpu_tdp_w = np.array(self.gpu_tdp_w)
        self.gpu_idle_w = np.array(self.gpu_idle_w)
        self.node_overhead_w = np.array(self.node_overhead_w)
        self.rack_psus = np.array(self.rack_psus)
        self.rack_psu_rated_w = np.array(self.rack_psu_rated_w)
        self.rack_liquid = np.array(self.rack_liquid)
        self.rack_cdu = self.row_cdu[self.rack_row]
        self.rack_pdu = self.row_pdu[self.rack_row]


@dataclass
class PlantState:
    """Facility-level results of one step, in kW unless the name says otherwise."""

    it_kw: float = 0.0  # at IT equipment input (sum of PSU input)
    pdu_output_kw: float = 0.0
    ups_output_kw: float = 0.0
    ups_input_kw: float = 0.0
    chiller_kw: float = 0.0
    tower_kw: float = 0.0
    chw_pump_kw: float = 0.0
    cdu_pump_kw: float = 0.0
    crah_fan_kw: float = 0.0
    misc_kw: float = 0.0
    facility_kw: float = 0.0
    cooling_load_kw: float = 0.0
    chw_supply_c: float = 18.0
    chw_return_c: float = 24.0
    cw_supply_c: float = 27.0
    outdoor_drybulb_c: float = 20.0
    outdoor_wetbulb_c: float = 15.0


class SiteSimulator:
    """Steps the site forward in time. Deterministic for a given seed."""

    def __init__(self, site: Site, seed: int = 0, start_time_s: float = 0.0) -> None:
        self.site = site
        self.layout = lay = SiteLayout(site)
        self.rng = np.random.default_rng(seed)
        self.time_s = start_time_s
        n_gpu, n_rack = len(lay.gpu_ids), len(lay.rack_ids)
        # Training racks run flat out; others follow a diurnal inference load.
        self.rack_is_training = self.rng.random(n_rack) < 0.6
        self.chw_supply_setpoint_c = site.plant.chw_supply_setpoint_c
        self.cw_supply_setpoint_c = site.plant.cw_supply_setpoint_c
        self.cdu_supply_setpoint_c = np.array([c.secondary_supply_setpoint_c for c in lay.cdu_spec])
        self.crah_supply_setpoint_c = np.array([a.supply_air_setpoint_c for a in lay.crah_spec])
        self.cdu_pump_speed = np.full(len(lay.cdu_ids), 0.8)
        self.gpu_temp_c = self.cdu_supply_setpoint_c[lay.rack_cdu][lay.gpu_rack] + 10.0
        self.gpu_energy_mj = self.rng.uniform(1e9, 5e9, n_gpu)
        self.psu_energy_kwh = np.zeros(len(lay.psu_ids))
        self.pdu_energy_kwh = np.zeros(len(lay.pdu_ids))
        self.meter_energy_kwh = {"facility": 0.0, "ups_output": 0.0, "pdu_output": 0.0,
                                 "it_input": 0.0, "cooling": 0.0}
        self.plant = PlantState()
        self.step(1.0)

    # -- one time step -----------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        lay, rng = self.layout, self.rng
        self.time_s += dt_s
        hour = (self.time_s / 3600.0) % 24.0
        diurnal = 0.55 + 0.35 * np.sin((hour - 9.0) / 24.0 * 2 * np.pi)
        rack_util = np.where(self.rack_is_training, 0.9, diurnal)
        util = np.clip(rack_util[lay.gpu_rack] + rng.normal(0, 0.03, len(lay.gpu_ids)), 0, 1)
        self.gpu_util = util
        self.gpu_power_w = lay.gpu_idle_w + (lay.gpu_tdp_w - lay.gpu_idle_w) * util

        # IT power per rack: GPUs plus node overhead that scales with activity.
        gpu_per_rack = np.bincount(lay.gpu_rack, self.gpu_power_w, len(lay.rack_ids))
        util_per_rack = np.bincount(lay.gpu_rack, util, len(lay.rack_ids)) / np.maximum(
            np.bincount(lay.gpu_rack, minlength=len(lay.rack_ids)), 1)
        rack_dc_w = gpu_per_rack + lay.node_overhead_w * (0.6 + 0.4 * util_per_rack)
        self.rack_dc_w = rack_dc_w

        # PSUs share the rack load equally.
        psu_out_w = (rack_dc_w / lay.rack_psus)[lay.psu_rack]
        psu_eff = psu_efficiency(psu_out_w / lay.rack_psu_rated_w[lay.psu_rack])
        self.psu_out_w, self.psu_eff = psu_out_w, psu_eff
        self.psu_in_w = psu_out_w / psu_eff
        self.psu_temp_c = 30.0 + 12.0 * psu_out_w / lay.rack_psu_rated_w[lay.psu_rack]
        rack_in_w = np.bincount(lay.psu_rack, self.psu_in_w, len(lay.rack_ids))
        self.rack_in_w = rack_in_w

        pdu_eff = np.array([p.efficiency for p in lay.pdu_spec])
        self.pdu_out_w = np.bincount(lay.rack_pdu, rack_in_w, len(lay.pdu_ids))
        self.pdu_in_w = self.pdu_out_w / pdu_eff
        ups_out_kw = self.pdu_in_w.sum() / 1000.0
        ups_in_kw = ups_out_kw / self.site.ups.efficiency

        # Heat: all electrical power in a rack ends up as heat, split liquid/air.
        liquid_w = rack_in_w * lay.rack_liquid
        air_w = rack_in_w - liquid_w
        cdu_heat_w = np.bincount(lay.rack_cdu, liquid_w, len(lay.cdu_ids))
        nominal_flow = np.array([c.nominal_flow_lpm for c in lay.cdu_spec])
        cp = np.array([c.fluid.cp_kj_per_kg_k for c in lay.cdu_spec])
        rho = np.array([c.fluid.density_kg_per_m3 for c in lay.cdu_spec])
        # Pump speed follows load to hold a design ΔT of ~6 K.
        target = np.clip(cdu_heat_w / 1000.0 / (nominal_flow / 60000.0 * rho * cp * 6.0), 0.3, 1.0)
        self.cdu_pump_speed += (target - self.cdu_pump_speed) * min(1.0, dt_s / 30.0)
        self.cdu_flow_lpm = nominal_flow * self.cdu_pump_speed
        m_dot = self.cdu_flow_lpm / 60000.0 * rho  # kg/s
        self.cdu_supply_c = self.cdu_supply_setpoint_c + rng.normal(0, 0.05, len(lay.cdu_ids))
        self.cdu_dt_k = cdu_heat_w / 1000.0 / (m_dot * cp)
        self.cdu_return_c = self.cdu_supply_c + self.cdu_dt_k
        self.cdu_heat_kw = cdu_heat_w / 1000.0
        self.cdu_pump_w = 2200.0 * self.cdu_pump_speed**3
        self.cdu_dp_kpa = 150.0 * self.cdu_pump_speed**2

        # GPU die temperature: first-order lag towards coolant + P * R_th.
        coolant = self.cdu_supply_c[lay.rack_cdu][lay.gpu_rack]
        target_t = coolant + self.gpu_power_w * GPU_THERMAL_RESISTANCE_K_PER_W
        alpha = 1.0 - np.exp(-dt_s / GPU_THERMAL_TIME_CONSTANT_S)
        self.gpu_temp_c = self.gpu_temp_c + (target_t - self.gpu_temp_c) * alpha
        self.gpu_energy_mj = self.gpu_energy_mj + self.gpu_power_w * dt_s * 1000.0

        # Air side: CRAHs share their hall's air heat.
        n_crah_per_hall = np.bincount(lay.crah_hall, minlength=len(self.site.halls))
        hall_air_w = np.bincount(lay.rack_hall, air_w, len(self.site.halls))
        crah_rated_w = np.array([a.rated_kw for a in lay.crah_spec]) * 1000.0
        crah_fan_rated = np.array([a.fan_rated_w for a in lay.crah_spec])
        self.crah_load_w = hall_air_w[lay.crah_hall] / np.maximum(n_crah_per_hall[lay.crah_hall], 1)
        self.crah_fan_speed = np.clip(self.crah_load_w / crah_rated_w, 0.25, 1.0)
        self.crah_fan_w = crah_fan_rated * self.crah_fan_speed**3
        self.crah_supply_c = self.crah_supply_setpoint_c + rng.normal(0, 0.1, len(lay.crah_ids))
        self.crah_return_c = self.crah_supply_c + 12.0 * self.crah_load_w / crah_rated_w

        # Chiller plant removes all heat delivered to it: IT heat plus pump and fan heat.
        p = self.plant
        p.outdoor_drybulb_c = 18.0 + 6.0 * np.sin((hour - 15.0) / 24.0 * 2 * np.pi)
        p.outdoor_wetbulb_c = p.outdoor_drybulb_c - 5.0
        p.chw_supply_c = self.chw_supply_setpoint_c
        p.cw_supply_c = max(self.cw_supply_setpoint_c, p.outdoor_wetbulb_c + 4.0)
        p.cdu_pump_kw = self.cdu_pump_w.sum() / 1000.0
        p.crah_fan_kw = self.crah_fan_w.sum() / 1000.0
        p.cooling_load_kw = rack_in_w.sum() / 1000.0 + p.cdu_pump_kw + p.crah_fan_kw
        p.chiller_kw = p.cooling_load_kw / chiller_cop(p.chw_supply_c, p.cw_supply_c)
        p.tower_kw = 0.012 * p.cooling_load_kw + 0.2 * p.chiller_kw * 0.1
        p.chw_pump_kw = 0.015 * p.cooling_load_kw
        p.chw_return_c = p.chw_supply_c + 6.0 * min(p.cooling_load_kw / self.site.plant.rated_kw
                                                    * 1.5, 1.2)
        p.misc_kw = self.site.site.misc_load_kw
        p.it_kw = rack_in_w.sum() / 1000.0
        p.pdu_output_kw = self.pdu_out_w.sum() / 1000.0
        p.ups_output_kw, p.ups_input_kw = ups_out_kw, ups_in_kw
        plant_kw = p.chiller_kw + p.tower_kw + p.chw_pump_kw
        p.facility_kw = ups_in_kw + plant_kw + p.cdu_pump_kw + p.crah_fan_kw + p.misc_kw

        hours = dt_s / 3600.0
        self.psu_energy_kwh += self.psu_in_w / 1000.0 * hours
        self.pdu_energy_kwh += self.pdu_out_w / 1000.0 * hours
        m = self.meter_energy_kwh
        m["facility"] += p.facility_kw * hours
        m["ups_output"] += p.ups_output_kw * hours
        m["pdu_output"] += p.pdu_output_kw * hours
        m["it_input"] += p.it_kw * hours
        m["cooling"] += plant_kw * hours
