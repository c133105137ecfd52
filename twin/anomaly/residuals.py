"""Physics residuals: per-device models fitted on healthy history, scored causally.

For each `Residual` (features.py) and each device, ``target ~ 1 + drivers`` is fitted
by robust (Huber-reweighted) ridge least squares, all devices of a class at once. The
history is split in time: coefficients come from its first 70%, and the residual's
centre and scale, and the class's tail fit, from the last 30% — so the calibration is
measured out of sample, as it will be used.

Scoring a new point yields the normalized residual ``c = (r - mu) / sigma``, smoothed by
exponentially weighted means over a few time constants (state carried between calls)
so that a slow drift — a fouling exchanger, a drying thermal interface — stands out of
the noise long before a single reading would. Each smoothed z goes through the class's
tail fit to a p-value; the smallest, Bonferroni-corrected, is the reference p. Because
the reference is frozen at fit time, a gradual fault cannot teach the model that it is
normal; the fleet scorer refits on a schedule, leaving out devices that were alarming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from twin.anomaly.calibration import combine_p, tail_moments, tail_p
from twin.anomaly.features import Residual
from twin.anomaly.streaming import Segments

SMOOTHING_INTERVALS = (1.0, 6.0, 30.0)
FIT_FRACTION = 0.7
MIN_FIT_ROWS = 30
RIDGE = 1e-7  # numerical only: exact physical relations must fit exactly
HUBER_C = 2.0
SIGMA_REL_FLOOR = 5e-3  # of the target's spread across the class: model error
SHRINK_ROWS = 200.0  # weight of the class slopes in a device's fit
MIN_COMMON_GROUP = 3  # devices a group needs before its median is taken out


@dataclass
class ResidualModel:
    residual: Residual
    coef: pl.DataFrame  # device_id, b0..bk (drivers' units), mu, sigma, sd0.. (per scale)
    tail: np.ndarray  # (scales, 4) pooled tail sums of |z| on the calibration split
    fitted_until: int  # last bucket of the history it saw
    # issue 20 part anom2: the class's driver range in the fit window (lo, hi per driver);
    # empty: no range known (every point counts in full)
    driver_lo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    driver_hi: np.ndarray = field(default_factory=lambda: np.zeros(0))


# issue 20 part anom2: how fast evidence fades with the distance of the drivers beyond the
# range the model was fitted on (in units of that range): a linear/quadratic fit is
# extrapolated there, and a load the training window never saw (a job starting on racks
# idle all through it) put most PSUs, all CDU pumps and ~100 GPUs of a healthy dev day in
# alarm for an hour. A residual's z is divided by 1 + EXTRAPOLATION_K * distance: a point
# half a range beyond counts a third, a fault's large departure still alarms.
EXTRAPOLATION_K = 4.0
RANGE_QUANTILES = (0.005, 0.995)  # the fit window's driver range, robust to a spike


def _extrapolation(
    model: ResidualModel,
    x: np.ndarray,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> np.ndarray:
    """1 + EXTRAPOLATION_K * (largest distance of a row's drivers beyond the fitted range,
    in units of the class's range); 1 inside it. ``lo``/``hi``: per-row bounds (for a
    per-device model, its device's own range in the fit window); else the class's."""
    if x.shape[1] == 0 or model.driver_lo.shape[0] != x.shape[1] or len(x) == 0:
        return np.ones(len(x))
    span = np.maximum(model.driver_hi - model.driver_lo, 1e-9)
    lo = model.driver_lo if lo is None else lo
    hi = model.driver_hi if hi is None else hi
    out = np.maximum(lo - x, 0.0) + np.maximum(x - hi, 0.0)
    d = np.nan_to_num(out / span, nan=0.0).max(axis=1)
    return 1.0 + EXTRAPOLATION_K * d


def _device_bounds(f: pl.DataFrame, res: Residual) -> pl.DataFrame:
    """Each device's own driver range in the fit window (RANGE_QUANTILES), as columns
    lo0.., hi0.. of a per-device model's table. Issue 26, the quiet demo: a job starting
    on racks that idled through the stored history put ~70 GPUs of one row into GPU
    thermal and power-peer incidents (7 alerts in ten quiet minutes); the class's range
    had seen that load (other rows ran jobs), so only the device's own range says that
    its coefficients are extrapolated there."""
    q0, q1 = RANGE_QUANTILES
    return f.group_by("device_id").agg(
        *[pl.col(d).quantile(q0, "linear").alias(f"lo{i}") for i, d in enumerate(res.drivers)],
        *[pl.col(d).quantile(q1, "linear").alias(f"hi{i}") for i, d in enumerate(res.drivers)],
    )


def _less_common_mode(f: pl.DataFrame, c: np.ndarray, res: Residual) -> np.ndarray:
    """Remove what a residual's group shares at each interval (its median), if it has one.

    GPUs in one rack (one coolant branch), PSUs in one hall's air share the model's errors and their
    environment's changes; one device departing from its group is what is left.
    """
    if res.common is None or res.common not in f.columns:
        return c
    g = (
        f.select(res.common, "bucket")
        .with_columns(c=c)
        .select(
            med=pl.col("c").median().over(res.common, "bucket"),
            n=pl.len().over(res.common, "bucket"),
        )
    )
    # a group of one or two has no "rest of the group" to compare with
    return c - np.where(g["n"].to_numpy() >= MIN_COMMON_GROUP, g["med"].to_numpy(), 0.0)


def _resolution(col: pl.Series) -> float:
    """Step between the distinct values a reading takes (0 for a continuous one)."""
    u = np.unique(col.drop_nulls().to_numpy())
    steps = np.diff(u[np.isfinite(u)])
    steps = steps[steps > 1e-9]
    return float(np.quantile(steps, 0.1)) if len(steps) >= 5 else 0.0


def _drivers(f: pl.DataFrame, res: Residual) -> np.ndarray:
    if not res.drivers:  # a level only: the target against its own healthy value
        return np.zeros((f.height, 0))
    return f.select(res.drivers).to_numpy().astype(np.float64)


def used_columns(frame: pl.DataFrame, res: Residual) -> list[str]:
    """The columns of a class frame that fitting or applying ``res`` reads."""
    want = ("device_id", "bucket", *res.columns, res.blame, res.common)
    return [c for c in dict.fromkeys(want) if c is not None and c in frame.columns]


def _design(frame: pl.DataFrame, res: Residual):
    """Rows with every column present; drivers standardized (for a well-posed solve)."""
    # only the columns it reads: the copy below is then a fraction of the frame (issue 24)
    f = (
        frame.select(used_columns(frame, res))
        .drop_nulls(list(res.columns))
        .filter(pl.all_horizontal([pl.col(c).is_finite() for c in res.columns]))
    )
    x = _drivers(f, res)
    x_mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    x_std = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    x_std = np.where(x_std > 1e-12, x_std, 1.0)
    xs = np.column_stack([np.ones(len(x)), (x - x_mean) / x_std])
    return f, xs, f[res.target].to_numpy().astype(np.float64), x_mean, x_std


def _solve(
    dev: np.ndarray,
    n_dev: int,
    xs: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    prior: np.ndarray | None = None,
    prior_rows: float = 0.0,
) -> np.ndarray:
    """Weighted least squares per device (coefficients (n_dev, k+1)).

    Slopes are shrunk towards ``prior`` (the class fit) with the weight of ``prior_rows``
    rows of unit-variance drivers: a device whose drivers barely moved in its history
    (a GPU always at full load) borrows its slopes from the class; the intercept is free.
    """
    k = xs.shape[1]
    xtx = np.empty((n_dev, k, k))
    xty = np.empty((n_dev, k))
    for i in range(k):
        xty[:, i] = np.bincount(dev, w * xs[:, i] * y, n_dev)
        for j in range(i, k):
            xtx[:, i, j] = xtx[:, j, i] = np.bincount(dev, w * xs[:, i] * xs[:, j], n_dev)
    cnt = np.maximum(np.bincount(dev, w, n_dev), 1.0)
    lam = np.full(k, RIDGE)[None, :] * cnt[:, None] + prior_rows
    lam[:, 0] = 1e-9
    target = np.zeros(k) if prior is None else prior
    reg = lam[:, :, None] * np.eye(k)[None]
    return np.linalg.solve(xtx + reg, (xty + lam * target)[..., None])[..., 0]


def _robust_fit(
    grp: np.ndarray,
    n_grp: int,
    xs: np.ndarray,
    y: np.ndarray,
    fit_rows: np.ndarray,
    prior: np.ndarray | None = None,
    prior_rows: float = 0.0,
) -> np.ndarray:
    w = fit_rows.astype(np.float64)
    coef = _solve(grp, n_grp, xs, y, w, prior, prior_rows)
    for _ in range(2):  # Huber reweighting: a faulty stretch in history weighs less
        r = y - np.einsum("nk,nk->n", xs, coef[grp])
        s = np.sqrt(
            np.bincount(grp, w * r * r, n_grp) / np.maximum(np.bincount(grp, w, n_grp), 1.0)
        )
        u = np.abs(r) / np.maximum(s[grp], 1e-12)
        w = fit_rows * np.minimum(1.0, HUBER_C / np.maximum(u, 1e-12))
        coef = _solve(grp, n_grp, xs, y, w, prior, prior_rows)
    return coef


def fit_residual(frame: pl.DataFrame, res: Residual) -> ResidualModel | None:
    """Fit one residual for every device in a class frame (rows of healthy history)."""
    f, xs, y, x_mean, x_std = _design(frame, res)
    if f.height < MIN_FIT_ROWS:
        return None
    ids, dev = np.unique(f["device_id"].to_numpy(), return_inverse=True)
    buckets = f["bucket"].to_numpy()
    # time-ordered split per device: the last 30% of each device's rows calibrate
    order = np.lexsort((buckets, dev))
    rank = np.empty(len(dev), np.int64)
    counts = np.bincount(dev, minlength=len(ids))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(dev)) - np.repeat(starts, counts)
    fit_rows = rank < np.floor(FIT_FRACTION * counts[dev])
    # the class fit covers every operating range; each device departs from it where its
    # own history says so (all the way for per-device models, not at all if pooled)
    pooled = _robust_fit(np.zeros_like(dev), 1, xs, y, fit_rows)[0]
    if res.pooled:
        coef = np.tile(pooled, (len(ids), 1))
    else:
        coef = _robust_fit(dev, len(ids), xs, y, fit_rows, pooled, SHRINK_ROWS)
    # back to the drivers' own units, so fits made at different times can be mixed
    slopes = coef[:, 1:] / x_std
    coef = np.column_stack([coef[:, 0] - slopes @ x_mean, slopes])
    xs = np.column_stack([np.ones(len(xs)), _drivers(f, res)])
    cal = ~fit_rows
    n_cal = np.bincount(dev, cal, len(ids))
    r = y - np.einsum("nk,nk->n", xs, coef[dev])
    mu = np.bincount(dev, cal * r, len(ids)) / np.maximum(n_cal, 1)
    # noise floor: model error, and the reading's resolution (whole degrees from NVML)
    floor = max(
        SIGMA_REL_FLOOR * max(float(np.std(y)), 1e-9),
        _resolution(f[res.blame] if res.blame in f.columns else f[res.target]) / np.sqrt(12.0),
    )
    sigma = np.sqrt(np.bincount(dev, cal * (r - mu[dev]) ** 2, len(ids)) / np.maximum(n_cal - 1, 1))
    sigma = np.maximum(sigma, floor)
    c = _less_common_mode(f, (r - mu[dev]) / sigma[dev], res)
    # smoothed residuals, in time order per device. A slow smoother has few independent
    # values in the calibration split, so its spread and tail come from the whole history
    # (past its warm-up), and its spread is never below what white noise would give
    c_o, b_o, cal_o = c[order], buckets[order], cal[order]
    dev_o = dev[order]
    seg = Segments(starts, len(c_o))
    sd0 = None
    sds, tails = [], []
    for j, tau in enumerate(SMOOTHING_INTERVALS):
        sm, infl, _ = _ew_mean(seg, b_o, c_o, tau, None)
        sm = sm / infl
        use = cal_o if j == 0 else rank[order] >= 3 * tau
        n_use = np.bincount(dev_o, use, len(ids))
        sd = np.sqrt(np.bincount(dev_o, use * sm * sm, len(ids)) / np.maximum(n_use, 1))
        d1 = np.exp(-1.0 / tau)
        white = (sd0 if sd0 is not None else sd) * np.sqrt((1.0 - d1) / (1.0 + d1))
        # and a reading can always move by its noise floor (a quantum, when it sat still
        # on one value all through the calibration). Issue 20, after the 2000-2004
        # held-out run: at every scale, not only the raw one. Both parts of the floor are
        # systematic, not noise that smoothing averages away: a reading that stops moving
        # keeps its rounding error (up to half a quantum) for as long as it holds, and
        # model error changes with the operating point, not from one interval to the next.
        # Calibrated where the load never stood still, the slow smoothers' spread came out
        # at the white-noise level; when a healthy development fleet went idle for 75 min
        # (seed 22: GPU temperatures and PSU watts frozen on whole values) sub-sigma
        # offsets read as 10-sigma and put 84 PSUs and 55 GPUs in alarm for two hours.
        least = floor / sigma if j == 0 else np.maximum(floor / sigma, 0.05)
        sd = np.maximum(np.maximum(sd, white), least)
        sd0 = sd if j == 0 else sd0
        sds.append(sd)
        z = np.where(use, np.abs(sm) / sd[dev_o], np.nan)
        tails.append(tail_moments(z).sum(axis=1))
    ok = n_cal >= max(5, MIN_FIT_ROWS // 3)
    table = pl.DataFrame(
        {
            "device_id": ids,
            "mu": mu,
            "sigma": sigma,
            **{f"b{i}": coef[:, i] for i in range(coef.shape[1])},
            **{f"sd{j}": sds[j] for j in range(len(sds))},
        }
    ).filter(ok)
    if not res.pooled and res.drivers:  # a pooled model's coefficients are the class's
        table = table.join(_device_bounds(f, res), on="device_id", how="left")
    x_fit = _drivers(f, res)  # the whole window: fitted and calibrated on
    lo, hi = (
        np.quantile(x_fit, RANGE_QUANTILES, axis=0)
        if len(x_fit) and x_fit.shape[1]
        else (np.zeros(0), np.zeros(0))
    )
    return ResidualModel(res, table, np.array(tails), int(buckets.max()), lo, hi)


def _ew_mean(
    seg: Segments,
    bucket: np.ndarray,
    c: np.ndarray,
    tau: float,
    state: tuple[np.ndarray, ...] | None,
):
    """EW mean of c with time constant tau buckets, and how much wider its spread is than
    in steady state (few points so far, or a gap: sum(w^2)/sum(w)^2 against its limit).

    ``state`` = (last_bucket, W, S, W2) per series; returns (mean, inflation, new state).
    """
    n_ser = len(seg.starts)
    prev_b = seg.prev(
        bucket.astype(np.float64), state[0] if state is not None else np.full(n_ser, np.nan)
    )
    steps = bucket - prev_b
    d = np.where(np.isnan(steps), 0.0, np.exp(-np.nan_to_num(steps, nan=0.0) / tau))
    zeros = np.zeros(n_ser)
    w0, s0, w20 = (zeros, zeros, zeros) if state is None else state[1:]
    one = np.ones(len(c))
    w, s = seg.run([one, c], d, [w0, s0])
    (w2,) = seg.run([one], d * d, [w20])
    d1 = np.exp(-1.0 / tau)
    steady = (1.0 - d1) / (1.0 + d1)
    infl = np.sqrt(np.maximum(w2 / (w * w) / steady, 1.0))
    ends = seg.ends
    return s / w, infl, (bucket[ends].astype(np.float64), w[ends], s[ends], w2[ends])


@dataclass
class SmootherState:
    """EW-mean state per (device, residual) and smoothing scale, across calls."""

    index: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"device_id": pl.String, "residual": pl.String, "_idx": pl.Int64}
        )
    )
    last_bucket: np.ndarray = field(default_factory=lambda: np.empty(0))
    w: np.ndarray = field(default_factory=lambda: np.empty((len(SMOOTHING_INTERVALS), 0)))
    s: np.ndarray = field(default_factory=lambda: np.empty((len(SMOOTHING_INTERVALS), 0)))
    w2: np.ndarray = field(default_factory=lambda: np.empty((len(SMOOTHING_INTERVALS), 0)))

    def indices(self, keys: pl.DataFrame) -> np.ndarray:
        on = ["device_id", "residual"]
        known = keys.join(self.index, on=on, how="left", maintain_order="left")
        missing = known.filter(pl.col("_idx").is_null()).select(on)
        if missing.height:
            n0, m = len(self.last_bucket), missing.height
            self.index = pl.concat(
                [self.index, missing.with_columns(_idx=pl.int_range(n0, n0 + m, dtype=pl.Int64))]
            )
            self.last_bucket = np.concatenate([self.last_bucket, np.full(m, np.nan)])
            pad = np.zeros((len(SMOOTHING_INTERVALS), m))
            self.w, self.s = np.hstack([self.w, pad]), np.hstack([self.s, pad])
            self.w2 = np.hstack([self.w2, pad])
            known = keys.join(self.index, on=on, how="left", maintain_order="left")
        return known["_idx"].to_numpy()


def apply_residual(model: ResidualModel, frame: pl.DataFrame) -> pl.DataFrame:
    """Normalized residual c per (device, bucket) of a class frame, for fitted devices."""
    res = model.residual
    f = (
        frame.select(used_columns(frame, res))
        .join(model.coef, on="device_id", how="inner")
        .drop_nulls(list(res.columns))
    )
    f = f.filter(pl.all_horizontal([pl.col(c).is_finite() for c in res.columns]))
    x = _drivers(f, res)
    b = f.select([f"b{i}" for i in range(len(res.drivers) + 1)]).to_numpy()
    r = f[res.target].to_numpy() - b[:, 0] - np.einsum("nk,nk->n", x, b[:, 1:])
    c = _less_common_mode(f, (r - f["mu"].to_numpy()) / f["sigma"].to_numpy(), res)
    k = len(res.drivers)
    if k and f"lo{k - 1}" in f.columns:  # a per-device model: its device's own range
        lo = f.select([f"lo{i}" for i in range(k)]).to_numpy().astype(np.float64)
        hi = f.select([f"hi{i}" for i in range(k)]).to_numpy().astype(np.float64)
        c = c / _extrapolation(model, x, lo, hi)
    else:
        c = c / _extrapolation(model, x)
    return f.select(
        "device_id", "bucket", *[f"sd{j}" for j in range(len(SMOOTHING_INTERVALS))]
    ).with_columns(residual=pl.lit(res.name), c=c)


def reference_p(
    model_tails: dict[str, np.ndarray], points: pl.DataFrame, state: SmootherState
) -> pl.DataFrame:
    """Reference p for residual points (device_id, residual, bucket, c, sd*), causally.

    Points must come after those of earlier calls for the same series.
    """
    pts = points.sort("device_id", "residual", "bucket")
    if pts.height == 0:
        return pts.with_columns(p_ref=pl.lit(None, pl.Float64))
    ids = pts.select(pl.struct("device_id", "residual").rle_id().alias("i"))["i"].to_numpy()
    starts = np.flatnonzero(np.diff(ids, prepend=-1) != 0)
    idx = state.indices(pts[starts].select("device_id", "residual"))
    seg = Segments(starts, pts.height)
    bucket = pts["bucket"].to_numpy()
    c = pts["c"].to_numpy()
    names = pts["residual"].to_numpy()
    ps = []
    new_last = state.last_bucket[idx]
    for j, tau in enumerate(SMOOTHING_INTERVALS):
        sm, infl, (new_last, w_end, s_end, w2_end) = _ew_mean(
            seg,
            bucket,
            c,
            tau,
            (state.last_bucket[idx], state.w[j, idx], state.s[j, idx], state.w2[j, idx]),
        )
        state.w[j, idx], state.s[j, idx], state.w2[j, idx] = w_end, s_end, w2_end
        z = np.abs(sm) / (pts[f"sd{j}"].to_numpy() * infl)
        p = np.full(len(z), np.nan)
        for name, tails in model_tails.items():
            sel = names == name
            if sel.any():
                t = tails[j]
                p[sel] = tail_p(z[sel], t[0], t[1], t[2], t[3])
        ps.append(p)
    state.last_bucket[idx] = new_last
    return pts.with_columns(p_ref=combine_p(np.stack(ps)))
