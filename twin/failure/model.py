"""Failure-risk model: labels, a leakage-checked time split, per-class gradient boosting
calibrated on a later time slice (isotonic with enough failure episodes there, Platt
otherwise), and a telemetry-loss rule.

Labels: a row (device, t) is positive when the device fails in (t, t + horizon]. Rows at
or after the failure are dropped (the device has failed: that is detection, not risk).
Abrupt failures with no precursor (onset == failure: a GPU off the bus) cannot be
predicted from numbers; they are caught by the telemetry-loss rule instead and their rows
are left out of the classifier's training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from twin.failure.features import CLASSES, FEATURES
from twin.leakage import LeakageError

# isotonic regression needs many positive episodes: with few it learns a step at the few
# scores it saw and the threshold lands on that step (a CRAH model calibrated on 2
# episodes alarmed only in the last 25 min); below this, a 2-parameter Platt sigmoid
MIN_ISOTONIC_EPISODES = 10
# the operating threshold catches this share of the calibration positives: above the 0.8
# target because recall over a few episodes (12 correlated rows each at 1 h) varies by
# more than 0.1 from one slice of runs to the next
CALIBRATION_RECALL = 0.9
LOST_AFTER_READS = 2.0  # 2 missed reads in a row while rack peers report: lost


def parse_horizon_s(text: str | float) -> float:
    """'30m', '1h', '24h', '1.5d', '90s' or seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"horizon: {text!r} is not a duration like 30m, 1h or 24h") from None
    if value <= 0:
        raise ValueError(f"horizon: must be > 0, got {text!r}")
    return value


def label_rows(
    feats: pl.DataFrame, labels: pl.DataFrame, horizon_s: float, run_id: str
) -> pl.DataFrame:
    """Adds y, run, episode, failure_time, onset, fault and drops rows at/after failure.

    `labels` is the simulator's ground truth (fault_id, fault, device_id, onset,
    failure_time). `episode` names the failure episode a row belongs to (null for devices
    that never fail in the run)."""
    fails = (
        labels.filter(pl.col("failure_time").is_not_null())
        .sort("failure_time")
        .group_by("device_id")
        .first()
        .select("device_id", "fault_id", "fault", "onset", "failure_time")
    )
    h = pl.duration(milliseconds=int(horizon_s * 1000))
    out = feats.join(fails, on="device_id", how="left").with_columns(
        pl.lit(run_id).alias("run"),
        pl.when(pl.col("fault_id").is_not_null())
        .then(pl.lit(run_id + ":") + pl.col("fault_id").cast(pl.String))
        .alias("episode"),
        ((pl.col("failure_time") > pl.col("t")) & (pl.col("failure_time") <= pl.col("t") + h))
        .fill_null(False)
        .cast(pl.Int8)
        .alias("y"),
        (pl.col("failure_time") > pl.col("onset")).fill_null(True).alias("has_precursor"),
    )
    return out.filter(pl.col("failure_time").is_null() | (pl.col("t") < pl.col("failure_time")))


@dataclass(frozen=True)
class Split:
    train: pl.DataFrame
    calibrate: pl.DataFrame
    test: pl.DataFrame


def check_disjoint(
    earlier: pl.DataFrame,
    later: pl.DataFrame,
    horizon_s: float,
    names: tuple[str, str] = ("train", "test"),
) -> None:
    """Raises LeakageError unless every row of `earlier`, including the horizon its label
    looks ahead, ends before the first row of `later`, and no failure episode or run is
    in both."""
    if earlier.is_empty() or later.is_empty():
        raise LeakageError(f"{names[0] if earlier.is_empty() else names[1]}: no rows")
    # polars types a Series' max/min as any Python scalar; `t` is a Datetime column
    end = cast(datetime, earlier["t"].max())
    first = cast(datetime, later["t"].min())
    if end + timedelta(seconds=horizon_s) >= first:
        raise LeakageError(
            f"{names[0]} ends at {end} and its labels look {horizon_s:.0f} s "
            f"ahead, past the start of {names[1]} ({first})"
        )
    shared = set(earlier["episode"].drop_nulls()) & set(later["episode"].drop_nulls())
    if shared:
        raise LeakageError(
            f"failure episodes in both {names[0]} and {names[1]}: {sorted(shared)[:5]}"
        )
    runs = set(earlier["run"]) & set(later["run"])
    if runs:
        raise LeakageError(f"runs in both {names[0]} and {names[1]}: {sorted(runs)[:5]}")


