"""Real-world evaluation: dctwin's detector and two baselines on SKAB, its own scoring.

Issue #20, part anom-real. Protocol (fixed before any held-out recording was scored):

- **Corpus**: SKAB v0.9 (experiments/anomaly/skab.py), 34 labelled recordings.
- **Time order, twice**: within a recording, the first 400 rows (SKAB's own split) fit,
  the rest is scored, causally; across recordings, the 14 recorded before 2020-03-05
  (``other/``) are for development, the 20 recorded on 2020-03-09 (``valve1/``,
  ``valve2/``) are held out and were scored once the methods were fixed.
- **Thresholds** never see the labels of the recordings they score: each method has a
  fixed rule (dctwin: score >= 0.5, its documented default, p = 1e-4 per point; rolling
  z: |z| >= 3 on any sensor; IsolationForest: SKAB's own notebook, contamination
  0.0005); and, second, a threshold chosen on the development recordings only (the best
  F1, and separately the best NAB standard score), applied to the held-out ones.
- **Scoring**: SKAB's (pointwise F1, FAR, MAR on ``anomaly``; NAB standard / LowFP /
  LowFN on ``changepoint`` with 60 s windows right of each changepoint).
- Seeded (IsolationForest ``random_state=0``, one thread): the same numbers twice.

Methods, all on the 8 sensors of a recording:

- ``dctwin``: the fleet scorer's two per-metric components for one device: the
  streaming deviation (twin/anomaly/streaming.py, primed on the first 400 rows) and a
  frozen-reference residual (``target ~ 1``: centre from the first 70 % of the fit rows,
  scale and tail fit from the last 30 %, smoothed over 1, 6 and 30 intervals, as
  twin/anomaly/residuals.py does), combined Bonferroni-style into one device p.
- ``rolling_z``: per sensor, z against the mean and standard deviation of the previous
  60 rows; the score is the largest |z| over sensors.
- ``isolation_forest``: scikit-learn's, fitted on the first 400 rows (SKAB's baseline:
  ``predict``, then a rolling median of 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from experiments.anomaly.skab import (
    TRAIN_ROWS,
    Confusion,
    Nab,
    Recording,
    alarms_to_changepoints,
)
from twin.anomaly.calibration import combine_p, p_to_score, tail_moments, tail_p
from twin.anomaly.scan import ew_scan
from twin.anomaly.streaming import score_points

SMOOTHING_INTERVALS = (1.0, 6.0, 30.0)  # as twin/anomaly/residuals.py
FIT_SHARE = 0.7  # of the fit rows: centre; the rest: out-of-sample scale and tail fit
ROLLING_Z_ROWS = 60
IF_SEED = 0
IF_CONTAMINATION = 0.0005  # SKAB's isolation_forest notebook

# score grids for the thresholds chosen on the development recordings
GRIDS: dict[str, np.ndarray] = {
    "dctwin": np.round(np.arange(0.1, 1.0001, 0.025), 4),
    "dctwin_device": np.round(np.arange(0.1, 1.0001, 0.025), 4),
    "rolling_z": np.round(np.arange(2.0, 12.0001, 0.25), 4),
    "isolation_forest": np.round(np.arange(-0.1, 0.3001, 0.01), 4),
}
FIXED_THRESHOLDS = {
    "dctwin": 0.5,
    "dctwin_device": 0.5,
    "rolling_z": 3.0,
    "isolation_forest": 0.0,
}
METHODS = tuple(FIXED_THRESHOLDS)


# --- the three methods: a score per scored row (higher = more anomalous) --------------


def dctwin_scores(rec: Recording, train_rows: int = TRAIN_ROWS) -> dict[str, np.ndarray]:
    """Per row after the fit rows (0 while warming up): the device score (both components,
    for SKAB's outlier task) and the change score (the streaming component alone, for
    its changepoint task): "this device is not in its reference state" and "this device
    just changed" are different questions, and dctwin answers both."""
    n, k = rec.x.shape
    # streaming deviation: the channels laid end to end, primed by the fit rows
    res, _ = score_points(np.tile(rec.t_s, k), rec.x.T.ravel(), np.arange(k) * n)
    p_stream = res.p.reshape(k, n)
    p_ref = np.stack([_reference_p(rec.x[:, j], train_rows) for j in range(k)])
    p_device = combine_p(np.concatenate([p_stream, p_ref]), axis=0)
    p_change = combine_p(p_stream, axis=0)
    return {
        "outlier": np.nan_to_num(p_to_score(p_device), nan=0.0)[train_rows:],
        "change": np.nan_to_num(p_to_score(p_change), nan=0.0)[train_rows:],
    }


