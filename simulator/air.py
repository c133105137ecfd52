"""CRAH units: fans, coils and the hall air they serve.

The air heat of a hall (rack air-side heat plus fan heat) is shared by its running
CRAHs. Each moves up to its rated airflow, sized for its rated capacity at a
12 K air temperature rise; fan speed follows the airflow the load needs (minimum 30 %),
fan power follows the affinity law P = P_rated s^3. Return air = supply + Q / (rho c_p V).
The coil holds the supply-air setpoint while chilled water is cold enough (coil approach
3 K); otherwise supply air floats up. When running fans cannot move the airflow the hall
needs, hot air recirculates and rack inlet temperature rises.
"""

from __future__ import annotations

import numpy as np

from domain.plant import COIL_APPROACH_K

AIR_DENSITY_KG_M3 = 1.19
AIR_CP_KJ_KG_K = 1.006
DESIGN_DT_K = 12.0
MIN_FAN_SPEED = 0.3
SUPPLY_TAU_S = 60.0
RECIRCULATION_K = 10.0  # rack inlet rise when airflow is entirely missing


class CrahModel:
    def __init__(
        self,
        rated_kw: np.ndarray,
        fan_rated_w: np.ndarray,
        crah_hall: np.ndarray,
        n_hall: int,
        supply_setpoint_c: np.ndarray,
    ) -> None:
        n = len(rated_kw)
        self.rated_kw, self.fan_rated_w = rated_kw, fan_rated_w
        self.crah_hall, self.n_hall = crah_hall, n_hall
        self.rated_m3s = rated_kw / (AIR_DENSITY_KG_M3 * AIR_CP_KJ_KG_K * DESIGN_DT_K)
        self.supply_c = supply_setpoint_c.copy()
        self.return_c = supply_setpoint_c + 8.0
        self.fan_speed = np.full(n, MIN_FAN_SPEED)
        self.fan_w = fan_rated_w * MIN_FAN_SPEED**3
        self.airflow_m3s = self.rated_m3s * MIN_FAN_SPEED
        self.load_kw = np.zeros(n)
        self.coil_valve = np.zeros(n)
        self.hall_inlet_c = np.full(n_hall, 22.0)

    def step(
        self,
        dt_s: float,
        hall_heat_kw: np.ndarray,
        supply_setpoint_c: np.ndarray,
        chw_supply_c: float,
        failed: np.ndarray,
        fan_power_factor: np.ndarray,
        slip: np.ndarray | None = None,
    ) -> None:
        """hall_heat_kw excludes fan heat, which is added here (fans sit in the airstream).
        `slip` (belt drives, held-out fault of issue 21): the impeller turns (1 - slip) of
        the motor speed, so the unit runs its motor 1/(1 - slip) faster for its share of
        the airflow and draws P_rated s^3 (1 - slip)^2 (the fan's load at impeller speed)."""
        keep = np.ones_like(self.rated_m3s) if slip is None else 1.0 - np.clip(slip, 0.0, 0.95)
        running = ~failed
        capacity_m3s = np.bincount(
            self.crah_hall, np.where(running, self.rated_m3s, 0.0), self.n_hall
        )
        floor_c = chw_supply_c + COIL_APPROACH_K
        target = np.maximum(supply_setpoint_c, floor_c)
        self.supply_c = self.supply_c + (target - self.supply_c) * (
            1.0 - np.exp(-dt_s / SUPPLY_TAU_S)
        )
        # fan heat depends on speed; one fixed-point pass with last step's fan power
        fan_heat_kw = np.bincount(self.crah_hall, self.fan_w, self.n_hall) / 1000.0
        total_kw = hall_heat_kw + fan_heat_kw
        needed_m3s = total_kw / (AIR_DENSITY_KG_M3 * AIR_CP_KJ_KG_K * DESIGN_DT_K)
        ratio = np.divide(
            needed_m3s, capacity_m3s, out=np.full(self.n_hall, np.inf), where=capacity_m3s > 0
        )
        speed = np.clip(ratio[self.crah_hall] / keep, MIN_FAN_SPEED, 1.0)
        self.fan_speed = np.where(running, speed, 0.0)
        self.fan_w = np.where(
            running, self.fan_rated_w * self.fan_speed**3 * keep**2 * fan_power_factor, 0.0
        )
        self.airflow_m3s = self.rated_m3s * self.fan_speed * keep
        flow_hall = np.bincount(self.crah_hall, self.airflow_m3s, self.n_hall)
        fan_heat_kw = np.bincount(self.crah_hall, self.fan_w, self.n_hall) / 1000.0
        total_kw = hall_heat_kw + fan_heat_kw
        # running units share the hall's heat in proportion to their airflow
        share = np.divide(
            self.airflow_m3s,
            flow_hall[self.crah_hall],
            out=np.zeros_like(self.airflow_m3s),
            where=flow_hall[self.crah_hall] > 0,
        )
        self.load_kw = total_kw[self.crah_hall] * share
        rise = np.divide(
            self.load_kw,
            AIR_DENSITY_KG_M3 * AIR_CP_KJ_KG_K * self.airflow_m3s,
            out=np.zeros_like(self.load_kw),
            where=self.airflow_m3s > 0,
        )
        hall_return = np.divide(
            np.bincount(self.crah_hall, (self.supply_c + rise) * self.airflow_m3s, self.n_hall),
            flow_hall,
            out=np.full(self.n_hall, 35.0),
            where=flow_hall > 0,
        )
        # a stopped unit reads still hall air on both sensors; its coil warms up
        self.return_c = np.where(running, self.supply_c + rise, hall_return[self.crah_hall])
        self.supply_c = np.where(
            running,
            self.supply_c,
            self.supply_c + (self.return_c - self.supply_c) * (1.0 - np.exp(-dt_s / SUPPLY_TAU_S)),
        )
        self.coil_valve = np.clip(self.load_kw / self.rated_kw, 0.0, 1.0)
        missing = np.clip(
            1.0 - np.divide(flow_hall, needed_m3s, out=np.ones(self.n_hall), where=needed_m3s > 0),
            0.0,
            1.0,
        )
        mean_supply = np.divide(
            np.bincount(self.crah_hall, self.supply_c * running, self.n_hall),
            np.bincount(self.crah_hall, running.astype(float), self.n_hall),
            out=np.full(self.n_hall, float(np.mean(self.supply_c))),
            where=np.bincount(self.crah_hall, running.astype(float), self.n_hall) > 0,
        )
        self.hall_inlet_c = mean_supply + RECIRCULATION_K * missing

    @property
    def airflow_m3h(self) -> np.ndarray:
        return self.airflow_m3s * 3600.0

    @property
    def removed_kw(self) -> np.ndarray:
        """Heat each coil takes from the air: rho c_p V (T_return - T_supply)."""
        return (
            AIR_DENSITY_KG_M3 * AIR_CP_KJ_KG_K * self.airflow_m3s * (self.return_c - self.supply_c)
        )
