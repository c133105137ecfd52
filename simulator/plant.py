"""Chilled-water plant: chillers, waterside economizer, cooling tower, pumps.

Chilled water returns at T_chwr = T_chws + Q / C_chw. A waterside economizer (plate HX
between condenser and chilled water, 1.5 K approach) pre-cools it whenever the tower can
make water colder than the return; the chillers take the rest. Chiller COP is a fixed
fraction of the Carnot COP between evaporating (chw supply - 1.5 K) and condensing
(condenser water leaving + 1.5 K) temperatures plus a fixed irreversibility term,
1/COP = 1/COP_Carnot + 0.05, which gives COP 6.2 at AHRI 550/590 rating conditions and
about 9 at 18/27 degC; times the DOE-2 style part-load curve EIR(PLR) = 0.2 + 0.3 PLR +
0.5 PLR^2; units are staged at 90 % load each (N+1: three units of half the plant rating).
Tower approach = 4 K * load fraction / fan speed^0.8; the fan speed is the lowest that
makes the condenser-water setpoint, fan power P_rated s^3. Pump power = V dp / eta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WATER_CP = 4.186
WATER_RHO = 997.0
KELVIN = 273.15
N_CHILLERS = 3
UNIT_FRACTION = 0.5  # each unit's capacity as a share of the plant rating (N+1)
STAGE_UP_PLR = 0.9
IRREVERSIBILITY = 0.05  # 1/COP = 1/COP_carnot + this
REFRIGERANT_APPROACH_K = 1.5
CW_DESIGN_DT_K = 5.0
CHW_DESIGN_DT_K = 6.0  # plant design chilled-water delta-T: design flow = rating / this
COP_MAX = 12.0
ECONOMIZER_APPROACH_K = 1.5
MIN_CW_FOR_CHILLERS_C = 13.0
TOWER_DESIGN_APPROACH_K = 4.0
TOWER_SPEED_EXPONENT = 0.8
TOWER_MIN_SPEED = 0.15
TOWER_FAN_KW_PER_KW = 0.012  # ASHRAE 90.1 minimum tower efficiency ~38 gpm/hp
CHW_PUMP_DP_KPA = 200.0
CW_PUMP_DP_KPA = 150.0
PUMP_EFFICIENCY = 0.7
CHW_TAU_S = 300.0
CW_TAU_S = 300.0
LOW_REFRIGERANT_EVAP_K = 6.0  # extra evaporator approach at full severity
LOW_REFRIGERANT_CAPACITY = 0.4  # capacity lost at full severity


def part_load_eir(plr: np.ndarray | float) -> np.ndarray:
    plr = np.asarray(plr, float)
    return 0.2 + 0.3 * plr + 0.5 * plr * plr


def chiller_cop(chw_supply_c, cw_supply_c, plr=1.0, evap_extra_k=0.0):
    """COP of a chiller unit; rises with chw supply, falls with condenser water."""
    plr = np.clip(np.asarray(plr, float), 0.05, 1.2)
    t_evap = np.asarray(chw_supply_c, float) - REFRIGERANT_APPROACH_K - evap_extra_k
    t_cond = np.asarray(cw_supply_c, float) + CW_DESIGN_DT_K * plr + REFRIGERANT_APPROACH_K
    lift = np.maximum(t_cond - t_evap, 5.0)
    full = 1.0 / (lift / (t_evap + KELVIN) + IRREVERSIBILITY)
    return np.minimum(full * plr / part_load_eir(plr), COP_MAX)


def tower_approach_k(load_fraction, speed):
    return (
        TOWER_DESIGN_APPROACH_K
        * np.maximum(load_fraction, 0.02)
        / np.maximum(speed, TOWER_MIN_SPEED) ** TOWER_SPEED_EXPONENT
    )


def pump_kw(capacity_rate_kw_k: float, dp_kpa: float) -> float:
    volume_m3s = capacity_rate_kw_k / WATER_CP / WATER_RHO
    return volume_m3s * dp_kpa / PUMP_EFFICIENCY  # kPa * m3/s = kW


@dataclass
class PlantOutput:
    chiller_kw: float = 0.0
    tower_kw: float = 0.0
    chw_pump_kw: float = 0.0
    cw_pump_kw: float = 0.0
    chiller_load_kw: float = 0.0
    free_cooling_kw: float = 0.0
    chw_load_kw: float = 0.0
    rejected_kw: float = 0.0
    chw_return_c: float = 24.0
    cop: float = 0.0
    chillers_on: int = 0
    tower_speed: float = 0.0
    chw_pump_speed: float = 0.0  # flow as a share of the plant's design flow
    cw_pump_speed: float = 0.0


class PlantModel:
    def __init__(self, rated_kw: float, chw_supply_c: float, cw_supply_c: float) -> None:
        self.rated_kw = rated_kw
        self.unit_kw = rated_kw * UNIT_FRACTION
        self.chw_supply_c = chw_supply_c
        self.cw_supply_c = cw_supply_c
        self.out = PlantOutput()

    def step(
        self,
        dt_s: float,
        heat_kw: float,
        c_chw: float,
        chw_setpoint_c: float,
        cw_setpoint_c: float,
        wetbulb_c: float,
        economizer: bool,
        refrigerant_severity: float,
        units_tripped: int,
    ) -> PlantOutput:
        """heat_kw: heat the chilled water picks up from CDUs, CRAHs and the electrical room;
        c_chw: chilled-water heat-capacity rate (kW/K) set by the users' valves."""
        o = PlantOutput()
        c_chw = max(c_chw, 1e-3)
        o.chw_pump_kw = pump_kw(c_chw, CHW_PUMP_DP_KPA)
        o.chw_pump_speed = c_chw / (self.rated_kw / CHW_DESIGN_DT_K)
        o.chw_load_kw = heat_kw + o.chw_pump_kw  # pump work ends up in the water
        a = 1.0 - np.exp(-dt_s / CHW_TAU_S)
        self.chw_supply_c += (chw_setpoint_c - self.chw_supply_c) * a
        t_return = self.chw_supply_c + o.chw_load_kw / c_chw
        load_frac = o.chw_load_kw / self.rated_kw
        free_cw = max(wetbulb_c + tower_approach_k(load_frac, 1.0), 0.0)
        t_after_hx = t_return
        if economizer and free_cw + ECONOMIZER_APPROACH_K < t_return:
            t_after_hx = max(self.chw_supply_c, free_cw + ECONOMIZER_APPROACH_K)
        o.free_cooling_kw = c_chw * (t_return - t_after_hx)
        healthy = np.arange(N_CHILLERS) >= units_tripped  # the lead unit trips first
        caps = np.where(healthy, self.unit_kw, 0.0)
        caps[0] *= 1.0 - LOW_REFRIGERANT_CAPACITY * refrigerant_severity
        need = max(c_chw * (t_after_hx - self.chw_supply_c), 0.0)
        n_healthy = int(healthy.sum())
        n_on = 0
        if need > 1e-6 and n_healthy:
            n_on = int(np.clip(np.ceil(need / (STAGE_UP_PLR * self.unit_kw)), 1, n_healthy))
        on = np.zeros(N_CHILLERS, bool)
        on[np.flatnonzero(healthy)[:n_on]] = True
        capacity = float(caps[on].sum())
        q_ch = min(need, capacity)
        if need > capacity:  # not enough chillers: supply water warms up
            self.chw_supply_c = t_after_hx - capacity / c_chw
        o.chiller_load_kw, o.chillers_on = q_ch, n_on
        o.chw_return_c = t_return
        # condenser water: full tower when it also feeds the economizer
        if q_ch > 0 and o.free_cooling_kw > 0:
            speed, cw_target = 1.0, MIN_CW_FOR_CHILLERS_C
        elif q_ch > 0:
            cw_target = max(cw_setpoint_c, MIN_CW_FOR_CHILLERS_C)
            speed = None
        else:
            cw_target = self.chw_supply_c - ECONOMIZER_APPROACH_K
            speed = None if o.free_cooling_kw > 0 else 0.0
        if on.any():
            plr = np.where(on, q_ch / max(capacity, 1e-9), 0.0)
            evap_extra = np.zeros(N_CHILLERS)
            evap_extra[0] = LOW_REFRIGERANT_EVAP_K * refrigerant_severity
            cop = chiller_cop(self.chw_supply_c, self.cw_supply_c, plr, evap_extra)
            unit_load = plr * caps
            o.chiller_kw = float(
                np.sum(np.divide(unit_load, cop, out=np.zeros(N_CHILLERS), where=on))
            )
            o.cop = q_ch / o.chiller_kw if o.chiller_kw > 0 else 0.0
        cw_units = n_on + (o.free_cooling_kw > 0)
        o.cw_pump_kw = pump_kw(cw_units * self.unit_kw * 1.2 / CW_DESIGN_DT_K, CW_PUMP_DP_KPA)
        o.cw_pump_speed = cw_units / (N_CHILLERS + 1)  # one condenser pump per unit and the HX
        o.rejected_kw = q_ch + o.chiller_kw + o.free_cooling_kw + o.cw_pump_kw
        rej_frac = o.rejected_kw / (self.rated_kw * 1.2)
        if speed is None:
            gap = max(cw_target - wetbulb_c, 1e-3)
            speed = float(
                np.clip(
                    (TOWER_DESIGN_APPROACH_K * max(rej_frac, 0.02) / gap)
                    ** (1 / TOWER_SPEED_EXPONENT),
                    TOWER_MIN_SPEED,
                    1.0,
                )
            )
        if speed > 0:  # a tower bypass keeps water from going colder than the target
            cw_eq = max(wetbulb_c + float(tower_approach_k(rej_frac, speed)), cw_target)
        else:
            cw_eq = self.cw_supply_c
        self.cw_supply_c += (cw_eq - self.cw_supply_c) * (1.0 - np.exp(-dt_s / CW_TAU_S))
        o.tower_speed = speed
        o.tower_kw = TOWER_FAN_KW_PER_KW * self.rated_kw * 1.2 * speed**3
        self.out = o
        return o
