"""Datasets from simulator runs, and the evaluation of a failure model on held-out runs:
PR-AUC, precision/recall at the operating threshold, lead times, telemetry-loss delay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score

from twin.failure.features import CLASSES, compute_features
from twin.failure.model import FailureModel

BUCKET_S = 300


def run_rows(path: Path, horizon_s: float, bucket_s: int = BUCKET_S) -> pl.DataFrame:
    """Labelled feature rows of one simulator run (DuckDB file with samples, events,
    labels), from one hour after its start (the windows need history)."""
    from twin.failure.model import label_rows
    con = duckdb.connect(str(path), read_only=True)
    try:
        start, end = con.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
        feats = compute_features(con, start + timedelta(hours=1), end, bucket_s)
        labels = con.sql("SELECT fault_id, fault, device_id, onset, failure_time "
                         "FROM labels").pl()
    finally:
        con.close()
    return label_rows(feats, labels, horizon_s, path.stem)


def load_rows(paths: list[Path], horizon_s: float,
              progress: Callable[[Path], None] | None = None) -> pl.DataFrame:
    frames = []
    for p in paths:
        frames.append(run_rows(p, horizon_s))
        if progress:
            progress(p)
    return pl.concat(frames, how="diagonal_relaxed")


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if x.size else None


def evaluate(model: FailureModel, test: pl.DataFrame) -> dict:
    """Figures per component class on held-out rows.

    * rows: PR-AUC and precision/recall at the operating threshold over rows a classifier
      is judged on (precursor-less episodes excluded). `strict` counts an alarm on a
      degrading device whose failure is further out than the horizon as false;
      `early_ok` does not (it is an early warning of a real failure).
    * lead time: per failure episode with a precursor, failure time - first alarm after
      onset (minutes); missed episodes count as lead 0 and are listed.
    * telemetry loss (no precursor): delay from failure to the first tick the device is
      flagged, in ticks (bucket_s) and minutes.
    """
    scored = model.predict(test)
    out: dict = {"horizon_s": model.horizon_s, "classes": {}}
    for cls in CLASSES:
        rows = scored.filter(pl.col("device_class") == cls)
        if rows.is_empty():
            continue
        m = model.classes.get(cls)
        res: dict = {"threshold": m.threshold if m else None, "rows": rows.height}
        judged = rows.filter(pl.col("has_precursor"))
        y = judged["y"].to_numpy()
        risk = judged["risk"].to_numpy()
        alarm = judged["alarm"].to_numpy()
        early = (judged["failure_time"].is_not_null() & (judged["t"] >= judged["onset"])
                 ).to_numpy()
        res["positives"] = int(y.sum())
        res["episodes"] = int(judged.filter(pl.col("failure_time").is_not_null())["episode"]
                              .n_unique())
        if y.sum() and (1 - y).sum():
            res["pr_auc"] = float(average_precision_score(y, risk))
            tp = int((alarm & (y == 1)).sum())
            fp_strict = int((alarm & (y == 0)).sum())
            fp_early = int((alarm & (y == 0) & ~early).sum())
            res["recall"] = tp / int(y.sum())
            res["precision_strict"] = tp / max(tp + fp_strict, 1)
            res["precision_early_ok"] = tp / max(tp + fp_early, 1)
            res["false_alarm_devices"] = judged.filter(
                pl.col("alarm") & pl.col("failure_time").is_null())["device_id"].n_unique()
        res.update(_lead_times(judged))
        out["classes"][cls] = res
    return out


def _lead_times(rows: pl.DataFrame) -> dict:
    eps = rows.filter(pl.col("failure_time").is_not_null())
    if eps.is_empty():
        return {}
    first = (eps.group_by("episode").agg(
        pl.col("failure_time").first(), pl.col("fault").first(),
        pl.col("t").filter(pl.col("alarm") & (pl.col("t") >= pl.col("onset"))).min()
        .alias("first_alarm")))
    lead_min = first.with_columns(
        ((pl.col("failure_time") - pl.col("first_alarm")).dt.total_seconds() / 60.0)
        .fill_null(0.0).alias("lead_min"))
    lead = lead_min["lead_min"].to_numpy()
    return {"lead_min_p10": _pct(lead, 10), "lead_min_p50": _pct(lead, 50),
            "lead_min_p90": _pct(lead, 90),
            "episodes_caught": int((first["first_alarm"].is_not_null()).sum()),
            "episodes_missed": sorted(first.filter(pl.col("first_alarm").is_null())
                                      ["episode"].to_list())}


def loss_delays(model: FailureModel, paths: list[Path], bucket_s: int = BUCKET_S) -> dict:
    """Delay between a precursor-less failure (GPU off the bus) and the first tick its
    device is flagged lost, on the full (unlabelled) feature rows of held-out runs."""
    delays_ticks: list[float] = []
    for p in paths:
        con = duckdb.connect(str(p), read_only=True)
        try:
            start, end = con.sql("SELECT min(read_time), max(read_time) "
                                 "FROM samples").fetchall()[0]
            lab = con.sql("SELECT device_id, failure_time FROM labels "
                          "WHERE failure_time IS NOT NULL AND failure_time = onset").pl()
            if lab.is_empty():
                continue
            feats = compute_features(con, start + timedelta(hours=1), end, bucket_s)
        finally:
            con.close()
        scored = model.predict(feats).filter(pl.col("lost"))
        for dev, ft in lab.iter_rows():
            hit = scored.filter((pl.col("device_id") == dev) & (pl.col("t") >= ft))
            if hit.is_empty():
                delays_ticks.append(float("inf"))
            else:
                delays_ticks.append((hit["t"].min() - ft).total_seconds() / bucket_s)
    d = np.array(delays_ticks)
    finite = d[np.isfinite(d)]
    return {"loss_failures": int(d.size), "loss_flagged": int(finite.size),
            "loss_delay_ticks_max": float(finite.max()) if finite.size else None,
            "loss_delay_ticks_p50": _pct(finite, 50), "tick_s": bucket_s,
            "loss_within_2_ticks": int((finite <= 2).sum())}
