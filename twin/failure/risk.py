"""Serving: current failure risk of every GPU, PSU, CDU pump and CRAH fan.

`failure_risks(store, now, horizon_s)` is the reference scoring pass: it computes the
as-of features over the last LOOKBACK_S of the store in SQL, scores them with the newest
approved model for that horizon, adds explanations and returns a ranked table. Devices
with a failure event in the lookback are reported as failed (risk 1). The server's
`FailureRiskService` gets the same feature rows incrementally (`twin/failure/live.py`)
and scores them with the same `risk_table`.

Reasons are computed only where someone will read them: for every device whose risk is
at least REASON_FLOOR, and every lost or failed device (its first reason is the loss or
the failure). Below the floor a device's reasons are empty: occlusion costs one batched
model call per (row, feature), and at fleet scale almost every device is far below it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from twin.failure import registry
from twin.failure.explain import explain
from twin.failure.features import failed_devices, features_asof

REASON_FLOOR = 0.05  # explain devices at or above this risk (and lost/failed ones)


class ServingModels:
    """The newest approved model per (registry, horizon), loaded once and reloaded when a
    newer one is approved; the one it replaces is dropped (bounded). Owned by whoever
    serves (`FailureRiskService`, a bench); safe to share between threads."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, float], tuple[str, object]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        horizon_s: float,
        root: Path = registry.DEFAULT_ROOT,
        version: registry.ModelVersion | None = None,
    ):
        """(model, version); RegistryError when none is approved or it cannot be loaded.
        `version`: the newest approved one as the caller already found it (its label then
        names the model that scored, even if another is approved meanwhile)."""
        v = version or registry.newest_approved(root, horizon_s)
        key = (Path(root), float(horizon_s))
        with self._lock:
            held = self._loaded.get(key)
            if held is None or held[0] != v.version:
                held = (v.version, v.load())
                self._loaded[key] = held
            return held[1], v


def failure_risks(
    store,
    now: datetime | None = None,
    horizon_s: float = 3600.0,
    root: Path = registry.DEFAULT_ROOT,
    top_reasons: int = 3,
    models: ServingModels | None = None,
    version: registry.ModelVersion | None = None,
) -> pl.DataFrame:
    """Ranked risk table: device_id, device_class, rack, risk, alarm, status, reasons,
    model_version, horizon_s, t. `store` is an ingest Store (or anything with cursor()).
    `models`: the caller's loaded models (default: the model is loaded for this call);
    `version`: the approved version to score with (default: the newest)."""
    now = (now or datetime.now(UTC)).replace(tzinfo=None)
    model, version = (models or ServingModels()).get(horizon_s, root, version)
    cur = store.cursor()
    feats = features_asof(cur, now)
    if feats.is_empty():
        return _empty()
    return risk_table(
        feats, model, version.version, failed_devices(cur, now), horizon_s, top_reasons
    )


def risk_table(
    feats: pl.DataFrame,
    model,
    version: str,
    failed: pl.DataFrame,
    horizon_s: float,
    top_reasons: int = 3,
    reason_floor: float = REASON_FLOOR,
) -> pl.DataFrame:
    """Score feature rows (one per device) into the ranked table, reasons for the devices
    at or above `reason_floor` and every lost one (batched occlusion over those rows)."""
    if feats.is_empty():
        return _empty()
    # one OpenMP thread: the trees are scored one by one, and with a thread pool per
    # tree the synchronisation costs more than the work (3x the CPU at 3,600 rows)
    with threadpool_limits(limits=1, user_api="openmp"):
        scored = model.predict(feats)
        need = np.flatnonzero(
            ((scored["risk"] >= reason_floor) | scored["lost"]).fill_null(False).to_numpy()
        )
        pairs: tuple[list[int], list[str]] = ([], [])
        if need.size:
            for i, rs in zip(need, explain(model, scored[need], top=top_reasons), strict=True):
                for r in rs:
                    pairs[0].append(int(i))
                    pairs[1].append(r["text"])
    # (row, text) pairs gathered into lists: no Python list per unexplained row
    texts = (
        pl.DataFrame({"i": pairs[0], "text": pairs[1]}, schema={"i": pl.Int64, "text": pl.String})
        .group_by("i", maintain_order=True)
        .agg("text")
    )
    reasons = (
        pl.DataFrame({"i": np.arange(scored.height)})
        .join(texts, on="i", how="left", maintain_order="left")
        .select(pl.col("text").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .to_series()
        .alias("reasons")
    )
    out = scored.select(
        "device_id", "device_class", "rack", "t", "risk", "alarm", "lost", "threshold"
    ).with_columns(reasons)
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
            pl.lit(version).alias("model_version"),
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
