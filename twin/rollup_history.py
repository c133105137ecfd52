"""Persisted rollups: one row per scope per tick, and per scope per minute.

`twin_rollups` holds every tick (kept `tick_retention_h`); `twin_rollups_1m` holds, per
minute and column, sum/count/min/max/last (kept until deleted). Minute rows are written
once an hour by `maintain()`, for the completed hours, sorted by scope: a scope's rows
then sit together on disk, so a day of 1-minute points for one rack decodes 24 short
runs instead of touching every block. Series with a whole-minute step read the minute
table up to the last compacted hour and bucket the tick rows after it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from twin.rollups import COLUMNS, ScopeIndex

MINUTE_US = 60_000_000
_STATS = ("sum", "n", "min", "max", "last")


def _schema() -> str:
    tick_cols = ",\n    ".join(f"{c} DOUBLE" for c in COLUMNS)
    minute_cols = ",\n    ".join(
        f"{c}_{s} {'INTEGER' if s == 'n' else 'DOUBLE'}" for c in COLUMNS for s in _STATS
    )
    return f"""
CREATE TABLE IF NOT EXISTS twin_rollups (
    time TIMESTAMP NOT NULL,
    scope_id VARCHAR NOT NULL,
    level VARCHAR NOT NULL,
    {tick_cols}
);
CREATE TABLE IF NOT EXISTS twin_rollups_1m (
    time TIMESTAMP NOT NULL,
    scope_id VARCHAR NOT NULL,
    level VARCHAR NOT NULL,
    {minute_cols}
);
"""


SCHEMA = _schema()
_MINUTE_SELECT = ", ".join(
    f"sum({c}), count({c}), min({c}), max({c}), arg_max({c}, time) FILTER (WHERE {c} IS NOT NULL)"
    for c in COLUMNS
)


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def to_ts(ms: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(milliseconds=ms)


class RollupStore:
    def __init__(
        self,
        cursor: duckdb.DuckDBPyConnection,
        scopes: ScopeIndex,
        retention_h: float,
        reader: Callable[[], duckdb.DuckDBPyConnection] | None = None,
    ) -> None:
        self.cur = cursor  # the writer's: used by the tick, under the twin's lock
        # Readers (API threads) get their own cursor per query: a DuckDB connection
        # must not be used by two threads at once.
        self.reader = reader or cursor.cursor
        self.scopes = scopes
        self.retention_h = retention_h
        self.cur.execute(SCHEMA)
        last = self.cur.execute("SELECT max(time) FROM twin_rollups_1m").fetchall()[0][0]
        # Minutes before this are in the minute table; ticks from here on are not yet.
        self.flushed_until: datetime | None = (
            None if last is None else _hour(last + timedelta(minutes=1))
        )
        self._last_cleanup: datetime | None = None
        self._ids = pa.array(scopes.ids)
        self._levels = pa.array(scopes.levels)

    def write_tick(self, now_ms: int, columns: dict[str, np.ndarray]) -> None:
        n = self.scopes.n
        frame = pa.table(  # noqa: F841 - referenced by SQL below
            {
                "time": pa.array(np.full(n, now_ms * 1000, dtype=np.int64)).cast(
                    pa.timestamp("us")
                ),
                "scope_id": self._ids,
                "level": self._levels,
                **{c: pa.array(columns[c], from_pandas=True) for c in COLUMNS},
            }
        )
        self.cur.execute(
            f"INSERT INTO twin_rollups (time, scope_id, level, {', '.join(COLUMNS)})"
            " SELECT * FROM frame"
        )

    def maintain(self, now: datetime) -> bool:
        """Compact completed hours into minute rows (sorted by scope) and drop tick rows
        past retention. Cheap when there is nothing to do; returns whether it worked."""
        hour = _hour(now)
        if self.flushed_until is None:
            first = self.cur.execute("SELECT min(time) FROM twin_rollups").fetchall()[0][0]
            if first is None:
                return False
            self.flushed_until = _hour(first)
        if hour <= self.flushed_until:
            return False
        self.cur.execute(
            f"""INSERT INTO twin_rollups_1m
                SELECT time_bucket(INTERVAL 1 MINUTE, time) AS m, scope_id, any_value(level),
                       {_MINUTE_SELECT}
                FROM twin_rollups WHERE time >= ? AND time < ? GROUP BY m, scope_id
                ORDER BY scope_id, m""",
            [self.flushed_until, hour],
        )
        self.flushed_until = hour
        if self._last_cleanup is None or now - self._last_cleanup >= timedelta(hours=1):
            cutoff = now - timedelta(hours=self.retention_h)
            self.cur.execute("DELETE FROM twin_rollups WHERE time < ?", [cutoff])
            self._last_cleanup = now
        return True

    # -- reads --------------------------------------------------------------------------

    def series(
        self, scope_id: str, column: str, start: datetime, end: datetime, step_s: float
    ) -> tuple[str, pl.DataFrame]:
        """Buckets of `step_s` over [start, end): min, max, mean, last, count, sum.

        With a whole-minute step the minute table serves everything before the last
        compacted hour (start rounded down to its minute), the tick table the rest."""
        if column not in COLUMNS:
            raise ValueError(f"unknown rollup metric {column!r}")
        step_us = int(step_s * 1_000_000)
        flushed = self.flushed_until
        if step_us % MINUTE_US == 0 and flushed is not None:
            # minute rows are whole minutes: a start inside one includes it
            start = start.replace(second=0, microsecond=0)
            mid = min(max(flushed, start), end)
        else:
            mid = start
        c = column
        df = (
            self.reader()
            .sql(
                f"""
            WITH src AS (
                SELECT time, {c}_sum AS s, {c}_n AS n, {c}_min AS mn, {c}_max AS mx,
                       {c}_last AS last
                FROM twin_rollups_1m
                WHERE scope_id = $id AND time >= $start AND time < $mid AND {c}_n > 0
                UNION ALL
                SELECT time, {c}, 1, {c}, {c}, {c} FROM twin_rollups
                WHERE scope_id = $id AND time >= $mid AND time < $end AND {c} IS NOT NULL
            )
            SELECT time_bucket(to_microseconds($step), time) AS bucket, min(mn) AS min,
                   max(mx) AS max, sum(s) / sum(n) AS mean, arg_max(last, time) AS last,
                   sum(n)::BIGINT AS count, sum(s) AS sum
            FROM src GROUP BY bucket ORDER BY bucket""",
                params={"id": scope_id, "start": start, "mid": mid, "end": end, "step": step_us},
            )
            .pl()
        )
        source = "rollup_tick" if mid <= start else "rollup_1m" if mid >= end else "rollup_1m+tick"
        return source, df

    def points(
        self, scope_id: str, column: str, start: datetime, end: datetime, margin_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tick values of one scope column around [start, end] (s relative to start), with
        minute means at minute midpoints where ticks are no longer retained."""
        if column not in COLUMNS:
            raise ValueError(f"unknown rollup metric {column!r}")
        lo, hi = start - timedelta(seconds=margin_s), end + timedelta(seconds=margin_s)
        c = column
        cols = (
            self.reader()
            .execute(
                f"""WITH first_tick AS (SELECT coalesce(min(time), TIMESTAMP '9999-01-01') AS t
                                    FROM twin_rollups WHERE scope_id = $1)
                SELECT epoch_us(ts) - epoch_us($2::TIMESTAMP) AS t_us, v FROM (
                    SELECT m.time + INTERVAL 30 SECOND AS ts, m.{c}_sum / m.{c}_n AS v
                    FROM twin_rollups_1m m, first_tick f
                    WHERE m.scope_id = $1 AND m.time >= $3 AND m.time < $4 AND m.{c}_n > 0
                      AND m.time + INTERVAL 1 MINUTE <= f.t
                    UNION ALL
                    SELECT time AS ts, {c} AS v FROM twin_rollups
                    WHERE scope_id = $1 AND time >= $3 AND time <= $4 AND {c} IS NOT NULL)
                ORDER BY t_us""",
                [scope_id, start, lo, hi],
            )
            .fetchnumpy()
        )
        return (np.asarray(cols["t_us"], dtype=float) / 1e6, np.asarray(cols["v"], dtype=float))
