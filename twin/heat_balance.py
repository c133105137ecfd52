"""Heat balance per CDU loop, per hall and for the site.

In steady state the heat carried away by liquid (Q = m_dot * c_p * dT, with each loop's
fluid from the site model) plus air equals the electrical power of the IT it cools. A
persistent residual means a sensor fault (stuck or drifting flow/temperature), a bypass,
a leak or fouling. Per CDU the reference is the racks' IT power times their declared
liquid fraction (the template's design capture ratio); per hall and site it is all IT
power against liquid plus air. See docs/twin.md for the air-side methods and thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.rollups import TickInputs
from twin.site_index import SiteIndex
from twin.twin_config import TwinConfig

AIR_DENSITY_KG_M3 = 1.2  # at ~20 degC, sea level
AIR_CP_KJ_KG_K = 1.006
LPM_TO_M3_S = 1.0 / 60000.0


@dataclass
class HeatBalance:
    ids: list[str]
    levels: list[str]
    liquid_kw: np.ndarray
    air_kw: np.ndarray
    it_kw: np.ndarray  # IT electrical power the scope's cooling is expected to remove
    residual_kw: np.ndarray  # (liquid + air) - it
    residual_pct: np.ndarray  # residual / it * 100
    stale_inputs: np.ndarray
    over_threshold: np.ndarray  # |residual| > threshold for the persistence window
    exceeded_ticks: np.ndarray  # consecutive ticks above the threshold
    trend_pct_per_h: np.ndarray  # least-squares slope over the trend window
    reasons: list[str | None]
    time_ms: int


def _sum_by(owner: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(owner, values, n) if owner.size else np.zeros(n)


class HeatBalanceEngine:
    def __init__(self, layout: SiteIndex, config: TwinConfig) -> None:
        self.lay = lay = layout
        self.cfg = config
        self.ids = lay.cdu_ids + lay.hall_ids + [lay.site_id]
        self.levels = ["cdu"] * len(lay.cdu_ids) + ["hall"] * len(lay.hall_ids) + ["site"]
        n = len(self.ids)
        self._run = np.zeros(n, dtype=np.int64)
        k = max(config.trend_window_ticks, 2)
        self._hist_t = np.full(k, np.nan)
        self._hist_r = np.full((k, n), np.nan)
        self._pos = 0
        n_h = len(lay.hall_ids)
        self._hall_has_crah = (
            np.bincount(lay.crah_hall, minlength=n_h) > 0 if n_h else np.zeros(0, bool)
        )
        air_share = 1.0 - lay.rack_liquid_fraction
        self._hall_needs_air = _sum_by(lay.rack_hall, air_share, n_h) > 0

    def compute(
        self, x: TickInputs, rack_kw: np.ndarray, rack_stale: np.ndarray, now_ms: int
    ) -> HeatBalance:
        lay = self.lay
        n_cdu, n_hall = len(lay.cdu_ids), len(lay.hall_ids)
        cdu, crah = lay.blocks["cdu"], lay.blocks["crah"]

        def get(block, name):
            return np.where(block.row(x.present, name), block.row(x.value, name), np.nan)

        def stale(block, names):
            return sum(block.row(x.stale, m).astype(float) for m in names)

        flow, sup, ret = get(cdu, "flow_lpm"), get(cdu, "supply_temp_c"), get(cdu, "return_temp_c")
        m_dot = flow * LPM_TO_M3_S * lay.cdu_rho_kg_m3  # kg/s
        q_liq = m_dot * lay.cdu_cp_kj_kg_k * (ret - sup)  # kW
        it_liq = _sum_by(lay.rack_cdu, rack_kw * lay.rack_liquid_fraction, n_cdu)
        cdu_stale = stale(cdu, ("flow_lpm", "supply_temp_c", "return_temp_c")) + _sum_by(
            lay.rack_cdu, rack_stale, n_cdu
        )

        air = self._crah_air_kw(get)
        crah_stale = stale(
            crah,
            (
                "cooling_kw",
                "fan_power_w",
                "airflow_m3h",
                "supply_air_temp_c",
                "return_air_temp_c",
                "fan_speed_pct",
            ),
        )
        hall_air = _sum_by(lay.crah_hall, air, n_hall)
        hall_air = np.where(
            self._hall_has_crah, hall_air, np.where(self._hall_needs_air, np.nan, 0.0)
        )
        hall_liq = _sum_by(lay.cdu_hall, q_liq, n_hall)
        hall_it = _sum_by(lay.rack_hall, rack_kw, n_hall)
        hall_stale = _sum_by(lay.cdu_hall, cdu_stale, n_hall) + _sum_by(
            lay.crah_hall, crah_stale, n_hall
        )

        liquid = np.concatenate([q_liq, hall_liq, [hall_liq.sum()]])
        air_all = np.concatenate([np.zeros(n_cdu), hall_air, [hall_air.sum()]])
        it = np.concatenate([it_liq, hall_it, [hall_it.sum()]])
        residual = liquid + air_all - it
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = np.where(it > 0, residual / it * 100.0, np.nan)
        exceeded = np.abs(np.nan_to_num(pct, nan=0.0)) > self.cfg.heat_balance_threshold_pct
        self._run = np.where(exceeded, self._run + 1, 0)
        trend = self._trend(now_ms, pct)
        st = np.concatenate([cdu_stale, hall_stale, [hall_stale.sum()]])
        reasons = self._reasons(flow, sup, ret, it_liq, air, hall_air, hall_it, pct)
        return HeatBalance(
            self.ids,
            self.levels,
            liquid,
            air_all,
            it,
            residual,
            pct,
            st,
            self._run >= self.cfg.heat_balance_persist_ticks,
            self._run.copy(),
            trend,
            reasons,
            now_ms,
        )

    def _crah_air_kw(self, get) -> np.ndarray:
        """Heat each CRAH removes from the hall air, by the best method its data allow:
        1. cooling_kw (coil duty) minus fan power, the fan's heat being in the airstream;
        2. rho * c_p * airflow * (return - supply air temperature), airflow reported, or
        3. from rated_airflow_m3h (site model) * fan speed (fan affinity: flow ~ speed)."""
        lay = self.lay
        crah = lay.blocks["crah"]
        duty = get(crah, "cooling_kw") - get(crah, "fan_power_w") / 1e3
        airflow = get(crah, "airflow_m3h")
        airflow = np.where(
            np.isnan(airflow),
            lay.crah_rated_airflow_m3h * get(crah, "fan_speed_pct") / 100.0,
            airflow,
        )
        d_t = get(crah, "return_air_temp_c") - get(crah, "supply_air_temp_c")
        by_flow = AIR_DENSITY_KG_M3 * AIR_CP_KJ_KG_K * airflow / 3600.0 * d_t
        return np.where(np.isnan(duty), by_flow, duty)

    def _trend(self, now_ms: int, pct: np.ndarray) -> np.ndarray:
        k = self._hist_t.size
        self._hist_t[self._pos % k] = now_ms / 3.6e6  # hours
        self._hist_r[self._pos % k] = pct
        self._pos += 1
        m = np.isfinite(self._hist_r) & np.isfinite(self._hist_t)[:, None]
        n = m.sum(axis=0)
        t = np.where(m, self._hist_t[:, None], 0.0)
        r = np.where(m, self._hist_r, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tm = t.sum(0) / n
            rm = r.sum(0) / n
            dt = np.where(m, t - tm, 0.0)
            var = (dt * dt).sum(0)
            slope = (dt * np.where(m, r - rm, 0.0)).sum(0) / var
        return np.where((n >= 3) & (var > 0), slope, np.nan)

    def _reasons(self, flow, sup, ret, it_liq, air, hall_air, hall_it, pct) -> list[str | None]:
        lay = self.lay
        out: list[str | None] = [None] * len(self.ids)
        if not np.isnan(pct).any():
            return out
        for i in np.flatnonzero(np.isnan(pct)):
            if i < len(lay.cdu_ids):
                missing = [
                    m
                    for m, v in (
                        ("flow_lpm", flow[i]),
                        ("supply_temp_c", sup[i]),
                        ("return_temp_c", ret[i]),
                    )
                    if np.isnan(v)
                ]
                if missing:
                    out[i] = f"no {missing} reading from {lay.cdu_ids[i]}"
                elif np.isnan(it_liq[i]):
                    out[i] = "IT power unknown for a rack on this loop (PSU input_power_w missing)"
                else:
                    out[i] = "no IT load on this loop"
                continue
            h = i - len(lay.cdu_ids)
            halls = range(len(lay.hall_ids)) if h >= len(lay.hall_ids) else [h]
            parts = []
            for hh in halls:
                if np.isnan(hall_air[hh]):
                    crahs = [
                        lay.crah_ids[c]
                        for c in np.flatnonzero(lay.crah_hall == hh)
                        if np.isnan(air[c])
                    ]
                    parts.append(
                        f"air-side heat unknown for {crahs or lay.hall_ids[hh]} "
                        "(needs cooling_kw with fan_power_w, airflow_m3h, or "
                        "rated_airflow_m3h in the site model with fan_speed_pct)"
                    )
                if np.isnan(hall_it[hh]):
                    parts.append(
                        f"IT power unknown in {lay.hall_ids[hh]} (PSU input_power_w missing)"
                    )
            cdus = [
                lay.cdu_ids[c]
                for c in range(len(lay.cdu_ids))
                if lay.cdu_hall[c] in halls and np.isnan(pct[c]) and out[c]
            ]
            if cdus:
                parts.append(f"liquid-side heat unknown for {cdus}")
            out[i] = "; ".join(parts) or "no IT load"
        return out
