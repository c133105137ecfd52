"""Multivariate detector per component class: an IsolationForest on device features.

Features of a row (device, bucket): the device's normalized physics residuals and its
own metrics standardized over the class, so a combination no single residual flags
(a GPU running hot *and* slow *and* at low power) still stands out. One forest per
class (GPUs, PSUs, CDUs, CRAHs, ...), trained on rolling history and refreshed on the
fleet scorer's schedule.

Guard rails, enforced here rather than left to callers:

- ``fit`` takes only rows at or before ``until_bucket``; ``score`` refuses any row at or
  before the bucket the model was trained up to, so a window is never scored by a model
  that saw it.
- The forest is fitted on the first 70% of the history (in time) and its scores are
  calibrated on the last 30%: a robust z of the forest's anomaly score, then the same
  tail fit as every other component, giving a p-value comparable across classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest

from twin.anomaly.calibration import tail_moments, tail_p
from twin.leakage import LeakageError

FIT_FRACTION = 0.7
MAX_FIT_ROWS = 4_096
MAX_CAL_ROWS = 20_000
MIN_ROWS = 200
N_TREES = 50


@dataclass
class MultivariateModel:
    device_class: str
    columns: list[str]
    mean: np.ndarray
    std: np.ndarray
    forest: IsolationForest
    centre: float
    spread: float
    tail: np.ndarray  # pooled tail sums of the calibration split
    trained_until: int  # last bucket in the training history

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        x = (
            frame.select(
                [
                    pl.col(c) if c in frame.columns else pl.lit(None, pl.Float64).alias(c)
                    for c in self.columns
                ]
            )
            .to_numpy()
            .astype(np.float64)
        )
        x = (x - self.mean) / self.std
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # missing -> typical

    def score(self, frame: pl.DataFrame) -> np.ndarray:
        """p-value per row of ``frame`` (device_id, bucket, feature columns)."""
        if frame.height == 0:
            return np.zeros(0)
        first = int(cast(int, frame["bucket"].min()))  # polars: any Python scalar
        if first <= self.trained_until:
            raise LeakageError(
                f"{self.device_class}: asked to score bucket {first}, but the model was "
                f"trained on history up to bucket {self.trained_until}"
            )
        raw = -self.forest.score_samples(self._matrix(frame))
        z = np.maximum(raw - self.centre, 0.0) / self.spread
        t = self.tail
        return tail_p(z, t[0], t[1], t[2], t[3])


def fit_multivariate(
    device_class: str, frame: pl.DataFrame, columns: list[str], until_bucket: int, seed: int = 0
) -> MultivariateModel | None:
    """Fit on rows with bucket <= until_bucket; None if there is too little history."""
    hist = frame.filter(pl.col("bucket") <= until_bucket)
    columns = [c for c in columns if c in hist.columns]
    if hist.height < MIN_ROWS or not columns:
        return None
    x = hist.select(columns).to_numpy().astype(np.float64)
    mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
    std = np.nanstd(np.where(np.isfinite(x), x, np.nan), axis=0)
    mean = np.nan_to_num(mean)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    buckets = hist["bucket"].to_numpy()
    lo, hi = buckets.min(), buckets.max()
    cut = lo + FIT_FRACTION * (hi - lo)
    fit_idx = np.flatnonzero(buckets <= cut)
    cal_idx = np.flatnonzero(buckets > cut)
    if len(fit_idx) < MIN_ROWS // 2 or len(cal_idx) < MIN_ROWS // 4:
        return None
    rng = np.random.default_rng(seed)
    if len(fit_idx) > MAX_FIT_ROWS:
        fit_idx = rng.choice(fit_idx, MAX_FIT_ROWS, replace=False)
    if len(cal_idx) > MAX_CAL_ROWS:
        cal_idx = rng.choice(cal_idx, MAX_CAL_ROWS, replace=False)
    model = MultivariateModel(
        device_class,
        columns,
        mean,
        std,
        IsolationForest(
            n_estimators=N_TREES, max_samples=min(256, len(fit_idx)), random_state=seed
        ),
        0.0,
        1.0,
        np.zeros(4),
        int(hi),
    )
    xm = model._matrix(hist)
    model.forest.fit(xm[fit_idx])
    raw = -model.forest.score_samples(xm[cal_idx])
    model.centre = float(np.median(raw))
    mad = float(np.median(np.abs(raw - model.centre)))
    model.spread = max(1.4826 * mad, 1e-6)
    z = np.maximum(raw - model.centre, 0.0) / model.spread
    model.tail = tail_moments(z).sum(axis=1)
    return model
