"""Rollups per rack, row, hall, site (and CDU loop), computed vectorized each tick.

All scopes of a site share one index: racks, then rows, halls, the site, then CDUs, so
one tick is one set of equal-length column arrays (persisted as one Arrow insert).
Rules: sums (power) need every input present, else NaN (unknown) rather than a
silently low figure; statistics (max/mean temperature) use the inputs present and
count the missing ones; stale inputs are used but counted in `stale_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.site_index import SiteIndex

# NVML clock-throttle reasons that mean a GPU is held back (power cap, HW slowdown,
# SW/HW thermal, power brake). Idle, application clocks, sync boost are not throttling.
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
LEVELS = ("rack", "row", "hall", "site", "cdu")
COLUMNS = (
    "power_kw",
    "energy_kwh",
    "gpu_power_kw",
    "gpu_temp_max_c",
    "gpu_temp_mean_c",
    "coolant_supply_c",
    "coolant_return_c",
    "coolant_flow_lpm",
    "throttled_gpus",
    "gpus_reporting",
    "stale_inputs",
    "missing_inputs",
    "cdu_pump_kw",
    "crah_fan_kw",
    "heat_liquid_kw",
    "heat_air_kw",
    "heat_it_kw",
    "hb_residual_kw",
    "hb_residual_pct",
)
CDU_INPUTS = ("supply_temp_c", "return_temp_c", "flow_lpm", "pump_power_w")
CRAH_INPUTS = (
    "fan_power_w",
    "cooling_kw",
    "airflow_m3h",
    "supply_air_temp_c",
    "return_air_temp_c",
    "fan_speed_pct",
)
UNITS = {c: c.rsplit("_", 1)[-1] for c in COLUMNS} | {
    "throttled_gpus": "count",
    "gpus_reporting": "count",
    "stale_inputs": "count",
    "missing_inputs": "count",
    "hb_residual_pct": "%",
}


class ScopeIndex:
    """Every rollup scope of a site: ids, levels, and slices per level."""

    def __init__(self, layout: SiteIndex) -> None:
        self.layout = lay = layout
        parts = [
            ("rack", lay.rack_ids),
            ("row", lay.row_ids),
            ("hall", lay.hall_ids),
            ("site", [lay.site_id]),
            ("cdu", lay.cdu_ids),
        ]
        self.ids: list[str] = []
        self.levels: list[str] = []
        self.slices: dict[str, slice] = {}
        for level, ids in parts:
            self.slices[level] = slice(len(self.ids), len(self.ids) + len(ids))
            self.ids += ids
            self.levels += [level] * len(ids)
        self.index = {s: i for i, s in enumerate(self.ids)}
        self.n = len(self.ids)


def seg_reduce(
    ufunc: np.ufunc, values: np.ndarray, start: np.ndarray, count: np.ndarray, empty: float
) -> np.ndarray:
    """ufunc over each contiguous segment; `empty` for segments without items."""
    out = np.full(start.size, empty, dtype=float)
    nz = count > 0
    if nz.any():
        out[nz] = ufunc.reduceat(values, start[nz])
    return out


def _sum_by(owner: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sum per owner; NaN in an input makes its owner's sum NaN."""
    return np.bincount(owner, values, n) if owner.size else np.zeros(n)


@dataclass
class TickInputs:
    """Views of the live state the rollups and heat balance read (all per device)."""

    value: np.ndarray  # flat slot arrays
    present: np.ndarray
    stale: np.ndarray
    time_ms: np.ndarray


