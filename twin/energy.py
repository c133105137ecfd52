"""Energy over intervals from meter readings: counters where present, else power.

A source becomes a `Curve`: cumulative energy at each reading time, split into segments
where the energy between two readings is not known. Rules (docs/twin.md):

- Counter (`energy_kwh`): the increment between readings is the register difference. A
  drop is a wrap when the meter declares a rollover value and adding it gives a plausible
  increment (< half the register); any other drop is a reset, whose step takes its energy
  from power readings over the same step when those cover it, else is unknown (a
  segment break). A counter step longer than the gap limit still has exact energy, but
  no point inside it can be interpolated.
- Power (`power_kw`): trapezoids between readings no more than the gap limit apart; a
  longer gap is unknown energy (a segment break), never bridged.
- Inside a step, cumulative energy is interpolated (linear for counters, the exact
  trapezoid integral for power). An energy over [a, b] is known when both ends are known
  and lie in the same segment.

Times are float seconds relative to a reference the caller picks (the interval start),
so float64 keeps sub-microsecond precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np

S_PER_H = 3600.0


@dataclass
class Curve:
    t_s: np.ndarray  # reading times, strictly increasing
    c_kwh: np.ndarray  # cumulative energy at t_s (offset arbitrary per segment)
    seg: np.ndarray  # segment id per reading
    interp: np.ndarray  # per step: may a point inside it be interpolated
    method: str  # "counter" or "power_integration"
    p_kw: np.ndarray | None = None  # power readings (power curves: exact interpolation)
    resets: int = 0
    wraps: int = 0
    gaps: int = 0

    @property
    def n(self) -> int:
        return int(self.t_s.size)


def _dedupe(t_s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(t_s, kind="stable")
    t_s, v = np.asarray(t_s, float)[order], np.asarray(v, float)[order]
    if t_s.size > 1:
        last = np.concatenate([t_s[1:] != t_s[:-1], [True]])  # keep the last of equal times
        t_s, v = t_s[last], v[last]
    return t_s, v


def _assemble(
    t_s: np.ndarray, step_kwh: np.ndarray, known: np.ndarray, interp: np.ndarray, method: str, **kw
) -> Curve:
    c = np.concatenate([[0.0], np.cumsum(np.where(known, step_kwh, 0.0))])
    seg = np.concatenate([[0], np.cumsum(~known)])
    return Curve(t_s, c, seg, interp & known, method, **kw)


def power_curve(t_s: np.ndarray, p_kw: np.ndarray, max_gap_s: float) -> Curve:
    t_s, p_kw = _dedupe(t_s, p_kw)
    dt = np.diff(t_s)
    ok = dt <= max_gap_s
    step = (p_kw[:-1] + p_kw[1:]) * 0.5 * dt / S_PER_H
    return _assemble(t_s, step, ok, ok, "power_integration", p_kw=p_kw, gaps=int((~ok).sum()))


def counter_curve(
    t_s: np.ndarray,
    e_kwh: np.ndarray,
    max_gap_s: float,
    rollover_kwh: float | None = None,
    power: Curve | None = None,
) -> Curve:
    t_s, e_kwh = _dedupe(t_s, e_kwh)
    d = np.diff(e_kwh)
    dt = np.diff(t_s)
    drop = d < 0
    wrap = np.zeros_like(drop)
    if rollover_kwh is not None:
        wrap = drop & (d + rollover_kwh < rollover_kwh / 2)
    reset = drop & ~wrap
    step = np.where(wrap, d + (rollover_kwh or 0.0), d)
    known = ~reset
    if reset.any() and power is not None:
        idx = np.flatnonzero(reset)
        fill, ok = span_energy(power, t_s[idx], t_s[idx + 1])
        step[idx[ok]] = fill[ok]
        known[idx[ok]] = True
    return _assemble(
        t_s,
        step,
        known,
        dt <= max_gap_s,
        "counter",
        resets=int(reset.sum()),
        wraps=int(wrap.sum()),
        gaps=int((dt > max_gap_s).sum()),
    )


def evaluate(curve: Curve, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative energy at times g: (value, known, segment)."""
    g = np.asarray(g, dtype=float)
    n = curve.n
    if n == 0:
        z = np.zeros(g.shape)
        return z, np.zeros(g.shape, bool), z.astype(np.int64)
    i = np.searchsorted(curve.t_s, g, side="right") - 1
    ic = np.clip(i, 0, n - 1)
    exact = (i >= 0) & (curve.t_s[ic] == g)
    step = np.clip(i, 0, max(n - 2, 0))
    inside = (i >= 0) & (i < n - 1) & ~exact
    if n > 1:
        inside &= curve.interp[step]
    else:
        inside &= False
    val = curve.c_kwh[ic].copy()
    if n > 1 and inside.any():
        k = step[inside]
        t0, t1 = curve.t_s[k], curve.t_s[k + 1]
        tau = g[inside] - t0
        if curve.p_kw is not None:  # exact integral of the linear power between readings
            p0, p1 = curve.p_kw[k], curve.p_kw[k + 1]
            val[inside] = (
                curve.c_kwh[k] + (p0 * tau + (p1 - p0) * tau**2 / (2 * (t1 - t0))) / S_PER_H
            )
        else:
            c0, c1 = curve.c_kwh[k], curve.c_kwh[k + 1]
            val[inside] = c0 + (c1 - c0) * tau / (t1 - t0)
    return val, exact | inside, curve.seg[ic]


