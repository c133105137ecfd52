"""Serving: current failure risk of every GPU, PSU, CDU pump and CRAH fan.

`failure_risks(store, now, horizon_s)` is what a server tick calls: it computes the
as-of features over the last LOOKBACK_S of the store, scores them with the newest
approved model for that horizon, adds explanations and returns a ranked table. Devices
with a failure event in the lookback are reported as failed (risk 1).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from twin.failure import registry
from twin.failure.explain import explain
from twin.failure.features import failed_devices, features_asof

_cache: dict[tuple[str, float], registry.ModelVersion] = {}
_models: dict[str, object] = {}
_lock = threading.Lock()


def serving_model(horizon_s: float, root: Path = registry.DEFAULT_ROOT):
    """(model, version) of the newest approved model; reloads when a newer one appears."""
    v = registry.newest_approved(root, horizon_s)
    with _lock:
        if v.version not in _models:
            _models[v.version] = v.load()
        return _models[v.version], v


def failure_risks(
    store,
    now: datetime | None = None,
    horizon_s: float = 3600.0,
    root: Path = registry.DEFAULT_ROOT,
    top_reasons: int = 3,
) -> pl.DataFrame:
    """Ranked risk table: device_id, device_class, rack, risk, alarm, status, reasons,
    model_version, horizon_s, t. `store` is an ingest Store (or anything with cursor())."""
    now = (now or datetime.now(UTC)).replace(tzinfo=None)
    model, version = serving_model(horizon_s, root)
    cur = store.cursor()
    feats = features_asof(cur, now)
    if feats.is_empty():
        return _empty()
    scored = model.predict(feats)
    reasons = explain(model, scored, top=top_reasons)
    failed = failed_devices(cur, now)
    out = scored.select(
        "device_id", "device_class", "rack", "t", "risk", "alarm", "lost", "threshold"
    ).with_columns(
        pl.Series("reasons", [[r["text"] for r in rs] for rs in reasons], dtype=pl.List(pl.String))
    )
    out = (
        out.join(failed, on="device_id", how="left")
        .with_columns(
            pl.when(pl.col("failed_at").is_not_null())
            .then(pl.lit("failed"))
            .when(pl.col("lost"))
            .then(pl.lit("lost"))
            .when(pl.col("alarm"))
            .then(pl.lit("at_risk"))
            .otherwise(pl.lit("ok"))
            .alias("status"),
            pl.when(pl.col("failed_at").is_not_null())
            .then(1.0)
            .otherwise(pl.col("risk"))
            .alias("risk"),
            pl.when(pl.col("failed_at").is_not_null())
            .then(pl.concat_list(pl.col("message").cast(pl.String), pl.col("reasons")))
            .otherwise(pl.col("reasons"))
            .alias("reasons"),
        )
        .with_columns(pl.col("alarm") | pl.col("failed_at").is_not_null())
    )
    return (
        out.drop("message", "failed_at", "lost")
        .with_columns(
            pl.lit(version.version).alias("model_version"),
            pl.lit(float(horizon_s)).alias("horizon_s"),
        )
        .sort("risk", descending=True)
    )


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "device_id": pl.String,
            "device_class": pl.String,
            "rack": pl.String,
            "t": pl.Datetime,
            "risk": pl.Float64,
            "alarm": pl.Boolean,
            "threshold": pl.Float64,
            "reasons": pl.List(pl.String),
            "status": pl.String,
            "model_version": pl.String,
            "horizon_s": pl.Float64,
        }
    )
