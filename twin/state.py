"""The twin: live state, tick (rollups, heat balance, PUE) and the queries the API serves.

A tick refreshes the live state from the store's `latest` table, computes rollups,
heat balance and instantaneous (p)PUE for every scope, and persists the rollups. The
server ticks in the background; API reads reuse the last tick while it is fresh.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from domain.contract import METRICS
from domain.site import Site
from ingest.history import query_series
from ingest.store import Store
from twin.energy import Curve, meter_curve, power_curve
from twin.heat_balance import HeatBalance, HeatBalanceEngine
from twin.latest_readings import LatestReadings, RefreshStats
from twin.pue import (
    IntervalPue,
    MeterReading,
    PueFigure,
    ScopeDef,
    Term,
    TermValue,
    instantaneous,
    interval_pue,
    scopes,
)
from twin.rollup_history import RollupStore, to_ts
from twin.rollups import COLUMNS, RollupEngine, ScopeIndex, TickInputs
from twin.site_index import CLASS_KIND, SiteIndex
from twin.topology import Topology
from twin.twin_config import TwinConfig

HB_COLUMNS = {
    "heat_liquid_kw": "liquid_kw",
    "heat_air_kw": "air_kw",
    "heat_it_kw": "it_kw",
    "hb_residual_kw": "residual_kw",
    "hb_residual_pct": "residual_pct",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class TickResult:
    time_ms: int
    rollups: dict[str, np.ndarray]
    heat_balance: HeatBalance
    pue: dict[str, PueFigure]
    refresh: RefreshStats
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def time(self) -> datetime:
        return to_ts(self.time_ms)


class Twin:
    def __init__(
        self,
        site: Site,
        store: Store,
        config: TwinConfig | None = None,
        persist: bool = True,
    ) -> None:
        self.site = site
        self.store = store
        self.config = config or TwinConfig()
        self.stale_after_s = self.config.stale_after_s
        self.known_devices = {d.id: d for d in site.devices()}
        self.layout = SiteIndex(site)
        self.scope_index = ScopeIndex(self.layout)
        self.scopes: dict[str, ScopeDef] = scopes(site)
        self.persist = persist
        # Hourly compaction of rollups into minute rows runs after the tick that crosses
        # the hour (timed apart as "maintain"); a host may turn it off and call
        # `rollup_store.maintain` itself.
        self.auto_maintain = True
        self._lock = threading.RLock()
        self._ticking = False  # a tick is being made (read without the lock)
        self._cursor = store.cursor()
        self.latest_readings = LatestReadings(self.layout, self._cursor)
        self.rollup_store = RollupStore(
            store.cursor(), self.scope_index, self.config.tick_retention_h, reader=store.cursor
        )
        self.rollups = RollupEngine(self.layout, self.scope_index, self.config.gap_s)
        self.heat = HeatBalanceEngine(self.layout, self.config)
        self._topology: Topology | None = None
        self.last: TickResult | None = None

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = Topology(self.site)
        return self._topology

    # -- tick ---------------------------------------------------------------------------

    @property
    def ticking(self) -> bool:
        return self._ticking

    def tick(self, at_ms: int | None = None) -> TickResult:
        with self._lock:
            self._ticking = True
            try:
                return self._tick(at_ms)
            finally:
                self._ticking = False

    def _tick(self, at_ms: int | None) -> TickResult:
        t0 = time.perf_counter()
        at = now_ms() if at_ms is None else at_ms
        stats = self.latest_readings.refresh()
        t1 = time.perf_counter()
        live = self.latest_readings
        x = TickInputs(
            live.value, live.time_ms > 0, live.stale(at, self.stale_after_s), live.time_ms
        )
        cols = self.rollups.compute(x, at)
        t2 = time.perf_counter()
        racks = self.scope_index.slices["rack"]
        hb = self.heat.compute(x, cols["power_kw"][racks], cols["stale_inputs"][racks], at)
        idx = np.array([self.scope_index.index[i] for i in hb.ids], dtype=np.int64)
        for col, attr in HB_COLUMNS.items():
            cols[col][idx] = getattr(hb, attr)
        t3 = time.perf_counter()
        pue = {
            name: instantaneous(s, lambda t: self._term_now(t, cols, x, at))
            for name, s in self.scopes.items()
        }
        t4 = time.perf_counter()
        if self.persist:
            self.rollup_store.write_tick(at, cols)
        t5 = time.perf_counter()
        ms = {
            "refresh": t1 - t0,
            "rollups": t2 - t1,
            "heat_balance": t3 - t2,
            "pue": t4 - t3,
            "persist": t5 - t4,
            "total": t5 - t0,
        }
        if self.persist and self.auto_maintain:
            self.rollup_store.maintain(to_ts(at))
            ms["maintain"] = time.perf_counter() - t5
        self.last = TickResult(at, cols, hb, pue, stats, {k: v * 1000 for k, v in ms.items()})
        return self.last

    def tick_without_waiting(self) -> tuple[TickResult | None, bool]:
        """(the last tick if no older than twice the tick interval, else None; whether a
        new tick is due). Never ticks: for the event loop, which must not wait on DuckDB;
        the caller makes the due tick in a worker thread (`current`)."""
        last = self.last
        if last is None:
            return None, True
        age_ms = now_ms() - last.time_ms
        limit_ms = self.config.tick_interval_s * 1000
        if age_ms <= limit_ms:
            return last, False
        return (last if age_ms <= 2 * limit_ms else None), not self.ticking

    def current(self, max_age_s: float | None = None) -> TickResult:
        """The last tick if it is fresher than `max_age_s` (default: the tick interval);
        else a new one, or, while another caller is making it, the last one if it is no
        older than twice that."""
        limit = self.config.tick_interval_s if max_age_s is None else max_age_s
        last = self.last
        if last is not None and now_ms() - last.time_ms <= limit * 1000:
            return last
        # One caller ticks. While it does, the others serve the last tick if it is no older
        # than twice the limit (well inside `stale_after_s`) instead of queueing behind the
        # tick: at 1,000 API requests/s a 50-ms tick queued ~50 of them (issue 24's p99).
        if last is not None and now_ms() - last.time_ms <= 2 * limit * 1000:
            if not self._lock.acquire(blocking=False):
                return last
        else:
            self._lock.acquire()
        try:  # callers that waited reuse the tick made meanwhile
            last = self.last
            if last is not None and now_ms() - last.time_ms <= limit * 1000:
                return last
            return self.tick()
        finally:
            self._lock.release()

    def _term_now(
        self, t: Term, cols: dict[str, np.ndarray], x: TickInputs, at: int
    ) -> TermValue | None:
        if t.source == "meter":
            slot = self.layout.slot_of(t.id, "power_kw")
            if slot is None or not x.present[slot]:
                return None
            ts = to_ts(int(x.time_ms[slot]))
            value = float(x.value[slot])
            return TermValue(
                value, ts, bool(x.stale[slot]), MeterReading(t.id, "power_kw", value, ts)
            )
        i = self.scope_index.index[t.id]
        v = float(cols[t.column][i])
        if np.isnan(v):
            return None
        return TermValue(v, to_ts(at), bool(cols["stale_inputs"][i] > 0))

    # -- PUE ----------------------------------------------------------------------------

    def pue(self, now: datetime | None = None, scope: str = "site") -> PueFigure:
        """Instantaneous (p)PUE of a scope from the latest readings."""
        at = None if now is None else int(now.replace(tzinfo=UTC).timestamp() * 1000)
        tick = self.tick(at) if at is not None else self.current()
        return tick.pue[scope]

    def pue_interval(
        self,
        scope: str,
        start: datetime,
        end: datetime,
        step_s: float | None = None,
        now: datetime | None = None,
    ) -> IntervalPue:
        """Energy-based (p)PUE over [start, end) (naive UTC), per step if given."""
        cfg = self.config
        cur = self.store.cursor()
        rollover = {self.site.meter_id(m): m.energy_rollover_kwh for m in self.site.meters}

        def curve_for(t: Term) -> Curve:
            if t.source == "meter":
                return meter_curve(cur, t.id, start, end, cfg.gap_s, rollover.get(t.id))
            ts, v = self.rollup_store.points(t.id, t.column, start, end, cfg.gap_s)
            return power_curve(ts, v, cfg.rollup_gap_s)

        return interval_pue(
            self.scopes[scope],
            curve_for,
            start,
            end,
            step_s,
            cfg.energy_resolution_s,
            cfg.min_coverage,
            cfg.gap_s,
            now or datetime.now(UTC).replace(tzinfo=None),
        )

    # -- history ------------------------------------------------------------------------

    def series_metrics(self, series_id: str) -> list[str] | None:
        """Metrics a series id offers: rollup columns for scopes, the kind's metrics for
        devices; None for an id the twin does not know."""
        if series_id in self.scope_index.index:
            return list(COLUMNS)
        found = self.layout.device_index.get(series_id)
        if found is not None:
            return list(METRICS[CLASS_KIND[found[0]]])
        return None

    def series(self, series_id: str, metric: str, start: datetime, end: datetime, step_s: float):
        """(source, polars frame) of buckets for a rollup scope or a device metric."""
        if series_id in self.scope_index.index:
            return self.rollup_store.series(series_id, metric, start, end, step_s)
        return "samples", query_series(self.store.cursor(), series_id, metric, start, end, step_s)

    # -- latest readings of named devices (the API's device reads) --------------------

    def latest_for(self, device_ids: list[str]) -> dict[tuple[str, str], MeterReading]:
        rows = (
            self.store.cursor()
            .execute(
                "SELECT device_id, metric, value, read_time FROM latest "
                "WHERE list_contains(?, device_id)",
                [device_ids],
            )
            .fetchall()
        )
        return {(d, m): MeterReading(d, m, v, t) for d, m, v, t in rows}

    def device(self, device_id: str) -> list[MeterReading]:
        rows = (
            self.store.cursor()
            .execute(
                "SELECT device_id, metric, value, read_time FROM latest WHERE device_id = ? "
                "ORDER BY metric",
                [device_id],
            )
            .fetchall()
        )
        return [MeterReading(d, m, v, t) for d, m, v, t in rows]
