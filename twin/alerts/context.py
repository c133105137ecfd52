"""What rules read: latest values, recent samples and events, and optional providers.

`RuleContext` is the whole interface between rules and the rest of the twin. Numeric
inputs that other parts of the twin compute (anomaly scores, failure risk, heat-balance
residuals, interval PUE) arrive through `Providers`; a rule whose provider is absent is
reported as inactive by GET /v1/rules rather than silently never firing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import polars as pl

from twin.alerts.grouping import AlertTopology
from twin.alerts.rules import Selector, glob_regex

# entity id (device id, or a loop's CDU id) -> value
ScoreProvider = Callable[[datetime], Mapping[str, float]]
PueIntervalProvider = Callable[[datetime, datetime], float | None]


@dataclass
class Providers:
    """Optional inputs computed elsewhere in the twin. Each may raise; the engine then
    marks the rule as errored for that evaluation and changes none of its alerts."""

    anomaly_score: ScoreProvider | None = None  # device id -> score in [0, 1]
    # issue 20: the open anomaly incidents (AnomalyService.open_incidents)
    anomaly_incidents: Callable[[datetime], list[dict]] | None = None
    failure_risk: ScoreProvider | None = None  # device id -> failure probability
    heat_balance_residual: ScoreProvider | None = None  # CDU id -> (Q_liquid - P_IT) / P_IT
    pue_interval: PueIntervalProvider | None = None  # energy-based PUE over [start, end)

    def available(self, name: str) -> bool:
        return getattr(self, name, None) is not None


EVENT_SKEW_S = 60.0  # accept events stamped up to this far ahead of our clock


@dataclass
class RuleContext:
    """One evaluation's view of the store. Queries are cached for the evaluation."""

    now: datetime  # naive UTC, like the store's timestamps
    cursor: duckdb.DuckDBPyConnection
    topology: AlertTopology
    providers: Providers
    started_at: datetime  # first evaluation of this engine (absence rules wait for it)
    # what the rule set reads, so that one query per table serves every rule
    metrics: frozenset[str] = frozenset()
    event_kinds: frozenset[str] = frozenset()
    event_lookback_s: float = 0.0
    _latest: dict[str | None, pl.DataFrame] = field(default_factory=dict)
    _all_latest: pl.DataFrame | None = None
    _events: pl.DataFrame | None = None
    _classes: pl.DataFrame | None = None

    def latest(self, metric: str) -> pl.DataFrame:
        """device_id, value, read_time for one metric."""
        if metric not in self._latest:
            if metric in self.metrics:
                if self._all_latest is None:
                    self._all_latest = self.cursor.sql(
                        "SELECT metric, device_id, value, read_time FROM latest "
                        "WHERE list_contains($ms, metric)",
                        params={"ms": sorted(self.metrics)},
                    ).pl()
                frame = self._all_latest.filter(pl.col("metric") == metric).drop("metric")
            else:
                frame = self.cursor.sql(
                    "SELECT device_id, value, read_time FROM latest WHERE metric = $m",
                    params={"m": metric},
                ).pl()
            self._latest[metric] = frame
        return self._latest[metric]

    def last_seen(self, metric: str | None) -> pl.DataFrame:
        """device_id, read_time (newest reading of the metric, or of any metric)."""
        key = f"\0seen:{metric}"
        if key not in self._latest:
            if metric is None:
                q = "SELECT device_id, max(read_time) AS read_time FROM latest GROUP BY 1"
                frame = self.cursor.sql(q).pl()
            else:
                frame = self.latest(metric).select("device_id", "read_time")
            self._latest[key] = frame
        return self._latest[key]

    def window_edges(self, metric: str, window_s: float) -> pl.DataFrame:
        """Per device, the first sample near the start of the window (v0, t0) and the
        latest reading (v1, t1). Only a slice at the window's start is scanned (the samples
        table is ordered by time, so DuckDB skips the rest by its min/max zone maps):
        scanning a whole 10-minute window of a site every second costs far more."""
        start = self.now - timedelta(seconds=window_s)
        edge_s = min(window_s / 2, max(30.0, window_s / 10))
        first = self.cursor.sql(
            "SELECT device_id, arg_min(value, read_time) AS v0, min(read_time) AS t0 "
            "FROM samples WHERE metric = $m AND read_time >= $start AND read_time < $edge "
            "GROUP BY 1",
            params={"m": metric, "start": start, "edge": start + timedelta(seconds=edge_s)},
        ).pl()
        last = (
            self.latest(metric)
            .filter(pl.col("read_time") <= self.now)
            .rename({"value": "v1", "read_time": "t1"})
        )
        return first.join(last, on="device_id", how="inner")

    def events(self, kinds: list[str], lookback_s: float) -> pl.DataFrame:
        """read_time, device_id, kind, severity, message, attrs of recent events."""
        start = self.now - timedelta(seconds=lookback_s)
        if set(kinds) <= self.event_kinds and lookback_s <= self.event_lookback_s:
            if self._events is None:
                self._events = self._query_events(sorted(self.event_kinds), self.event_lookback_s)
            return self._events.filter(pl.col("kind").is_in(kinds) & (pl.col("read_time") > start))
        return self._query_events(kinds, lookback_s)

    def _query_events(self, kinds: list[str], lookback_s: float) -> pl.DataFrame:
        start = self.now - timedelta(seconds=lookback_s)
        end = self.now + timedelta(seconds=EVENT_SKEW_S)
        return self.cursor.sql(
            "SELECT read_time, device_id, kind, severity, message, CAST(attrs AS VARCHAR) "
            "AS attrs FROM events WHERE list_contains($kinds, kind) AND read_time > $start "
            "AND read_time <= $end ORDER BY read_time",
            params={"kinds": kinds, "start": start, "end": end},
        ).pl()

    def select(self, frame: pl.DataFrame, sel: Selector) -> pl.DataFrame:
        """Rows whose device matches the selector (class from the site model, id glob)."""
        if sel.device_class:
            if self._classes is None:
                self._classes = self.topology.class_frame()
            frame = frame.join(self._classes, on="device_id", how="inner").filter(
                pl.col("device_class").is_in(sel.device_class)
            )
        if sel.device:
            frame = frame.filter(pl.col("device_id").str.contains(glob_regex(sel.device)))
        return frame

    def matches(self, device_id: str, sel: Selector) -> bool:
        if sel.device_class and self.topology.class_of(device_id) not in sel.device_class:
            return False
        return not sel.device or fnmatch.fnmatchcase(device_id, sel.device)
