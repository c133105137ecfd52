"""The latest failure-risk table, kept in memory and refreshed once per scoring tick.

A request (device state, `GET /v1/failure-risk`) reads this table: a dict lookup, never a
feature computation. `kick()` starts a background refresh when one may be due; the
refresh recomputes only when the event-time tick (newest sample time, floored to
`tick_s`) or the approved model changed, so the cost is one `failure_risks` per tick.

Event time, not wall-clock: the table is scored as of the newest reading stored (never
later than now), so an ingest outage does not read as every device going silent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from twin.failure import registry
from twin.failure.risk import failure_risks

log = logging.getLogger(__name__)
TICK_S = 30.0  # one read interval: a lost device shows within a read of the rule
CHECK_EVERY_S = 5.0  # how often a request may start a (cheap) "is a tick due" check


class LiveRisk:
    def __init__(self, store, horizon_s: float, root: Path = registry.DEFAULT_ROOT,
                 tick_s: float = TICK_S) -> None:
        self.store = store
        self.horizon_s = float(horizon_s)
        self.root = Path(root)
        self.tick_s = tick_s
        self.table: pl.DataFrame | None = None
        self.by_device: dict[str, dict] = {}
        self.model_version: str | None = None
        self.scored_at: datetime | None = None  # event time of the table
        self.error: registry.RegistryError | None = None  # e.g. no approved model
        self._key: tuple[int, str] | None = None  # (tick, model version) of the table
        self._lock = threading.Lock()
        self._running = False
        self._last_check = -math.inf

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
            self.table, self._key, self.scored_at = table, key, as_of
            self.model_version = version
            return True

    def kick(self) -> None:
        """Start a background refresh if none runs and the last check is old enough; the
        caller never waits for it."""
        now = time.monotonic()
        if self._running or now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check, self._running = now, True

        def run() -> None:
            try:
                self.refresh()
            except registry.RegistryError:
                pass  # remembered in self.error; the API reports it
            except Exception:  # a failed tick keeps the previous table
                log.exception("failure-risk refresh failed")
            finally:
                self._running = False
        threading.Thread(target=run, name="failure-risk", daemon=True).start()

    def device(self, device_id: str) -> dict | None:
        """The device's risk as of the last tick (None: no model, not scored yet)."""
        row = self.by_device.get(device_id)
        if row is None:
            return None
        return {"risk": row["risk"], "alarm": row["alarm"], "status": row["status"],
                "horizon_s": self.horizon_s, "model_version": row["model_version"],
                "time": self.scored_at, "reasons": list(row["reasons"] or [])}


_live: dict[tuple[int, float, str], LiveRisk] = {}
_live_lock = threading.Lock()


def live_risk_for(store, horizon_s: float, root: Path = registry.DEFAULT_ROOT) -> LiveRisk:
    """One LiveRisk per (store, horizon, registry), shared by every route of the app."""
    key = (id(store), float(horizon_s), str(Path(root).resolve()))
    with _live_lock:
        lr = _live.get(key)
        if lr is None or lr.store is not store:
            lr = _live[key] = LiveRisk(store, horizon_s, root)
        return lr
