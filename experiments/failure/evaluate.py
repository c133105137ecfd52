"""Datasets from simulator runs, and the evaluation of a failure model on held-out runs:
PR-AUC, precision/recall at the operating threshold, lead times, telemetry-loss delay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, precision_recall_curve

from twin.failure.features import CLASSES, compute_features
from twin.failure.model import FailureModel

BUCKET_S = 300


def run_rows(
    path: Path, horizon_s: float, bucket_s: int = BUCKET_S, threads: int | None = None
) -> pl.DataFrame:
    """Labelled feature rows of one simulator run (DuckDB file with samples, events,
    labels), from one hour after its start (the windows need history). `threads=1`:
    bit-for-bit the same features every time (parallel float sums differ by ~1e-13)."""
    from twin.failure.model import label_rows

    config: dict[str, str | bool | int | float | list[str]] = (
        {"threads": threads} if threads else {}
    )
    con = duckdb.connect(str(path), read_only=True, config=config)
    try:
        start, end = con.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
        feats = compute_features(con, start + timedelta(hours=1), end, bucket_s)
        labels = con.sql("SELECT fault_id, fault, device_id, onset, failure_time FROM labels").pl()
    finally:
        con.close()
    return label_rows(feats, labels, horizon_s, path.stem)


def load_rows(
    paths: list[Path],
    horizon_s: float,
    progress: Callable[[Path], None] | None = None,
    threads: int | None = None,
) -> pl.DataFrame:
    frames = []
    for p in paths:
        frames.append(run_rows(p, horizon_s, threads=threads))
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
        res: dict = {
            "threshold": m.threshold if m else None,
            "rows": rows.height,
            "calibration": getattr(m, "calibration", None),
        }
        judged = rows.filter(pl.col("has_precursor"))
        y = judged["y"].to_numpy()
        risk = judged["risk"].to_numpy()
        alarm = judged["alarm"].to_numpy()
        early = (judged["failure_time"].is_not_null() & (judged["t"] >= judged["onset"])).to_numpy()
        res["positives"] = int(y.sum())
        res["episodes"] = int(
            judged.filter(pl.col("failure_time").is_not_null())["episode"].n_unique()
        )
        if y.sum() and (1 - y).sum():
            res["pr_auc"] = float(average_precision_score(y, risk))
            # the best precision any threshold reaches at recall >= 0.8 on these rows: is
            # the ranking good enough, whatever the calibrated threshold did
            p_curve, r_curve, _ = precision_recall_curve(y, risk)
            res["precision_at_recall_0.8"] = float(p_curve[r_curve >= 0.8].max())
            tp = int((alarm & (y == 1)).sum())
            fp_strict = int((alarm & (y == 0)).sum())
            fp_early = int((alarm & (y == 0) & ~early).sum())
            res["recall"] = tp / int(y.sum())
            res["precision_strict"] = tp / max(tp + fp_strict, 1)
            res["precision_early_ok"] = tp / max(tp + fp_early, 1)
            res["false_alarm_devices"] = judged.filter(
                pl.col("alarm") & pl.col("failure_time").is_null()
            )["device_id"].n_unique()
        res.update(_lead_times(judged))
        out["classes"][cls] = res
    return out


def _lead_times(rows: pl.DataFrame) -> dict:
    eps = rows.filter(pl.col("failure_time").is_not_null())
    if eps.is_empty():
        return {}
    first = eps.group_by("episode").agg(
        pl.col("failure_time").first(),
        pl.col("fault").first(),
        pl.col("t")
        .filter(pl.col("alarm") & (pl.col("t") >= pl.col("onset")))
        .min()
        .alias("first_alarm"),
    )
    lead_min = first.with_columns(
        ((pl.col("failure_time") - pl.col("first_alarm")).dt.total_seconds() / 60.0)
        .fill_null(0.0)
        .alias("lead_min")
    )
    lead = lead_min["lead_min"].to_numpy()
    return {
        "lead_min_p10": _pct(lead, 10),
        "lead_min_p50": _pct(lead, 50),
        "lead_min_p90": _pct(lead, 90),
        "episodes_caught": int((first["first_alarm"].is_not_null()).sum()),
        "episodes_missed": sorted(
            first.filter(pl.col("first_alarm").is_null())["episode"].to_list()
        ),
    }


def loss_delays(paths: list[Path], max_reads: int = 20) -> dict:
    """Delay, in read intervals, between each precursor-less failure (GPU off the bus) of
    held-out runs and the first read time at which the telemetry-loss rule flags it.

    The rule is evaluated as of every read time from the failure on (features with
    buckets of one read interval, so t steps read by read), once with every signal and
    once with XID 79 hidden (silence while rack peers report, alone). A failure not
    flagged within `max_reads` counts as missed."""
    from twin.failure.model import lost_flag

    all_d: list[float] = []
    silent_d: list[float] = []
    for p in paths:
        con = duckdb.connect(str(p), read_only=True)
        try:
            lab = con.sql(
                "SELECT device_id, failure_time FROM labels "
                "WHERE failure_time IS NOT NULL AND failure_time = onset"
            ).fetchall()
            for dev, ft in lab:
                step_s = con.sql(
                    "SELECT median(d) FROM (SELECT epoch(read_time - lag(read_time)"
                    " OVER (ORDER BY read_time)) AS d FROM (SELECT DISTINCT "
                    "read_time FROM samples WHERE device_id = $dev))",
                    params={"dev": dev},
                ).fetchall()[0][0]
                b = max(1, round(step_s))
                # evaluate at the rack's read times from the failure on (when the twin
                # learns anything about the rack)
                rack, t0 = con.sql(
                    "SELECT any_value(rack), (SELECT min(read_time) FROM samples s2 WHERE "
                    "s2.rack = any_value(s.rack) AND s2.read_time >= $ft) FROM samples s "
                    "WHERE device_id = $dev",
                    params={"dev": dev, "ft": ft},
                ).fetchall()[0]
                t0 = t0.replace(microsecond=0)
                feats = compute_features(
                    con, t0, t0 + timedelta(seconds=b * (max_reads - 1)), b, classes=("gpu",)
                )
                rows = feats.filter(pl.col("rack") == rack)
                for out, hide in ((all_d, False), (silent_d, True)):
                    r = rows.with_columns(pl.lit(0).alias("xid79_2h")) if hide else rows
                    hit = r.with_columns(lost_flag(r)).filter(
                        pl.col("lost") & (pl.col("device_id") == dev) & (pl.col("t") >= ft)
                    )
                    out.append(
                        (hit["t"].min() - ft).total_seconds() / b if hit.height else float("inf")
                    )
        finally:
            con.close()

    def stats(d: list[float], tag: str) -> dict:
        a = np.array(d)
        fin = a[np.isfinite(a)]
        return {
            f"{tag}flagged": int(fin.size),
            f"{tag}within_2_reads": int((fin <= 2).sum()),
            f"{tag}delay_reads_p50": _pct(fin, 50),
            f"{tag}delay_reads_p90": _pct(fin, 90),
            f"{tag}delay_reads_max": float(fin.max()) if fin.size else None,
            f"{tag}delays_reads": [None if not np.isfinite(x) else x for x in a.tolist()],
        }

    return {
        "loss_failures": len(all_d),
        **stats(all_d, "loss_"),
        **stats(silent_d, "silence_only_"),
    }
