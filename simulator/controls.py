"""Setpoints an operator or the optimizer can change, their envelopes and their dynamics.

A `set` is validated against the envelope (a value outside it raises ValueError naming the
control) and becomes the *commanded* value. The *active* setpoint the local controllers
chase moves towards it at the envelope's ramp rate, as plant controllers ramp setpoint
changes to avoid upsetting chillers and loops; the physical temperatures then follow with
their own lags (see plant.py, liquid.py, air.py). Scope "site" controls have one value;
"cdu" and "crah" controls have one per unit and `set` without a device sets them all.
"""

from __future__ import annotations

import numpy as np

from domain.plant import ENVELOPES, Envelope
from simulator.layout import SiteLayout


class Controls:
    def __init__(
        self,
        layout: SiteLayout,
        chw_supply_c: float,
        cw_supply_c: float,
        cdu_supply_c: np.ndarray,
        crah_supply_c: np.ndarray,
        cdu_dp_kpa: float,
        cdu_dt_k: float,
    ) -> None:
        self.layout = layout
        sizes = {"site": 1, "cdu": layout.n_cdu, "crah": layout.n_crah}
        init = {
            "chw_supply_setpoint_c": chw_supply_c,
            "cw_supply_setpoint_c": cw_supply_c,
            "cdu_supply_setpoint_c": cdu_supply_c,
            "cdu_dp_setpoint_kpa": cdu_dp_kpa,
            "cdu_dt_setpoint_k": cdu_dt_k,
            "crah_supply_setpoint_c": crah_supply_c,
            "economizer_enabled": 1.0,
        }
        self.commanded: dict[str, np.ndarray] = {}
        for name, env in ENVELOPES.items():
            v = np.broadcast_to(np.asarray(init[name], float), (sizes[env.scope],))
            self.commanded[name] = np.clip(v, env.min, env.max).astype(float)
        self.active = {k: v.copy() for k, v in self.commanded.items()}
        self._devices = {"cdu": layout.cdu_ids, "crah": layout.crah_ids}

    @staticmethod
    def envelopes() -> dict[str, Envelope]:
        return dict(ENVELOPES)

    def _slot(self, name: str, device: str | None) -> slice | int:
        if name not in ENVELOPES:
            raise ValueError(f"control {name!r}: unknown (known: {sorted(ENVELOPES)})")
        scope = ENVELOPES[name].scope
        if device is None:
            return slice(None)
        if scope == "site":
            raise ValueError(f"control {name!r} is site-wide; it takes no device")
        try:
            return self._devices[scope].index(device)
        except ValueError:
            raise ValueError(f"control {name!r}: no {scope} {device!r} in this site") from None

    def set(self, name: str, value: float, device: str | None = None) -> None:
        """Command a setpoint. Raises ValueError outside the envelope."""
        slot = self._slot(name, device)
        env = ENVELOPES[name]
        if not (env.min <= float(value) <= env.max) or not np.isfinite(value):
            raise ValueError(
                f"control {name!r}: {value} {env.unit} is outside its envelope "
                f"[{env.min}, {env.max}]"
            )
        self.commanded[name][slot] = float(value)

    def get(self, name: str, device: str | None = None, active: bool = False) -> float:
        """Commanded (or, with active=True, currently active) value; site-wide controls
        and per-unit controls without a device give the mean over units."""
        slot = self._slot(name, device)
        src = self.active if active else self.commanded
        return float(np.mean(src[name][slot]))

    def snapshot(self) -> dict[str, float | dict[str, float]]:
        """Every commanded setpoint: a number for site controls, {device: value} otherwise."""
        out: dict[str, float | dict[str, float]] = {}
        for name, env in ENVELOPES.items():
            v = self.commanded[name]
            out[name] = (
                float(v[0])
                if env.scope == "site"
                else dict(zip(self._devices[env.scope], v.tolist(), strict=True))
            )
        return out

    def step(self, dt_s: float) -> None:
        for name, env in ENVELOPES.items():
            a, c = self.active[name], self.commanded[name]
            limit = env.ramp_per_min * dt_s / 60.0
            a += np.clip(c - a, -limit, limit)

    def value(self, name: str) -> np.ndarray:
        """Active setpoint array for the physics."""
        return self.active[name]
