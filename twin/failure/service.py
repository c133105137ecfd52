"""The latest failure-risk table, kept in memory and refreshed once per scoring tick.

A request (device state, `GET /v1/failure-risk`) reads this table: a dict lookup, never a
feature computation. The server runs `start()`: a background thread calls `refresh()`
every few seconds, which recomputes only when the event-time tick (newest sample time,
floored to `tick_s`) or the approved model changed, so the cost is one `failure_risks`
per tick. Without that thread (tests, an app over someone else's store) the failure-risk
route refreshes in the request, at most once per tick; device state only reads.

Event time, not wall-clock: the table is scored as of the newest reading stored (never
later than now), so an ingest outage does not read as every device going silent.
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
from twin.failure.risk import failure_risks
from twin.health import ComponentHealth
from twin.periodic import Periodic

log = logging.getLogger(__name__)
TICK_S = 30.0  # one read interval: a lost device shows within a read of the rule
CHECK_EVERY_S = 5.0  # how often the background thread checks whether a tick is due


class FailureRiskService:
    def __init__(
        self,
        store: Store,
        horizon_s: float,
        root: Path = registry.DEFAULT_ROOT,
        tick_s: float = TICK_S,
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
        self._key: tuple[int, str] | None = None  # (tick, model version) of the table
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
        Raises RegistryError (and remembers it) when no approved model serves the horizon."""
        with self._lock:
            try:
                version = registry.newest_approved(self.root, self.horizon_s).version
            except registry.RegistryError as exc:
                self.error, self.table, self.by_device, self._key = exc, None, {}, None
                self.by_rack = {}
                self.model_version = None
                raise
            self.error = None
            as_of = self._as_of(now)
            if as_of is None:
                return False
            key = (math.floor(as_of.replace(tzinfo=UTC).timestamp() / self.tick_s), version)
            if key == self._key:
                return False
            table = failure_risks(self.store, as_of, self.horizon_s, self.root)
            self.by_device = {r["device_id"]: r for r in table.iter_rows(named=True)}
            self.by_rack = dict(
                table.filter(pl.col("rack").is_not_null())
                .group_by("rack")
                .agg(pl.col("risk").max())
                .iter_rows()
            )
            self.table, self._key, self.scored_at = table, key, as_of
            self.model_version = version
            for fn in self.on_scored:
                try:
                    fn(table, as_of)
                except Exception:  # history is a by-product: the table still serves
                    log.exception("failure-risk on_scored hook failed")
            return True

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