def time_split(
    rows: pl.DataFrame, horizon_s: float, calibrate_runs: int = 1, test_runs: int = 2
) -> Split:
    """Whole runs in time order: the earliest for training, then calibration, then test.
    Checked with check_disjoint, so a split that leaks cannot be returned."""
    order = (
        rows.group_by("run").agg(pl.col("t").min().alias("start")).sort("start")["run"].to_list()
    )
    if len(order) < calibrate_runs + test_runs + 1:
        raise ValueError(f"runs: need at least {calibrate_runs + test_runs + 1}, got {len(order)}")
    n_train = len(order) - calibrate_runs - test_runs
    parts = (
        order[:n_train],
        order[n_train : n_train + calibrate_runs],
        order[n_train + calibrate_runs :],
    )
    train, cal, test = (rows.filter(pl.col("run").is_in(p)) for p in parts)
    check_disjoint(train, cal, horizon_s, ("train", "calibrate"))
    check_disjoint(cal, test, horizon_s, ("calibrate", "test"))
    check_disjoint(train, test, horizon_s, ("train", "test"))
    return Split(train, cal, test)


def _trainable(rows: pl.DataFrame, horizon_s: float) -> pl.DataFrame:
    """Rows a classifier learns from: all but precursor-less episodes. The rows of a
    degrading device whose failure is further out than the horizon stay in as negatives,
    so the model learns how close the failure is, not only that a device is odd."""
    return rows.filter(pl.col("has_precursor"))


class PlattCalibrator:
    """Sigmoid on the classifier's log-odds (Platt scaling), fit on the calibration slice;
    monotone, so it keeps the ranking and never collapses scores into steps."""

    def __init__(self) -> None:
        self.lr = LogisticRegression(C=1e4)

    def fit(self, raw: np.ndarray, y: np.ndarray) -> PlattCalibrator:
        self.lr.fit(raw.reshape(-1, 1), y)
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return self.lr.predict_proba(np.asarray(raw).reshape(-1, 1))[:, 1]


def _calibrator(raw: np.ndarray, y: np.ndarray, episodes: int):
    """Isotonic with >= MIN_ISOTONIC_EPISODES positive episodes in the slice, else Platt."""
    if episodes >= MIN_ISOTONIC_EPISODES:
        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(
            raw, y
        ), "isotonic"
    return PlattCalibrator().fit(raw, y), "platt"