def dctwin_device_scores(rec: Recording, train_rows: int = TRAIN_ROWS) -> dict[str, np.ndarray]:
    """The device score for both tasks (reported alongside, for comparison)."""
    out = dctwin_scores(rec, train_rows)
    return {"outlier": out["outlier"], "change": out["outlier"]}


def _reference_p(x: np.ndarray, train_rows: int) -> np.ndarray:
    """Frozen-reference p per row of one sensor (the fleet's residual rule, no drivers)."""
    n_fit = max(2, int(train_rows * FIT_SHARE))
    fit, cal = x[:n_fit], x[n_fit:train_rows]
    centre = float(np.median(fit))
    steps = np.diff(np.unique(fit))
    resolution = float(steps.min()) if len(steps) else 0.0
    mad = 1.4826 * float(np.median(np.abs(fit - centre)))
    scale = max(mad, resolution, 1e-9 + 1e-6 * abs(centre))
    c = (x - centre) / scale
    ps = []
    for tau in SMOOTHING_INTERVALS:
        d = math.exp(-1.0 / tau)
        w, s = ew_scan(np.stack([np.ones(len(c)), c]), np.full(len(c), d))
        sm = s / w
        white = math.sqrt((1 - d) / (1 + d))  # a unit white noise's smoothed spread
        sd = max(float(np.sqrt(np.mean(sm[n_fit:train_rows] ** 2))), white)
        z = np.abs(sm) / sd
        tails = tail_moments(z[n_fit:train_rows]).sum(axis=1)
        ps.append(tail_p(z, *tails))
    if len(cal) == 0:
        return np.full(len(x), np.nan)
    return combine_p(np.stack(ps), axis=0)


def rolling_z_scores(rec: Recording, train_rows: int = TRAIN_ROWS) -> dict[str, np.ndarray]:
    f = pl.DataFrame(rec.x, schema=[f"c{j}" for j in range(rec.x.shape[1])], orient="row")
    prev = [pl.col(c).shift(1) for c in f.columns]
    z = f.select(
        [
            (
                (pl.col(c) - p.rolling_mean(ROLLING_Z_ROWS, min_samples=10))
                / p.rolling_std(ROLLING_Z_ROWS, min_samples=10)
            )
            .abs()
            .alias(c)
            for c, p in zip(f.columns, prev, strict=True)
        ]
    ).to_numpy()
    z = np.where(np.isfinite(z), z, 0.0)  # a constant window: no evidence either way
    score = z.max(axis=1)[train_rows:]
    return {"outlier": score, "change": score}


def isolation_forest_scores(rec: Recording, train_rows: int = TRAIN_ROWS) -> dict[str, np.ndarray]:
    """Minus sklearn's decision function: > 0 is what ``predict`` calls an outlier."""
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(random_state=IF_SEED, contamination=IF_CONTAMINATION, n_jobs=1)
    model.fit(rec.x[:train_rows])
    score = -model.decision_function(rec.x[train_rows:])
    return {"outlier": score, "change": score}


SCORERS: dict[str, Callable[[Recording], dict[str, np.ndarray]]] = {
    "dctwin": dctwin_scores,
    "dctwin_device": dctwin_device_scores,
    "rolling_z": rolling_z_scores,
    "isolation_forest": isolation_forest_scores,
}


def alarms(method: str, scores: np.ndarray, threshold: float) -> np.ndarray:
    a = scores >= threshold if method != "isolation_forest" else scores > threshold
    if method == "isolation_forest":  # SKAB's baseline: rolling median of 3 of predict
        m = np.zeros(len(a), dtype=bool)
        if len(a) >= 3:
            win = np.lib.stride_tricks.sliding_window_view(a.astype(int), 3).sum(axis=1)
            m[2:] = win >= 2
        a = m
    return a


# --- protocol ---------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    rule: str  # "fixed" or "dev-chosen" (best F1 / best NAB standard on development)
    threshold_outlier: float
    threshold_change: float
    confusion: Confusion
    nab: Nab

    def as_dict(self) -> dict[str, object]:
        nab = self.nab.values()
        return {
            "method": self.method,
            "rule": self.rule,
            "threshold_outlier": self.threshold_outlier,
            "threshold_change": self.threshold_change,
            "f1": round(self.confusion.f1(), 4),
            "far_pct": round(self.confusion.far_pct(), 2),
            "mar_pct": round(self.confusion.mar_pct(), 2),
            "nab_standard": round(nab["Standard"], 2),
            "nab_lowfp": round(nab["LowFP"], 2),
            "nab_lowfn": round(nab["LowFN"], 2),
            "missed_cps": self.nab.missed,
            "false_cps": self.nab.false_pos,
        }


