"""The decision space: controllable setpoints, the state they act in, and the hard limits.

Setpoints are the plant's controls (their envelopes: domain/plant.py); per-unit controls
(CDU, CRAH) are optimized as one site-wide value. Limits combine the equipment envelopes,
ASHRAE TC9.9 liquid-cooling classes for the loops, a GPU temperature limit with margin, the
CRAH coil approach and a maximum change per control step (ramp rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from domain.plant import COIL_APPROACH_K, ENVELOPES

SETPOINTS: tuple[str, ...] = (
    "chw_supply_setpoint_c",
    "cw_supply_setpoint_c",
    "cdu_supply_setpoint_c",
    "cdu_dp_setpoint_kpa",
    "crah_supply_setpoint_c",
    "economizer_enabled",
)
# uncontrollable state: IT load (offered GPU utilization) and weather
STATE: tuple[str, ...] = ("gpu_util_mean", "gpu_util_p95", "outdoor_drybulb_c", "outdoor_wetbulb_c")
FEATURES: tuple[str, ...] = SETPOINTS + STATE
N_SP = len(SETPOINTS)

# outcomes: the power terms sum to the facility power
POWER_TARGETS: tuple[str, ...] = (
    "chiller_kw",
    "tower_kw",
    "plant_pump_kw",
    "cdu_pump_kw",
    "crah_fan_kw",
    "noncooling_kw",
)
COOLING_TARGETS: tuple[str, ...] = POWER_TARGETS[:-1]
THERMAL_TARGETS: tuple[str, ...] = (
    "gpu_temp_max_c",
    "gpu_temp_p99_c",
    "cdu_supply_max_c",
    "crah_supply_max_c",
)
TARGETS = POWER_TARGETS + THERMAL_TARGETS

# ASHRAE TC9.9 (2021) liquid-cooling classes: maximum supply water temperature, degC
ASHRAE_LIQUID_CLASS_MAX_C: dict[str, float] = {
    "W17": 17.0,
    "W27": 27.0,
    "W32": 32.0,
    "W40": 40.0,
    "W45": 45.0,
    "W+": 60.0,
}

DEFAULT_MAX_STEP: dict[str, float] = {
    "chw_supply_setpoint_c": 2.0,
    "cw_supply_setpoint_c": 2.0,
    "cdu_supply_setpoint_c": 1.5,
    "cdu_dp_setpoint_kpa": 20.0,
    "crah_supply_setpoint_c": 2.0,
    "economizer_enabled": 1.0,
}


@dataclass(frozen=True)
class Constraints:
    """Hard limits every recommendation satisfies."""

    gpu_temp_limit_c: float = 83.0  # 2 K under the H100's 85 degC software slowdown
    gpu_temp_margin_k: float = 2.0  # predicted (upper-quantile) max must stay this far below
    facility_water_class: str = "W32"  # chilled (facility) water supply to the CDUs
    tcs_class: str = "W40"  # CDU secondary (technology cooling system) supply
    coil_approach_k: float = COIL_APPROACH_K  # CRAH coil holds supply air >= chw + this
    max_step: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_STEP))
    min_savings_kw: float = 0.05  # below this, keep the current setpoints

    def __post_init__(self) -> None:
        for name in (self.facility_water_class, self.tcs_class):
            if name not in ASHRAE_LIQUID_CLASS_MAX_C:
                raise ValueError(
                    f"liquid cooling class {name!r}: unknown (known: "
                    f"{sorted(ASHRAE_LIQUID_CLASS_MAX_C)})"
                )
        unknown = set(self.max_step) - set(SETPOINTS)
        if unknown:
            raise ValueError(f"max_step: unknown setpoints {sorted(unknown)}")

    @property
    def gpu_temp_cap_c(self) -> float:
        return self.gpu_temp_limit_c - self.gpu_temp_margin_k

    @property
    def chw_max_c(self) -> float:
        return ASHRAE_LIQUID_CLASS_MAX_C[self.facility_water_class]

    @property
    def tcs_max_c(self) -> float:
        return ASHRAE_LIQUID_CLASS_MAX_C[self.tcs_class]

    def box(
        self,
        current: np.ndarray,
        trained_lo: np.ndarray | None = None,
        trained_hi: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-setpoint [lo, hi] reachable this step: envelope, class limits, ramp and,
        when given, the range the models were trained on (no extrapolation)."""
        lo = np.array([ENVELOPES[n].min for n in SETPOINTS])
        hi = np.array([ENVELOPES[n].max for n in SETPOINTS])
        hi[0] = min(hi[0], self.chw_max_c)
        hi[2] = min(hi[2], self.tcs_max_c)
        step = np.array([self.max_step.get(n, np.inf) for n in SETPOINTS])
        lo, hi = np.maximum(lo, current - step), np.minimum(hi, current + step)
        if trained_lo is not None and trained_hi is not None:
            lo, hi = np.maximum(lo, trained_lo[:N_SP]), np.minimum(hi, trained_hi[:N_SP])
        return lo, hi


def envelope_arrays() -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([ENVELOPES[n].min for n in SETPOINTS]),
        np.array([ENVELOPES[n].max for n in SETPOINTS]),
    )