@dataclass
class ClassModel:
    features: list[str]
    clf: HistGradientBoostingClassifier | None
    iso: IsotonicRegression | PlattCalibrator | None  # maps log-odds to risk
    threshold: float
    baseline: dict[str, float]  # healthy medians, for explanations
    importance: dict[str, float]
    base_rate: float
    n_train: int
    n_pos: int
    calibration: str = "none"  # isotonic | platt
    calibration_episodes: int = 0
    # FEATURES of the class with no value in the training rows (a metric the site does
    # not report): left out of `features`. A tuple, so models pickled before this field
    # existed read the class default
    unreported: tuple[str, ...] = ()

    def risk(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probability of failure within the horizon for feature rows x."""
        if self.clf is None or self.iso is None:
            raise ValueError("no classifier for this class (too few positives to train one)")
        return self.iso.predict(self.clf.decision_function(x))


@dataclass
class FailureModel:
    horizon_s: float
    classes: dict[str, ClassModel] = field(default_factory=dict)
    target_recall: float = CALIBRATION_RECALL

    def fit(self, train: pl.DataFrame, calibrate: pl.DataFrame, progress=None) -> FailureModel:
        for cls in CLASSES:
            tr = _trainable(train.filter(pl.col("device_class") == cls), self.horizon_s)
            ca = _trainable(calibrate.filter(pl.col("device_class") == cls), self.horizon_s)
            # a feature with no value in any training row (the site reports no ECC, say)
            # carries nothing to learn, and an all-NaN column breaks the trees' binning:
            # the class model leaves it out, and scoring reads only the model's features
            feats, unreported = reported_features(tr, FEATURES[cls])
            y = tr["y"].to_numpy()
            healthy = tr.filter(pl.col("failure_time").is_null())
            baseline = {f: float(cast(float | None, healthy[f].median()) or 0.0) for f in feats}
            yc_all = ca["y"].to_numpy()
            # a calibration slice without positives (a site's records, a quiet quarter)
            # cannot place a threshold: no classifier for the class, as with too few
            # training positives
            if (
                not feats
                or y.sum() < 2
                or (len(y) - y.sum()) < 2
                or yc_all.sum() == 0
                or yc_all.all()
            ):
                self.classes[cls] = ClassModel(
                    feats,
                    None,
                    None,
                    1.0,
                    baseline,
                    {},
                    0.0,
                    len(y),
                    int(y.sum()),
                    unreported=unreported,
                )
                continue
            # small, regularised trees: a few dozen failure episodes per class, and
            # scores that do not saturate keep the threshold stable from run to run
            clf = HistGradientBoostingClassifier(
                max_iter=200,
                learning_rate=0.05,
                max_leaf_nodes=7,
                min_samples_leaf=50,
                l2_regularization=1.0,
                class_weight="balanced",
                random_state=0,
            )
            clf.fit(_x(tr, feats), y)
            raw = clf.decision_function(_x(ca, feats))
            yc = ca["y"].to_numpy()
            n_eps = ca.filter(pl.col("y") == 1)["episode"].n_unique()
            iso, how = _calibrator(raw, yc, n_eps)
            prob = iso.predict(raw)
            thr = _operating_threshold(prob, yc, self.target_recall)
            imp = _importance(clf, ca, feats, yc)
            self.classes[cls] = ClassModel(
                feats,
                clf,
                iso,
                thr,
                baseline,
                imp,
                float(y.mean()),
                len(y),
                int(y.sum()),
                how,
                n_eps,
                unreported,
            )
            if progress is not None:
                progress(cls)
        return self

    def predict(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Adds risk (calibrated probability of failure within the horizon), alarm, lost."""
        risk = np.zeros(rows.height)
        thr = np.ones(rows.height)
        cls_col = rows["device_class"].to_numpy()
        for cls, m in self.classes.items():
            idx = np.flatnonzero(cls_col == cls)
            if idx.size == 0 or m.clf is None:
                continue
            sub = rows[idx]
            risk[idx] = m.risk(_x(sub, m.features))
            thr[idx] = m.threshold
        out = rows.with_columns(pl.Series("model_risk", risk), pl.Series("threshold", thr))
        out = out.with_columns(lost_flag(out))
        return out.with_columns(
            pl.when(pl.col("lost")).then(1.0).otherwise(pl.col("model_risk")).alias("risk")
        ).with_columns((pl.col("risk") >= pl.col("threshold")).alias("alarm"))


def lost_flag(rows: pl.DataFrame) -> pl.Expr:
    """Telemetry loss: an XID 79, or a device silent for LOST_AFTER_READS read intervals
    (its last 2 reads missing) while a peer of its class in its rack still reports (so the
    collector is up); a whole silent rack is a collector problem, not a device failure."""
    peer_fresh = pl.col("stale_reads").min().over(["t", "rack", "device_class"]) < LOST_AFTER_READS
    silent = (pl.col("stale_reads") >= LOST_AFTER_READS) & peer_fresh
    return ((pl.col("xid79_2h").fill_null(0) > 0) | silent.fill_null(False)).alias("lost")


def reported_features(rows: pl.DataFrame, feats: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """(the features with at least one value in `rows`, the ones with none). A column
    absent from `rows` counts as having none."""
    have = [
        f
        for f in feats
        if f in rows.columns and rows[f].cast(pl.Float64).fill_nan(None).null_count() < rows.height
    ]
    return have, tuple(f for f in feats if f not in have)


def _x(rows: pl.DataFrame, feats: list[str]) -> np.ndarray:
    """The model's own feature columns, in its order: the store may compute more (a newer
    feature set) and the model ignores them; a column the store no longer computes is
    missing (NaN), which the trees handle as they do any missing value."""
    have = set(rows.columns)
    return rows.select(
        [
            pl.col(f).cast(pl.Float64) if f in have else pl.lit(None, pl.Float64).alias(f)
            for f in feats
        ]
    ).to_numpy()


def _operating_threshold(prob: np.ndarray, y: np.ndarray, recall: float) -> float:
    """The highest threshold whose recall on the calibration slice is >= `recall` (the
    most precise point that still catches enough); 0.5 when there are no positives."""
    if y.sum() == 0:
        return 0.5
    cands = np.unique(prob)[::-1]
    for c in cands:
        if (prob[y == 1] >= c).mean() >= recall:
            return float(max(c, 1e-6))
    return float(cands[-1])


def _importance(clf, rows: pl.DataFrame, feats: list[str], y: np.ndarray) -> dict[str, float]:
    """Permutation importance on the calibration slice (drop in average precision)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import average_precision_score

    if y.sum() == 0:
        return {f: 1.0 / len(feats) for f in feats}
    keep = (
        np.flatnonzero(y == 1).tolist() + np.flatnonzero(y == 0)[:: max(1, len(y) // 5000)].tolist()
    )
    r = permutation_importance(
        clf,
        _x(rows[keep], feats),
        y[keep],
        n_repeats=1,
        random_state=0,
        scoring=lambda est, x, yy: average_precision_score(yy, est.predict_proba(x)[:, 1]),
    )
    imp = np.clip(r.importances_mean, 0.0, None)
    total = imp.sum() or 1.0
    return {f: float(v / total) for f, v in zip(feats, imp, strict=True)}