class RollupEngine:
    def __init__(self, layout: SiteIndex, scope: ScopeIndex, max_gap_s: float) -> None:
        self.lay = layout
        self.scope = scope
        self.max_gap_s = max_gap_s
        self._prev_tick_ms: int | None = None
        self._prev_rack_kw: np.ndarray | None = None
        self._prev_psu_e = np.full(len(layout.psu_ids), np.nan)
        self._prev_psu_t = np.zeros(len(layout.psu_ids), dtype=np.int64)

    def compute(self, x: TickInputs, now_ms: int) -> dict[str, np.ndarray]:
        lay, sc = self.lay, self.scope
        out = {c: np.full(sc.n, np.nan) for c in COLUMNS}
        psu, gpu, cdu = lay.blocks["psu"], lay.blocks["gpu"], lay.blocks["cdu"]

        def metric(block, name, flat):
            return block.row(flat, name)

        # -- racks: PSU input power is the IT input power of the rack.
        p_in = metric(psu, "input_power_w", x.value)
        p_ok = metric(psu, "input_power_w", x.present)
        p_stale = metric(psu, "input_power_w", x.stale)
        ps, pc = lay.rack_psu_start, lay.rack_psu_count
        rack_missing = seg_reduce(np.add, (~p_ok).astype(float), ps, pc, 0.0)
        rack_kw = np.where(
            rack_missing == 0,
            seg_reduce(np.add, np.where(p_ok, p_in, 0.0), ps, pc, 0.0) / 1e3,
            np.nan,
        )
        rack_stale = seg_reduce(np.add, p_stale.astype(float), ps, pc, 0.0)

        gs, gc = lay.rack_gpu_start, lay.rack_gpu_count
        t_ok = metric(gpu, "gpu_temp_c", x.present)
        temp = np.where(t_ok, metric(gpu, "gpu_temp_c", x.value), np.nan)
        t_sum = seg_reduce(np.add, np.where(t_ok, temp, 0.0), gs, gc, 0.0)
        t_n = seg_reduce(np.add, t_ok.astype(float), gs, gc, 0.0)
        t_max = seg_reduce(np.fmax, temp, gs, gc, np.nan)
        w_ok = metric(gpu, "power_w", x.present)
        w_missing = seg_reduce(np.add, (~w_ok).astype(float), gs, gc, 0.0)
        gpu_kw = np.where(
            w_missing == 0,
            seg_reduce(np.add, np.where(w_ok, metric(gpu, "power_w", x.value), 0.0), gs, gc, 0.0)
            / 1e3,
            np.nan,
        )
        reasons = np.where(
            metric(gpu, "throttle_reasons", x.present),
            metric(gpu, "throttle_reasons", x.value),
            0.0,
        )
        throttled = (reasons.astype(np.int64) & THROTTLE_MASK) != 0
        n_throttled = seg_reduce(np.add, throttled.astype(float), gs, gc, 0.0)
        g_stale = seg_reduce(
            np.add,
            (metric(gpu, "gpu_temp_c", x.stale) | metric(gpu, "power_w", x.stale)).astype(float),
            gs,
            gc,
            0.0,
        )
        g_fresh = seg_reduce(
            np.add, (t_ok & ~metric(gpu, "gpu_temp_c", x.stale)).astype(float), gs, gc, 0.0
        )
        rack_energy = self._rack_energy(x, rack_kw, now_ms)

        # -- CDU loops: coolant temperatures and flow, pump power.
        sup = np.where(
            metric(cdu, "supply_temp_c", x.present), metric(cdu, "supply_temp_c", x.value), np.nan
        )
        ret = np.where(
            metric(cdu, "return_temp_c", x.present), metric(cdu, "return_temp_c", x.value), np.nan
        )
        flow = np.where(
            metric(cdu, "flow_lpm", x.present), metric(cdu, "flow_lpm", x.value), np.nan
        )
        pump_kw = (
            np.where(
                metric(cdu, "pump_power_w", x.present), metric(cdu, "pump_power_w", x.value), np.nan
            )
            / 1e3
        )

        racks = sc.slices["rack"]
        out["power_kw"][racks] = rack_kw
        out["energy_kwh"][racks] = rack_energy
        out["gpu_power_kw"][racks] = gpu_kw
        out["gpu_temp_max_c"][racks] = t_max
        out["gpu_temp_mean_c"][racks] = np.where(t_n > 0, t_sum / np.maximum(t_n, 1), np.nan)
        out["coolant_supply_c"][racks] = sup[lay.rack_cdu] if sup.size else np.nan
        out["coolant_return_c"][racks] = ret[lay.rack_cdu] if ret.size else np.nan
        out["throttled_gpus"][racks] = n_throttled
        out["gpus_reporting"][racks] = g_fresh
        out["stale_inputs"][racks] = rack_stale + g_stale
        out["missing_inputs"][racks] = rack_missing + (gc - t_n)

        # -- rows, halls, site: reductions over contiguous rack ranges.
        rack_cols = {
            "power_kw": rack_kw,
            "energy_kwh": rack_energy,
            "gpu_power_kw": gpu_kw,
            "throttled_gpus": n_throttled,
            "gpus_reporting": g_fresh,
            "stale_inputs": rack_stale + g_stale,
            "missing_inputs": rack_missing + (gc - t_n),
        }
        groups = {
            "row": (lay.row_rack_start, lay.row_rack_count),
            "hall": (lay.hall_rack_start, lay.hall_rack_count),
            "site": (np.zeros(1, np.int64), np.array([len(lay.rack_ids)])),
        }
        for level, (start, count) in groups.items():
            sl = sc.slices[level]
            for col, vals in rack_cols.items():
                out[col][sl] = seg_reduce(np.add, vals, start, count, 0.0)
            out["gpu_temp_max_c"][sl] = seg_reduce(np.fmax, t_max, start, count, np.nan)
            n = seg_reduce(np.add, t_n, start, count, 0.0)
            total = seg_reduce(np.add, t_sum, start, count, 0.0)
            out["gpu_temp_mean_c"][sl] = np.where(n > 0, total / np.maximum(n, 1), np.nan)

        # Coolant: a row reads its own loop; halls and the site a flow-weighted mean.
        row_cdu = np.array(
            [
                lay.rack_cdu[s] if c else -1
                for s, c in zip(lay.row_rack_start, lay.row_rack_count, strict=True)
            ]
        )
        for col, temps in (("coolant_supply_c", sup), ("coolant_return_c", ret)):
            out[col][sc.slices["row"]] = (
                np.where(row_cdu >= 0, temps[row_cdu], np.nan) if temps.size else np.nan
            )
            w = _sum_by(lay.cdu_hall, flow * temps, len(lay.hall_ids))
            f = _sum_by(lay.cdu_hall, flow, len(lay.hall_ids))
            out[col][sc.slices["hall"]] = np.where(f > 0, w / np.where(f > 0, f, 1), np.nan)
            total = flow.sum()  # NaN when any loop is unknown: no partial site mean
            out[col][sc.slices["site"]] = (flow * temps).sum() / total if total > 0 else np.nan
            out[col][sc.slices["cdu"]] = temps
        out["coolant_flow_lpm"][sc.slices["cdu"]] = flow
        out["coolant_flow_lpm"][sc.slices["hall"]] = _sum_by(lay.cdu_hall, flow, len(lay.hall_ids))
        out["coolant_flow_lpm"][sc.slices["site"]] = flow.sum()
        out["cdu_pump_kw"][sc.slices["cdu"]] = pump_kw
        out["cdu_pump_kw"][sc.slices["hall"]] = _sum_by(lay.cdu_hall, pump_kw, len(lay.hall_ids))
        out["cdu_pump_kw"][sc.slices["site"]] = pump_kw.sum()
        crah = lay.blocks["crah"]
        fan_kw = (
            np.where(crah.row(x.present, "fan_power_w"), crah.row(x.value, "fan_power_w"), np.nan)
            / 1e3
        )
        out["crah_fan_kw"][sc.slices["hall"]] = _sum_by(lay.crah_hall, fan_kw, len(lay.hall_ids))
        out["crah_fan_kw"][sc.slices["site"]] = fan_kw.sum()
        out["power_kw"][sc.slices["cdu"]] = _sum_by(lay.rack_cdu, rack_kw, len(lay.cdu_ids))

        # Facility inputs count too: a hall's figures use its CDUs' and CRAHs' readings.
        cdu_stale = sum((cdu.row(x.stale, m).astype(float) for m in CDU_INPUTS), np.zeros(cdu.n))
        crah_stale = sum(
            (crah.row(x.stale, m).astype(float) for m in CRAH_INPUTS), np.zeros(crah.n)
        )
        n_h = len(lay.hall_ids)
        rack_all = rack_stale + g_stale
        out["stale_inputs"][sc.slices["cdu"]] = cdu_stale + _sum_by(
            lay.rack_cdu, rack_all, len(lay.cdu_ids)
        )
        out["stale_inputs"][sc.slices["hall"]] += _sum_by(lay.cdu_hall, cdu_stale, n_h) + _sum_by(
            lay.crah_hall, crah_stale, n_h
        )
        out["stale_inputs"][sc.slices["site"]] += np.sum(cdu_stale) + np.sum(crah_stale)
        return out

    def _rack_energy(self, x: TickInputs, rack_kw: np.ndarray, now_ms: int) -> np.ndarray:
        """IT energy per rack since the previous tick: PSU counter increments where every
        PSU of the rack has them (a reset takes power x time for that PSU), otherwise the
        trapezoid of rack power between ticks; NaN on the first tick or after a gap."""
        lay = self.lay
        psu = lay.blocks["psu"]
        e = psu.row(x.value, "energy_kwh")
        t = psu.row(x.time_ms, "energy_kwh")
        valid = (t > 0) & (self._prev_psu_t > 0)
        d = e - self._prev_psu_e
        dt_h = (t - self._prev_psu_t) / 3.6e6
        reset = valid & (d < 0)
        d = np.where(reset, psu.row(x.value, "input_power_w") / 1e3 * dt_h, d)
        ps, pc = lay.rack_psu_start, lay.rack_psu_count
        counter = seg_reduce(np.add, np.where(valid, d, 0.0), ps, pc, 0.0)
        all_valid = seg_reduce(np.add, (~valid).astype(float), ps, pc, 0.0) == 0
        trap = np.full(rack_kw.size, np.nan)
        if self._prev_tick_ms is not None and self._prev_rack_kw is not None:
            gap_s = (now_ms - self._prev_tick_ms) / 1e3
            if 0 < gap_s <= self.max_gap_s:
                trap = (rack_kw + self._prev_rack_kw) / 2 * gap_s / 3600.0
        self._prev_psu_e = np.where(t > 0, e, np.nan)
        self._prev_psu_t = t.copy()
        self._prev_tick_ms, self._prev_rack_kw = now_ms, rack_kw
        return np.where(all_valid, counter, trap)
