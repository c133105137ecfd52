"""Reading and commanding a simulated plant's setpoints as optimizer vectors."""

from __future__ import annotations

import numpy as np

from twin.optimizer.space import SETPOINTS


def read_setpoints(controls) -> np.ndarray:
    """Commanded setpoints of a simulator's Controls as a vector in SETPOINTS order
    (per-unit controls averaged)."""
    return np.array([controls.get(n) for n in SETPOINTS])


def apply_setpoints(controls, values: np.ndarray) -> None:
    """Command every setpoint (per-unit controls: all units) on a simulator's Controls."""
    for name, v in zip(SETPOINTS, values, strict=True):
        controls.set(name, float(round(v)) if name == "economizer_enabled" else float(v))
