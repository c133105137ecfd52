"""The latest failure-risk table, kept in memory and refreshed once per scoring tick.

A request (device state, `GET /v1/failure-risk`) reads this table: a dict lookup, never a
feature computation. The server runs `start()`: a background thread calls `refresh()`
every few seconds, which works only when something is due:

* **feature tick** (every `bucket_s`, 5 min: a bucket end on the absolute grid): the
  incremental features (`twin/failure/live.py`: only the samples and events since the
  last tick are read, folded into per-device 5-min buckets) are rescored for every
  device with the approved model; also when a newer model is approved.
* **loss tick** (every `tick_s`, 30 s, one read interval) in between: devices whose
  failure event arrived, or that went silent for 2 read intervals while a rack peer of
  their class still reports (the model's telemetry-loss rule), are marked failed / lost
  with risk 1, so a GPU off the bus shows within a read, not a bucket. Only the
  samples' (device, read time) since the last loss tick are read.

The features equal `compute_features` (the SQL reference, what training uses) at every
feature tick; tests/test_failure_live.py holds the two paths to the same table.
Without the thread (tests, an app over someone else's store) the failure-risk route
refreshes in the request, at most once per tick; device state only reads.

Event time, not wall-clock: the table is scored as of the newest reading stored (never
later than now), floored to the tick, so an ingest outage does not read as every device
going silent.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ingest.store import Store
from twin.failure import registry
from twin.failure.features import failed_devices
from twin.failure.live import LiveFeatures, tick_floor
from twin.failure.model import LOST_AFTER_READS
from twin.failure.risk import ServingModels, failure_risks, risk_table
from twin.health import ComponentHealth
from twin.periodic import Periodic

log = logging.getLogger(__name__)
TICK_S = 30.0  # loss tick: one read interval, a lost device shows within a read of the rule
BUCKET_S = 300  # feature tick: the features' bucket (what the model was trained on)
CHECK_EVERY_S = 5.0  # how often the background thread checks whether a tick is due


class FailureRiskService:
    def __init__(
        self,
        store: Store,
        horizon_s: float,
        root: Path = registry.DEFAULT_ROOT,
        tick_s: float = TICK_S,
        bucket_s: int = BUCKET_S,
    ) -> None:
        self.store = store
        self.horizon_s = float(horizon_s)
        self.root = Path(root)
        self.tick_s = tick_s
        self.table: pl.DataFrame | None = None
        self.by_device: dict[str, dict] = {}
        self.by_rack: dict[str, float] = {}  # highest risk in each rack (the heat map)
        self.model_version: str | None = None
        self.scored_at: datetime | None = None  # event time of the table
        self.error: registry.RegistryError | None = None  # e.g. no approved model
        self.bucket_s = bucket_s
        self._key: tuple[int, str] | None = None  # (loss tick, model version) of the table
        self.live = LiveFeatures(bucket_s)
        self.models = ServingModels()  # the approved model, loaded once per version
        self._feats: pl.DataFrame | None = None  # feature rows of the last feature tick
        self._feat_tick: datetime | None = None
        self._base: pl.DataFrame | None = None  # the table scored at the feature tick
        self._seen: dict[str, datetime] = {}  # newest read per device since the tick
        self._seen_to: datetime | None = None
        self._lock = threading.Lock()
        self._background: Periodic | None = None
        # called with (table, as_of) after each rescoring: the part history keeps the
        # risk history by part (twin/parts.py PartHistory.record_risk)
        self.on_scored: list[Callable[[pl.DataFrame, datetime], object]] = []

    def _as_of(self, now: datetime | None) -> datetime | None:
        row = self.store.cursor().execute("SELECT max(read_time) FROM samples").fetchone()
        if row is None or row[0] is None:
            return None
        now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
        return min(now, row[0].replace(tzinfo=None))

    def refresh(self, now: datetime | None = None) -> bool:
        """Rescore if the tick or the approved model changed; True when it rescored.
        Raises RegistryError (and remembers it) when no approved model serves the horizon
        or the approved one cannot be loaded (saved by another scikit-learn)."""
        with self._lock:
            try:
                # one registry scan per refresh: the version labelled is the one loaded
                approved = registry.newest_approved(self.root, self.horizon_s)
                version = approved.version
                self.error = None
                as_of = self._as_of(now)
                if as_of is None:
                    return False
                key = (math.floor(as_of.replace(tzinfo=UTC).timestamp() / self.tick_s), version)
                if key == self._key:
                    return False
                table = self._score(as_of, approved)  # loads the model: RegistryError too
            except registry.RegistryError as exc:
                self.error, self.table, self.by_device, self._key = exc, None, {}, None
                self.by_rack = {}
                self.model_version = None
                raise
            self.by_device = {r["device_id"]: r for r in table.iter_rows(named=True)}
            self.by_rack = dict(
                table.filter(pl.col("rack").is_not_null())
                .group_by("rack")
                .agg(pl.col("risk").max())
                .iter_rows()
            )
            self.table, self._key = table, key
            self.model_version = version
            for fn in self.on_scored:
                try:
                    fn(table, as_of)
                except Exception:  # history is a by-product: the table still serves
                    log.exception("failure-risk on_scored hook failed")
            return True

    def _score(self, as_of: datetime, approved: registry.ModelVersion) -> pl.DataFrame:
        """The feature tick's table (rescored when the tick or the model changed), with
        the loss tick's telemetry-loss and failure events over it."""
        version = approved.version
        cur = self.store.cursor()
        tick = tick_floor(as_of, self.bucket_s)
        if tick != self._feat_tick:
            self._feats = self.live.advance(cur, tick)
            self._feat_tick, self._base = tick, None
            self._seen, self._seen_to = {}, tick
        if self._base is None or self._base["model_version"].first() != version:
            model, _ = self.models.get(self.horizon_s, self.root, approved)
            assert self._feats is not None
            self._base = risk_table(
                self._feats, model, version, failed_devices(cur, tick), self.horizon_s
            )
        self.scored_at = tick
        if self._feats is not None and self._feats.is_empty() and as_of > tick:
            # a fresh store: every reading is newer than the last feature tick, so the
            # incremental features have nothing yet. Until the first tick with data (at
            # most one bucket), score with the reference as of the newest reading: it
            # reads under a bucket of data, and the site has risk from its first minute.
            self.scored_at = as_of
            return failure_risks(
                self.store, as_of, self.horizon_s, self.root, models=self.models, version=approved
            )
        if as_of <= tick or self._base.is_empty():
            return self._base
        self.scored_at = as_of
        return self._losses(cur, as_of)

    def _losses(self, cur, as_of: datetime) -> pl.DataFrame:
        """The feature tick's table with what happened since: failure events, and the
        telemetry-loss rule on the reads since the tick (stale reads from the tick's read
        interval; a whole silent rack is a collector problem, not a device failure)."""
        assert self._base is not None and self._feats is not None
        new = cur.execute(
            "SELECT device_id, max(read_time) FROM samples WHERE read_time > ? "
            "AND read_time <= ? GROUP BY device_id",
            [self._seen_to, as_of],
        ).fetchall()
        self._seen.update({d: t for d, t in new})
        self._seen_to = as_of
        f = self._feats.select(
            "device_id", "device_class", "rack", "stale_reads", "read_interval_s"
        )
        seen = pl.DataFrame(
            {"device_id": list(self._seen), "seen": list(self._seen.values())},
            schema={"device_id": pl.String, "seen": pl.Datetime("us")},
        )
        gap_s = (as_of - self._feat_tick).total_seconds() if self._feat_tick else 0.0
        stale = (
            f.join(seen, on="device_id", how="left")
            .with_columns(
                pl.when(pl.col("seen").is_not_null())
                .then((pl.lit(as_of) - pl.col("seen")).dt.total_microseconds() / 1e6)
                .otherwise(pl.col("stale_reads") * pl.col("read_interval_s") + gap_s)
                .truediv(pl.col("read_interval_s"))
                .alias("stale_now")
            )
            .with_columns(
                (
                    (pl.col("stale_now") >= LOST_AFTER_READS)
                    & (pl.col("stale_now").min().over("rack", "device_class") < LOST_AFTER_READS)
                )
                .fill_null(False)
                .alias("lost_now"),
            )
            .select("device_id", "stale_now", "lost_now")
        )
        failed = failed_devices(cur, as_of).select("device_id", "message")
        out = (
            self._base.join(stale, on="device_id", how="left")
            .join(failed, on="device_id", how="left")
            .with_columns(
                pl.col("lost_now").fill_null(False) & ~pl.col("status").is_in(["lost", "failed"])
            )
        )
        new_failed = pl.col("message").is_not_null() & (pl.col("status") != "failed")
        out = out.with_columns(
            pl.when(new_failed)
            .then(pl.concat_list(pl.col("message").cast(pl.String), pl.col("reasons")))
            .when(pl.col("lost_now"))
            .then(
                pl.concat_list(
                    pl.format(
                        "telemetry lost: no reading for {} read intervals while its rack "
                        "peers report",
                        pl.col("stale_now").floor().cast(pl.Int64),
                    ),
                    pl.col("reasons"),
                )
            )
            .otherwise(pl.col("reasons"))
            .alias("reasons"),
            pl.when(new_failed)
            .then(pl.lit("failed"))
            .when(pl.col("lost_now"))
            .then(pl.lit("lost"))
            .otherwise(pl.col("status"))
            .alias("status"),
            pl.when(new_failed | pl.col("lost_now"))
            .then(1.0)
            .otherwise(pl.col("risk"))
            .alias("risk"),
            (pl.col("alarm") | new_failed | pl.col("lost_now")).alias("alarm"),
        )
        return out.drop("stale_now", "lost_now", "message").sort("risk", descending=True)

    def health(self, stale_after_s: float) -> ComponentHealth:
        """Its background refresh's health (not_running when it was not started)."""
        if self._background is None:
            return ComponentHealth("not_running")
        return self._background.health(stale_after_s)

    @property
    def running(self) -> bool:
        return self._background is not None and self._background.running

    def start(self, every_s: float = CHECK_EVERY_S) -> None:
        """Refresh in a background thread every `every_s` (the server starts it; stop() it
        before closing the store: DuckDB refuses to close a connection mid-query). No
        approved model is remembered in `error`, which the API reports."""
        if self._background is None:
            self._background = Periodic(
                self.refresh, every_s, "failure-risk", expected=(registry.RegistryError,)
            )
        self._background.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._background is not None:
            self._background.stop(timeout_s)

    def device(self, device_id: str) -> dict | None:
        """The device's risk as of the last tick (None: no model, not scored yet)."""
        row = self.by_device.get(device_id)
        if row is None:
            return None
        return {
            "risk": row["risk"],
            "alarm": row["alarm"],
            "status": row["status"],
            "horizon_s": self.horizon_s,
            "model_version": row["model_version"],
            "time": self.scored_at,
            "reasons": list(row["reasons"] or []),
        }
