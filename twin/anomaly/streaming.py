"""Per-series streaming detector: causal, robust, calibrated, vectorized.

For every point of every series, using only that series' points up to and including
it (and the state carried from earlier calls):

1. **Sampling interval** — an exponentially weighted geometric mean of the positive time
   steps so far. Time constants are in intervals, so a series read every second and one
   read every minute behave alike, jitter and bursts do not matter, and a gap simply
   lets the old statistics decay (after a long one the series warms up again).
2. **Baseline and scale, robustly** — a pilot pass gives an exponentially weighted mean
   and residual scale; the main pass uses the input clipped to ``pilot mean +- clip_z *
   pilot scale`` so that a single spike barely moves the baseline and cannot inflate the
   scale. The baseline time constant (``level_intervals``) is short: it follows daily and
   weekly load patterns and re-adapts after a level shift (which scores high while the
   baseline catches up). The residual z uses the state *before* the point (predictive).
3. **Calibrated deviation** — ``|z|`` goes through the series' own tail fit
   (calibration.py) to a tail probability ``p_dev``.
4. **Stuck values** — a run of exactly repeated values (at distinct timestamps) has
   probability ``prod(q)``, q the series' own predictive repeat rate at each repeat:
   noisy signals stuck at one value alarm within a few points; quantized or flat
   signals never.
5. ``p = min(1, 2 * min(p_dev, p_flat))``; ``score = -log10(p)/8`` in [0, 1];
   NaN during the warm-up (fewer than ``warmup_points`` effective points).

All statistics are the linear recurrence in scan.py, applied to many series laid end to
end, so the same code scores one long series or a whole fleet with no per-point Python.
Feeding a series in pieces (carrying `DetectorState`) gives the same scores as feeding
it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from twin.anomaly.calibration import p_to_score, tail_moments, tail_p
from twin.anomaly.scan import ew_scan


@dataclass(frozen=True)
class DetectorParams:
    level_intervals: float = 30.0  # baseline time constant
    scale_intervals: float = 120.0  # residual-scale time constant
    tail_intervals: float = 3000.0  # tail-fit (calibration) time constant
    repeat_intervals: float = 300.0  # repeat-rate time constant
    interval_memory_points: float = 200.0  # sampling-interval estimate memory
    warmup_points: float = 20.0
    clip_z: float = 4.0
    rel_floor: float = 1e-6  # scale never below this fraction of |baseline| ...
    abs_floor: float = 1e-9  # ... nor this: constant series do not divide by zero
    repeat_prior: float = 1.0  # pseudo-counts of repeat / no repeat for the repeat rate


_STATE_FIELDS = (
    "last_t",
    "last_x",
    "wdt",
    "ldt",
    "wl",
    "x1",
    "x2",
    "ws",
    "v1",
    "v2",
    "wc",
    "nc",
    "s1",
    "s2",
    "wr",
    "rr",
    "run",
    "log_run",
    "xmax",
    "xmin",
    "run_sat",
)


@dataclass
class DetectorState:
    """What the detector carries between calls, one entry per series."""

    last_t: np.ndarray = field(default_factory=lambda: np.empty(0))
    last_x: np.ndarray = field(default_factory=lambda: np.empty(0))
    wdt: np.ndarray = field(default_factory=lambda: np.empty(0))
    ldt: np.ndarray = field(default_factory=lambda: np.empty(0))
    wl: np.ndarray = field(default_factory=lambda: np.empty(0))
    x1: np.ndarray = field(default_factory=lambda: np.empty(0))
    x2: np.ndarray = field(default_factory=lambda: np.empty(0))
    ws: np.ndarray = field(default_factory=lambda: np.empty(0))
    v1: np.ndarray = field(default_factory=lambda: np.empty(0))
    v2: np.ndarray = field(default_factory=lambda: np.empty(0))
    wc: np.ndarray = field(default_factory=lambda: np.empty(0))
    nc: np.ndarray = field(default_factory=lambda: np.empty(0))
    s1: np.ndarray = field(default_factory=lambda: np.empty(0))
    s2: np.ndarray = field(default_factory=lambda: np.empty(0))
    wr: np.ndarray = field(default_factory=lambda: np.empty(0))
    rr: np.ndarray = field(default_factory=lambda: np.empty(0))
    run: np.ndarray = field(default_factory=lambda: np.empty(0))
    log_run: np.ndarray = field(default_factory=lambda: np.empty(0))
    xmax: np.ndarray = field(default_factory=lambda: np.empty(0))
    xmin: np.ndarray = field(default_factory=lambda: np.empty(0))
    run_sat: np.ndarray = field(default_factory=lambda: np.empty(0))

    @classmethod
    def empty(cls, n: int) -> DetectorState:
        st = cls(**{f: np.zeros(n) for f in _STATE_FIELDS})
        st.last_t[:] = np.nan
        st.last_x[:] = np.nan
        st.xmax[:] = -np.inf
        st.xmin[:] = np.inf
        return st

    def __len__(self) -> int:
        return len(self.last_t)

    def take(self, idx: np.ndarray) -> DetectorState:
        return DetectorState(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def put(self, idx: np.ndarray, other: DetectorState) -> None:
        for f in fields(self):
            getattr(self, f.name)[idx] = getattr(other, f.name)

    def extend(self, n: int) -> None:
        """Append n fresh series."""
        new = DetectorState.empty(n)
        for f in fields(self):
            setattr(self, f.name, np.concatenate([getattr(self, f.name), getattr(new, f.name)]))


@dataclass
class PointScores:
    score: np.ndarray  # calibrated, [0, 1]; NaN in warm-up
    p: np.ndarray  # tail probability behind the score
    z: np.ndarray  # signed robust residual z (NaN in warm-up)
    p_dev: np.ndarray
    p_flat: np.ndarray
    baseline: np.ndarray  # predictive baseline the point was compared with


class Segments:
    """Series laid end to end: offsets of each series' first point."""

    def __init__(self, starts: np.ndarray, n: int) -> None:
        self.starts = np.asarray(starts, dtype=np.int64)
        self.n = n
        self.ends = np.append(self.starts[1:], n) - 1
        lengths = self.ends - self.starts + 1
        if np.any(lengths <= 0) or (len(self.starts) and self.starts[0] != 0):
            raise ValueError("starts must begin at 0 and be strictly increasing")
        self.seg = np.repeat(np.arange(len(self.starts)), lengths)
        self.is_start = np.zeros(n, dtype=bool)
        self.is_start[self.starts] = True

    def run(self, u: ArrayLike, d: np.ndarray, y0: list[np.ndarray]) -> np.ndarray:
        """Segmented scan of the rows of `u` (one input or a list of them): each series
        starts from its carried state decayed by d."""
        rows = np.array(u, dtype=np.float64, ndmin=2)
        d_in = d.copy()
        d_in[self.starts] = 0.0
        rows[:, self.starts] += d[self.starts] * np.stack(y0)
        return ew_scan(rows, d_in)

    def prev(self, x: np.ndarray, carried: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[1:] = x[:-1]
        out[self.starts] = carried
        return out


def score_points(
    t_s: np.ndarray,
    x: np.ndarray,
    starts: np.ndarray,
    params: DetectorParams | None = None,
    state: DetectorState | None = None,
) -> tuple[PointScores, DetectorState]:
    """Score points of series laid end to end (series k = points starts[k]..starts[k+1]-1).

    Times are seconds, non-decreasing within a series (repeats allowed); values finite.
    ``state`` (one entry per series, e.g. from the previous call) continues each series;
    None starts them fresh. Returns the scores and the state after the last points.
    """
    p_ = params or DetectorParams()
    t_s = np.asarray(t_s, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    sg = Segments(starts, n)
    st = state if state is not None else DetectorState.empty(len(sg.starts))
    if len(st) != len(sg.starts):
        raise ValueError(f"state has {len(st)} series, input {len(sg.starts)}")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(t_s)):
        raise ValueError("times and values must be finite")
    dt = sg.prev(t_s, st.last_t)
    dt = t_s - dt  # NaN at a fresh series' first point
    if np.any(dt < 0):
        raise ValueError("times must be non-decreasing within each series")
    fresh = np.isnan(dt)
    seg0 = sg.seg[sg.starts]
    one = np.ones(n)

    # 1. sampling interval: EW geometric mean of positive steps (memory in points)
    pos = np.nan_to_num(dt) > 0
    logdt = np.where(pos, np.log(np.where(pos, dt, 1.0)), 0.0)
    g = np.where(fresh, 0.0, np.exp(-1.0 / p_.interval_memory_points))
    wdt, ldt = sg.run([pos, logdt], g, [st.wdt[seg0], st.ldt[seg0]])
    wdt_p, ldt_p = wdt - pos, ldt - logdt
    with np.errstate(invalid="ignore", divide="ignore"):
        interval = np.exp(ldt_p / wdt_p)
        steps = np.where(wdt_p > 0.5, dt / interval, np.where(pos, 1.0, 0.0))
    steps = np.where(fresh, np.inf, steps)

    def decay(n_intervals: float) -> np.ndarray:
        return np.exp(-steps / n_intervals)

    dl, ds = decay(p_.level_intervals), decay(p_.scale_intervals)

    # 2. pilot baseline and scale
    wl, x1 = sg.run([one, x], dl, [st.wl[seg0], st.x1[seg0]])
    wl_p = wl - 1.0
    has_prev = wl_p > 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        m1p = np.where(has_prev, (x1 - x) / wl_p, x)
    e1 = x - m1p
    hp = has_prev.astype(np.float64)
    ws, v1 = sg.run([hp, hp * e1 * e1], ds, [st.ws[seg0], st.v1[seg0]])
    ws_p = ws - hp
    warm = ws_p >= p_.warmup_points
    with np.errstate(invalid="ignore", divide="ignore"):
        v1p = np.where(ws_p > 1e-12, (v1 - hp * e1 * e1) / ws_p, 0.0)
    s1p = np.sqrt(np.maximum(v1p, 0.0) + _floor(m1p, p_) ** 2)
    xc = np.where(warm, np.clip(x, m1p - p_.clip_z * s1p, m1p + p_.clip_z * s1p), x)

    # main pass on the clipped input
    (x2,) = sg.run([xc], dl, [st.x2[seg0]])
    with np.errstate(invalid="ignore", divide="ignore"):
        m2p = np.where(has_prev, (x2 - xc) / wl_p, x)
    ec = xc - m2p
    (v2,) = sg.run([hp * ec * ec], ds, [st.v2[seg0]])
    with np.errstate(invalid="ignore", divide="ignore"):
        v2p = np.where(ws_p > 1e-12, (v2 - hp * ec * ec) / ws_p, 0.0)
    z = (x - m2p) / np.sqrt(np.maximum(v2p, 0.0) + _floor(m2p, p_) ** 2)
    z = np.where(warm, z, np.nan)

    # 3. calibrated deviation
    abs_z = np.abs(z)
    mom = tail_moments(abs_z)
    tails = sg.run(
        mom, decay(p_.tail_intervals), [st.wc[seg0], st.nc[seg0], st.s1[seg0], st.s2[seg0]]
    )
    wc_p, nc_p, s1_p, s2_p = tails - mom
    p_dev = tail_p(abs_z, wc_p, nc_p, s1_p, s2_p)

    # 4. stuck values
    last_x = sg.prev(x, st.last_x)
    rep = (x == last_x) & pos
    repf = rep.astype(np.float64)
    wr, rr = sg.run([one, repf], decay(p_.repeat_intervals), [st.wr[seg0], st.rr[seg0]])
    a0 = p_.repeat_prior
    q_p = (rr - repf + a0) / (wr - 1.0 + 2.0 * a0)
    # sequential probability of the run: the product of the predictive repeat rate over
    # each repeat (warm points only), so a signal that is always flat never alarms
    idx = np.arange(n)
    anchor = np.maximum.accumulate(np.where(~rep | sg.is_start, idx, 0))
    continues = rep[anchor] & sg.is_start[anchor]  # run carried over from the state
    # a value held at the series' all-time high or low is a saturated actuator or a
    # clipped range (pump at 100 %, fan at minimum), not a frozen sensor
    hi_prev, lo_prev, hi_end, lo_end = _extremes(sg, x, st.xmax, st.xmin)
    at_extreme = (x >= hi_prev) | (x <= lo_prev)
    saturated = np.where(continues, st.run_sat[sg.seg] > 0, at_extreme[anchor])
    log_q = np.where(rep & warm & ~saturated, np.log(np.maximum(q_p, 1e-300)), 0.0)
    cum = np.cumsum(log_q)
    run = np.where(continues, idx - anchor + 1 + st.run[sg.seg], idx - anchor)
    log_run = cum - cum[anchor] + np.where(continues, log_q[anchor] + st.log_run[sg.seg], 0.0)
    p_flat = np.where(warm, np.exp(log_run), np.nan)

    p = np.minimum(1.0, 2.0 * np.fmin(p_dev, p_flat))  # Bonferroni over the two
    ends = sg.ends
    new = DetectorState(
        last_t=t_s[ends],
        last_x=x[ends],
        wdt=wdt[ends],
        ldt=ldt[ends],
        wl=wl[ends],
        x1=x1[ends],
        x2=x2[ends],
        ws=ws[ends],
        v1=v1[ends],
        v2=v2[ends],
        wc=tails[0, ends],
        nc=tails[1, ends],
        s1=tails[2, ends],
        s2=tails[3, ends],
        wr=wr[ends],
        rr=rr[ends],
        run=run[ends].astype(np.float64),
        log_run=log_run[ends],
        xmax=hi_end,
        xmin=lo_end,
        run_sat=saturated[ends].astype(np.float64),
    )
    return PointScores(p_to_score(p), p, z, p_dev, p_flat, m2p), new


# points per `score_points` call in `score_points_batched`: its ~80 temporaries of n
# float64s make ~0.6 kB a point, so a batch holds ~20 MB at once (issue 24: priming the
# example site's 22.6 k raw series scored 135 k points in one call, +83 MB)
BATCH_POINTS = 32_768


def score_points_batched(
    t_s: np.ndarray,
    x: np.ndarray,
    starts: np.ndarray,
    params: DetectorParams | None = None,
    state: DetectorState | None = None,
    batch_points: int = BATCH_POINTS,
) -> tuple[PointScores, DetectorState]:
    """`score_points` over whole series at a time, about `batch_points` points per call
    (a longer series alone): series are independent, so the scores and states are those
    of one call (to rounding: the scan's chunking follows the call's length), with the
    peak memory of a batch instead of the whole input."""
    starts = np.asarray(starts, dtype=np.int64)
    n = len(x)
    if n <= batch_points or len(starts) <= 1:
        return score_points(t_s, x, starts, params, state)
    # the state after each batch is written over its series' entries in a copy
    end = (
        state.take(np.arange(len(starts)))
        if state is not None
        else DetectorState.empty(len(starts))
    )
    # series k goes to batch floor(starts[k] / batch_points), a batch of several whole
    # series (or one long one); consecutive batches, in order
    first = np.flatnonzero(np.diff(starts // batch_points, prepend=-1) != 0)
    bounds = np.append(first, len(starts))
    parts: list[PointScores] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        lo = int(starts[a])
        hi = int(starts[b]) if b < len(starts) else n
        which = np.arange(a, b)
        res, new = score_points(t_s[lo:hi], x[lo:hi], starts[a:b] - lo, params, end.take(which))
        parts.append(res)
        end.put(which, new)
    scores = PointScores(
        **{f.name: np.concatenate([getattr(r, f.name) for r in parts]) for f in fields(PointScores)}
    )
    return scores, end


def _extremes(sg: Segments, x: np.ndarray, xmax0: np.ndarray, xmin0: np.ndarray):
    """Running max/min of each series before each point, and at its end (with state)."""
    f = pl.DataFrame({"s": sg.seg, "x": x}).select(
        hi=pl.col("x").cum_max().over("s"), lo=pl.col("x").cum_min().over("s")
    )
    hi = np.maximum(f["hi"].to_numpy(), xmax0[sg.seg])
    lo = np.minimum(f["lo"].to_numpy(), xmin0[sg.seg])
    return sg.prev(hi, xmax0), sg.prev(lo, xmin0), hi[sg.ends], lo[sg.ends]


def _floor(level: np.ndarray, p_: DetectorParams) -> np.ndarray:
    return p_.abs_floor + p_.rel_floor * np.abs(level)


def score_series(
    t_s: np.ndarray,
    x: np.ndarray,
    params: DetectorParams | None = None,
    state: DetectorState | None = None,
) -> tuple[PointScores, DetectorState]:
    """One series (convenience wrapper)."""
    return score_points(t_s, x, np.array([0]), params, state)