def span_energy(curve: Curve, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy over [a, b] per pair, and whether it is known."""
    ca, ka, sa = evaluate(curve, a)
    cb, kb, sb = evaluate(curve, b)
    known = ka & kb & (sa == sb)
    return np.where(known, cb - ca, 0.0), known


@dataclass
class Buckets:
    """Energy per source over the part of each bucket where every source is known."""

    edges_s: np.ndarray
    energy_kwh: dict[str, np.ndarray]
    covered_s: np.ndarray  # per bucket: time where all sources are known
    source_covered_s: dict[str, np.ndarray]  # per source, per bucket: its own known time

    @property
    def span_s(self) -> np.ndarray:
        return np.diff(self.edges_s)


def bucket_energies(curves: dict[str, Curve], edges_s: np.ndarray, resolution_s: float) -> Buckets:
    """A bucket whose ends are known for every source uses its exact energies; any other
    bucket is split into cells of `resolution_s` and only the cells known for every
    source count (so all sources are always compared over the same time)."""
    edges_s = np.asarray(edges_s, dtype=float)
    nb = edges_s.size - 1
    a, b = edges_s[:-1], edges_s[1:]
    span = b - a
    coarse = {k: span_energy(c, a, b) for k, c in curves.items()}
    all_known = (
        np.logical_and.reduce([k for _, k in coarse.values()]) if curves else np.zeros(nb, bool)
    )
    energy = {k: np.where(all_known, e, 0.0) for k, (e, _) in coarse.items()}
    covered = np.where(all_known, span, 0.0)
    own = {k: np.where(kn, span, 0.0) for k, (_, kn) in coarse.items()}
    need = np.flatnonzero(~all_known)
    if need.size and curves:
        n_cells = np.maximum(np.ceil(span[need] / resolution_s).astype(np.int64), 1)
        owner = np.repeat(need, n_cells)
        first = np.concatenate([[0], np.cumsum(n_cells)[:-1]])
        k_in = np.arange(owner.size) - np.repeat(first, n_cells)
        c0 = a[owner] + k_in * resolution_s
        c1 = np.minimum(c0 + resolution_s, b[owner])
        fine = {k: span_energy(c, c0, c1) for k, c in curves.items()}
        ok = np.logical_and.reduce([kn for _, kn in fine.values()])
        cell = c1 - c0
        covered[need] = np.bincount(owner, np.where(ok, cell, 0.0), nb)[need]
        for k, (e, kn) in fine.items():
            energy[k][need] = np.bincount(owner, np.where(ok, e, 0.0), nb)[need]
            # A source's own coverage: its known cells, or the whole bucket if its ends are
            own_fine = np.bincount(owner, np.where(kn, cell, 0.0), nb)[need]
            own[k][need] = np.where(coarse[k][1][need], span[need], own_fine)
    return Buckets(edges_s, energy, covered, own)


# -- reading sources from the store ------------------------------------------------------


def read_points(
    cur: duckdb.DuckDBPyConnection,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    margin_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw readings of one meter around [start, end], times in s relative to `start`.

    Energy needs exact read times, so this reads the raw table rather than bucketed
    history; meters are few and a day of 1 s readings is 86,400 rows."""
    lo, hi = start - timedelta(seconds=margin_s), end + timedelta(seconds=margin_s)
    cols = cur.execute(
        """SELECT epoch_us(read_time) - epoch_us(?::TIMESTAMP) AS t_us, value FROM samples
           WHERE device_id = ? AND metric = ? AND read_time >= ? AND read_time <= ?
           ORDER BY read_time""",
        [start, device_id, metric, lo, hi],
    ).fetchnumpy()
    return (np.asarray(cols["t_us"], dtype=float) / 1e6, np.asarray(cols["value"], dtype=float))


def meter_curve(
    cur: duckdb.DuckDBPyConnection,
    device_id: str,
    start: datetime,
    end: datetime,
    max_gap_s: float,
    rollover_kwh: float | None = None,
    energy_metric: str = "energy_kwh",
    power_metric: str = "power_kw",
    power_scale: float = 1.0,
) -> Curve:
    """The best curve for one meter: its energy counter if it has readings in range
    (resets filled from power), else integration of its power readings."""
    tp, p = read_points(cur, device_id, power_metric, start, end, max_gap_s)
    power = power_curve(tp, p * power_scale, max_gap_s)
    te, e = read_points(cur, device_id, energy_metric, start, end, max_gap_s)
    if te.size >= 2:
        return counter_curve(te, e, max_gap_s, rollover_kwh, power if tp.size >= 2 else None)
    return power
