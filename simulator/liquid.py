"""CDU liquid loops: pump and loop hydraulics, the plate heat exchanger, loop inertia.

Hydraulics: the loop is a quadratic resistance, dp = R Q^2, sized so that the nominal
flow passes at the design differential pressure. The pump curve is H = H0 w s^2 - a Q^2
(speed s, wear factor w <= 1), so Q = s sqrt(H0 w / (R + a)). The CDU's controller sets
the speed for the flow that holds the secondary delta-T setpoint at the current heat load,
never below the flow of the minimum differential-pressure setpoint. Electrical power is
Q H / eta with eta falling as the pump wears (internal recirculation).
Heat exchanger: counterflow, effectiveness-NTU; UA depends on both flows (film
coefficients ~ flow^0.7) and is sized for a 2 K approach at rated load and design flows;
a primary (facility water) valve sets the primary flow that holds the secondary supply
setpoint, within its range. Loop: one lumped water mass,
M c dT_return/dt = Q_in - Q_hx, solved exactly per step. Q = m_dot c_p dT throughout.
"""

from __future__ import annotations

import numpy as np

DP_DESIGN_KPA = 100.0  # secondary loop differential pressure at nominal flow
DP_MIN_DEFAULT_KPA = 9.0  # minimum dp setpoint: 30 % of nominal flow
DT_DEFAULT_K = 6.0  # secondary delta-T setpoint
SHUTOFF_HEAD_RATIO = 1.797  # H0 / dp_design: design point at 80 % speed
INTERNAL_LOSS_RATIO = 0.15  # a Q_nom^2 / dp_design
PUMP_EFFICIENCY = 0.65  # wire-to-water, new pump
# Plate exchanger rated for a 2 K approach (secondary supply - facility supply) at rated
# load with both flows at design (equal heat-capacity rates): vendors quote 2-5 K
HX_DESIGN_APPROACH_K = 2.0
# film coefficient ~ flow^0.7 on each side (plate exchangers: Re^0.6-0.8); at design the
# two sides share the resistance equally, 1/UA = sum of side resistances (+ fouling)
HX_FLOW_EXPONENT = 0.7
PRIMARY_MAX_RATIO = 1.5  # max primary heat-capacity rate / nominal secondary
PRIMARY_MIN_RATIO = 0.02  # valve leakage / minimum position
LOOP_LITRES_PER_KW = 0.3  # secondary loop water (CDU, piping, manifolds, cold plates)
MIN_FLOW_FRACTION = 0.03  # thermosiphon / check-valve leakage with the pump stopped
PUMP_TAU_S = 5.0
MIN_SPEED = 0.2
WATER_CP_KJ_KG_K = 4.186  # facility (primary) side is water
WATER_DENSITY_KG_M3 = 997.0