@dataclass
class RealWorldResult:
    recordings: dict[str, list[str]]  # split -> names
    rows: dict[str, list[Row]] = field(default_factory=dict)  # split -> rows

    def as_dict(self) -> dict[str, object]:
        return {
            "recordings": self.recordings,
            "results": {s: [r.as_dict() for r in rows] for s, rows in self.rows.items()},
        }

    def acceptance(self, split: str = "held_out") -> dict[str, bool]:
        """dctwin beats both baselines on the held-out recordings: F1 (outlier task) and
        NAB standard (changepoint task), under each threshold rule."""
        out = {}
        rows = self.rows.get(split, [])
        for rule in ("fixed", "dev-chosen"):
            by = {r.method: r.as_dict() for r in rows if r.rule == rule}
            if "dctwin" not in by:
                continue
            for key in ("f1", "nab_standard"):
                mine = float(by["dctwin"][key])  # type: ignore[arg-type]
                out[f"{rule} {key}"] = all(
                    mine > float(by[b][key])  # type: ignore[arg-type]
                    for b in ("rolling_z", "isolation_forest")
                    if b in by
                )
        return out


def _score(
    method: str,
    recs: Sequence[Recording],
    scores: dict[str, dict[str, np.ndarray]],
    thr_outlier: float,
    thr_change: float,
) -> tuple[Confusion, Nab]:
    conf, nab = Confusion(), Nab.empty()
    for rec in recs:
        sc = scores[rec.name]
        conf.add(rec.anomaly[TRAIN_ROWS:], alarms(method, sc["outlier"], thr_outlier))
        cp = alarms_to_changepoints(alarms(method, sc["change"], thr_change))
        nab.add(rec.t_s[TRAIN_ROWS:], rec.changepoint[TRAIN_ROWS:], cp)
    return conf, nab


def evaluate_realworld(
    recordings: Sequence[Recording],
    progress: Callable[[str, str], None] | None = None,
) -> RealWorldResult:
    """Score every recording with every method; report per split and rule."""
    dev = [r for r in recordings if not r.held_out]
    held = [r for r in recordings if r.held_out]
    splits = {"held_out": held, "development": dev, "all": list(recordings)}
    result = RealWorldResult({k: [r.name for r in v] for k, v in splits.items()})
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for method in METHODS:
        scores[method] = {}
        for rec in recordings:
            scores[method][rec.name] = SCORERS[method](rec)
            if progress is not None:
                progress(method, rec.name)
    # thresholds (outlier task, changepoint task) from the development recordings only
    chosen: dict[str, dict[str, tuple[float, float]]] = {
        m: {"fixed": (FIXED_THRESHOLDS[m], FIXED_THRESHOLDS[m])} for m in METHODS
    }
    for method in METHODS:
        if not dev:
            continue
        best_f1, best_nab = (-math.inf, 0.0), (-math.inf, 0.0)
        for thr in GRIDS[method]:
            conf, nab = _score(method, dev, scores[method], float(thr), float(thr))
            best_f1 = max(best_f1, (conf.f1(), -float(thr)))
            best_nab = max(best_nab, (nab.values()["Standard"], -float(thr)))
        chosen[method]["dev-chosen"] = (-best_f1[1], -best_nab[1])
    for split, recs in splits.items():
        if not recs:
            continue
        rows = []
        for method in METHODS:
            for rule, (t_out, t_cp) in chosen[method].items():
                conf, nab = _score(method, recs, scores[method], t_out, t_cp)
                rows.append(Row(method, rule, t_out, t_cp, conf, nab))
        result.rows[split] = rows
    return result


def format_report(result: RealWorldResult) -> str:
    lines = []
    for split, rows in result.rows.items():
        lines.append(f"{split} ({len(result.recordings[split])} recordings)")
        lines.append(
            f"  {'method':<17}{'rule':<11}{'thr out/cp':>13}  {'F1':>5} {'FAR%':>6} {'MAR%':>6}"
            f"  {'NAB std':>7} {'LowFP':>7} {'LowFN':>7}  {'missed':>6} {'FP':>4}"
        )
        for r in rows:
            d = r.as_dict()
            lines.append(
                f"  {r.method:<17}{r.rule:<11}"
                f"{r.threshold_outlier:>6.3f}/{r.threshold_change:<6.3f}"
                f"  {d['f1']:>5.2f} "
                f"{d['far_pct']:>6.2f} {d['mar_pct']:>6.2f}  {d['nab_standard']:>7.2f} "
                f"{d['nab_lowfp']:>7.2f} {d['nab_lowfn']:>7.2f}  {d['missed_cps']:>6} "
                f"{d['false_cps']:>4}"
            )
    return "\n".join(lines)