def counterflow_effectiveness(ntu: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """epsilon(NTU, Cr) of a counterflow exchanger (Incropera, Table 11.3)."""
    cr = np.clip(cr, 0.0, 1.0)
    near_one = np.abs(1.0 - cr) < 1e-6
    e = np.exp(-ntu * (1.0 - cr))
    general = (1.0 - e) / np.where(near_one, 1.0, 1.0 - cr * e)
    return np.where(near_one, ntu / (1.0 + ntu), general)


def hx_ua(
    c_s: np.ndarray, c_p: np.ndarray, ua_design: np.ndarray, c_design: np.ndarray
) -> np.ndarray:
    """UA (kW/K) at heat-capacity rates c_s, c_p: each side's film resistance scales as
    (C_design / C)^n and carries half of 1/UA_design at design flow."""
    n = HX_FLOW_EXPONENT
    c_s, c_p = np.maximum(c_s, 1e-9), np.maximum(c_p, 1e-9)
    return ua_design / (0.5 * (c_design / c_s) ** n + 0.5 * (c_design / c_p) ** n)


def hx_conductance(
    c_s: np.ndarray, c_p: np.ndarray, ua_design: np.ndarray, c_design: np.ndarray
) -> np.ndarray:
    """k = eps * C_min, so that Q = k (T_secondary_return - T_primary_supply); kW/K."""
    c_min, c_max = np.minimum(c_s, c_p), np.maximum(c_s, c_p)
    ua = hx_ua(c_s, c_p, ua_design, c_design)
    return counterflow_effectiveness(ua / c_min, c_min / c_max) * c_min


class CduModel:
    def __init__(
        self,
        rated_kw: np.ndarray,
        nominal_flow_lpm: np.ndarray,
        cp: np.ndarray,
        rho: np.ndarray,
        supply_setpoint_c: np.ndarray,
        facility_supply_c: float,
        dp_design_kpa: float = DP_DESIGN_KPA,
    ) -> None:
        n = len(rated_kw)
        self.rated_kw, self.q_nom, self.cp, self.rho = rated_kw, nominal_flow_lpm, cp, rho
        self.r_loop = dp_design_kpa / nominal_flow_lpm**2  # kPa per (L/min)^2
        self.h0 = SHUTOFF_HEAD_RATIO * dp_design_kpa
        self.a_int = INTERNAL_LOSS_RATIO * dp_design_kpa / nominal_flow_lpm**2
        # kW/K at design flows: with C_p = C_s the temperature difference is the same all
        # along a counterflow exchanger, so Q/UA = the approach at rated load
        self.ua0 = rated_kw / HX_DESIGN_APPROACH_K
        self.c_s_nom = nominal_flow_lpm / 60000.0 * rho * cp
        self.mass_heat_kj_k = rated_kw * LOOP_LITRES_PER_KW * rho / 1000.0 * cp
        self.speed = np.full(n, 0.8)
        self.c_p = 0.3 * self.c_s_nom
        self.return_c = supply_setpoint_c + 5.0
        self.supply_c = supply_setpoint_c.copy()
        self.primary_supply_c = np.full(n, facility_supply_c)
        self.primary_return_c = self.return_c.copy()
        self.flow_lpm = nominal_flow_lpm.copy()
        self.dp_kpa = np.full(n, dp_design_kpa)
        self.pump_w = np.zeros(n)
        self.pump_power_factor = np.ones(n)  # part-to-part spread of pump efficiency
        self.heat_removed_kw = np.zeros(n)
        self.heat_in_kw = np.zeros(n)
        self.c_s = self.c_s_nom.copy()

    def hydraulics(
        self,
        dt_s: float,
        dp_min_kpa: np.ndarray,
        dt_setpoint_k: np.ndarray,
        heat_kw: np.ndarray,
        wear: np.ndarray,
    ) -> None:
        """Pump speed control: the flow that holds the secondary delta-T setpoint at this
        heat load, but never less than the flow the minimum differential pressure gives;
        then flow, dp and electrical power from the pump and loop curves."""
        w = np.maximum(wear, 0.0)
        q_dt = np.maximum(heat_kw, 0.0) / (self.rho * self.cp * dt_setpoint_k) * 60000.0
        q_set = np.maximum(np.sqrt(dp_min_kpa / self.r_loop), q_dt)
        needed = q_set / np.sqrt(np.maximum(self.h0 * w, 1e-12) / (self.r_loop + self.a_int))
        target = np.clip(needed, MIN_SPEED, 1.0)
        self.speed += (target - self.speed) * (1.0 - np.exp(-dt_s / PUMP_TAU_S))
        self.speed = np.where(w > 1e-9, self.speed, 0.0)  # a seized pump stops
        flow = self.speed * np.sqrt(self.h0 * w / (self.r_loop + self.a_int))
        self.flow_lpm = np.maximum(flow, MIN_FLOW_FRACTION * self.q_nom)
        self.dp_kpa = self.r_loop * self.flow_lpm**2
        head_kpa = (self.r_loop + self.a_int) * flow**2
        eta = PUMP_EFFICIENCY * (0.4 + 0.6 * np.clip(w, 0.0, 1.0))
        self.pump_w = self.pump_power_factor * np.divide(
            flow / 60000.0 * head_kpa * 1000.0, eta, out=np.zeros_like(flow), where=eta > 0
        )
        self.c_s = self.flow_lpm / 60000.0 * self.rho * self.cp

    def _valve_for(
        self, q_kw: np.ndarray, return_c: np.ndarray, ua: np.ndarray, facility_supply_c: np.ndarray
    ) -> np.ndarray:
        """Primary heat-capacity rate at which the exchanger removes q_kw from water
        returning at return_c (bisection over the valve's range)."""
        dt_in = np.maximum(return_c - facility_supply_c, 1e-6)
        lo = np.log(PRIMARY_MIN_RATIO * self.c_s_nom)
        hi = np.log(PRIMARY_MAX_RATIO * self.c_s_nom)
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            short = hx_conductance(self.c_s, np.exp(mid), ua, self.c_s_nom) * dt_in < q_kw
            lo, hi = np.where(short, mid, lo), np.where(short, hi, mid)
        return np.exp(0.5 * (lo + hi))

    def thermal(
        self,
        dt_s: float,
        heat_in_kw: np.ndarray,
        supply_setpoint_c: np.ndarray,
        facility_supply_c: float | np.ndarray,
        ua_factor: np.ndarray,
    ) -> None:
        """Valve, exchanger and loop temperatures for this step's heat input.

        While the valve has range, the supply-temperature controller holds the setpoint
        and the loop relaxes as M c dT/dt = Q_in - C_s (T_return - T_set). Where the valve
        would have to go past fully open (or shut), it stays there and the loop relaxes
        against the exchanger instead: M c dT/dt = Q_in - k (T_return - T_facility).
        Both solved exactly over the step, so any step size is stable."""
        t_ps = np.broadcast_to(np.asarray(facility_supply_c, float), heat_in_kw.shape)
        self.heat_in_kw = heat_in_kw
        ua = self.ua0 * ua_factor
        m = self.mass_heat_kj_k

        def relax(rate_kw_k, t_ref):  # exact first-order step towards equilibrium
            t_eq = t_ref + heat_in_kw / rate_kw_k
            return t_eq + (self.return_c - t_eq) * np.exp(-dt_s * rate_kw_k / m)

        held = relax(self.c_s, supply_setpoint_c)
        q_held = self.c_s * (held - supply_setpoint_c)
        k_max = hx_conductance(self.c_s, PRIMARY_MAX_RATIO * self.c_s_nom, ua, self.c_s_nom)
        k_min = hx_conductance(self.c_s, PRIMARY_MIN_RATIO * self.c_s_nom, ua, self.c_s_nom)
        cap_max = k_max * np.maximum(held - t_ps, 0.0)
        cap_min = k_min * np.maximum(held - t_ps, 0.0)
        wide_open, shut = q_held > cap_max, q_held < cap_min
        k = np.where(wide_open, k_max, np.where(shut, k_min, 0.0))
        free = relax(np.where(k > 0, k, 1.0), t_ps)
        self.return_c = np.where(k > 0, free, held)
        q_hx = np.where(k > 0, k * (self.return_c - t_ps), q_held)
        self.c_p = np.where(
            wide_open,
            PRIMARY_MAX_RATIO * self.c_s_nom,
            np.where(
                shut,
                PRIMARY_MIN_RATIO * self.c_s_nom,
                self._valve_for(q_hx, self.return_c, ua, t_ps),
            ),
        )
        self.heat_removed_kw = q_hx
        self.supply_c = self.return_c - q_hx / self.c_s
        self.primary_supply_c = t_ps.copy()
        self.primary_return_c = t_ps + q_hx / self.c_p

    @property
    def primary_flow_lpm(self) -> np.ndarray:
        return self.c_p / (WATER_DENSITY_KG_M3 * WATER_CP_KJ_KG_K) * 60000.0

    @property
    def approach_k(self) -> np.ndarray:
        """Closest approach of the counterflow exchanger (smaller terminal difference)."""
        return np.minimum(
            self.return_c - self.primary_return_c, self.supply_c - self.primary_supply_c
        )
