"""History queries: downsampled series for one device and metric.

The one entry point NOC-facing code uses for time series. It reads the coarsest table
that can answer exactly:

- `rollup_1h` when `step_s` is a multiple of 3600, for whole hours inside [start, end)
  that the hourly rollup has covered (before its watermark);
- `rollup_1m` when `step_s` is a multiple of 60, for whole minutes not taken from the
  hourly table and before the minute watermark;
- raw `samples` for the rest (edges, the recent tail, and any step that is not a whole
  number of minutes).

Every query bucket is made of whole rollup buckets (all are aligned to the epoch), so the
answer equals aggregating the raw samples, as long as raw samples are retained. Older
than raw retention only whole minutes (hours) remain: steps that are not a multiple of a
minute find nothing there, and the first/last partial minute of the range is absent.

Rollup rows are found by their series key `sid` alone (ingest/downsampling.py): the
tables are sorted by it in compacted runs, so zone maps skip the other series' row
groups, and comparing one integer per row is cheaper than two strings. When the step
is the tier's own (60 s on minute rows), rollup rows are the buckets: no re-aggregation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import polars as pl

from ingest.downsampling import HOUR, MINUTE, floor_to, series_key


@dataclass(frozen=True)
class Segment:
    table: str  # samples, rollup_1m or rollup_1h
    start: datetime
    end: datetime


def _ceil_to(t: datetime, step: timedelta) -> datetime:
    f = floor_to(t, step)
    return f if f == t else f + step


def _watermarks(cur: duckdb.DuckDBPyConnection) -> dict[str, datetime | None]:
    try:
        rows = dict(cur.execute("SELECT tier, done_until FROM rollup_state").fetchall())
    except duckdb.CatalogException:  # a database from before rollups existed
        return {"1m": None, "1h": None}
    return {"1m": rows.get("1m"), "1h": rows.get("1h")}


def plan_series(
    cur: duckdb.DuckDBPyConnection, start: datetime, end: datetime, step_s: float
) -> list[Segment]:
    """Which table answers which part of [start, end) (see the module docstring)."""
    marks = _watermarks(cur)
    tiers = []
    if step_s % 3600 == 0:
        tiers.append(("rollup_1h", HOUR, marks["1h"]))
    if step_s % 60 == 0:
        tiers.append(("rollup_1m", MINUTE, marks["1m"]))

    def plan(a: datetime, b: datetime, k: int) -> list[Segment]:
        if b <= a:
            return []
        if k == len(tiers):
            return [Segment("samples", a, b)]
        table, res, done = tiers[k]
        if done is None:
            return plan(a, b, k + 1)
        s, e = _ceil_to(a, res), floor_to(min(b, done), res)
        if e <= s:
            return plan(a, b, k + 1)
        return [*plan(a, s, k + 1), Segment(table, s, e), *plan(e, b, k + 1)]

    return plan(start, end, 0)


def query_series(
    cur: duckdb.DuckDBPyConnection,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    step_s: float,
) -> pl.DataFrame:
    """Buckets of `step_s` seconds over [start, end): min, max, mean, last, count.

    Times are naive UTC (as stored). Empty buckets are absent, not zero-filled.
    """
    if step_s <= 0:
        raise ValueError("step_s must be positive")
    if end <= start:
        raise ValueError("end must be after start")
    step_us = int(step_s * 1_000_000)
    params: dict[str, object] = {
        "device": device_id,
        "metric": metric,
        "sid": series_key(device_id, metric),
        "step": step_us,
    }
    segments = plan_series(cur, start, end, step_s)
    res_us = {"rollup_1m": 60_000_000, "rollup_1h": 3_600_000_000}
    # every rollup segment at the step's own resolution: its rows are the buckets, and
    # no bucket spans two segments (their bounds are whole steps)
    direct = all(seg.table == "samples" or res_us[seg.table] == step_us for seg in segments)
    parts = []
    for k, seg in enumerate(segments):
        params[f"a{k}"], params[f"b{k}"] = seg.start, seg.end
        if seg.table == "samples":
            rows = f"""SELECT read_time AS t, value AS min, value AS max, value AS sum,
                       1 AS count, value AS last, read_time AS last_time FROM samples
                WHERE device_id = $device AND metric = $metric
                  AND read_time >= $a{k} AND read_time < $b{k}"""
            parts.append(_aggregate(rows) if direct else rows)
        elif direct:
            parts.append(f"""SELECT bucket, min, max, sum / count AS mean, last,
                       count::BIGINT AS count FROM {seg.table}
                WHERE sid = $sid AND bucket >= $a{k} AND bucket < $b{k}""")
        else:
            parts.append(f"""SELECT bucket AS t, min, max, sum, count, last, last_time
                FROM {seg.table} WHERE sid = $sid AND bucket >= $a{k} AND bucket < $b{k}""")
    if direct:
        sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) ORDER BY bucket"
    else:
        sql = f"{_aggregate(' UNION ALL '.join(parts))} ORDER BY bucket"
    used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}
    return cur.sql(sql, params=used).pl()


def _aggregate(rows: str) -> str:
    return f"""
        SELECT time_bucket(to_microseconds($step), t) AS bucket,
               min(min) AS min, max(max) AS max, sum(sum) / sum(count) AS mean,
               arg_max(last, last_time) AS last, sum(count)::BIGINT AS count
        FROM ({rows}) GROUP BY bucket"""


def query_increase(
    cur: duckdb.DuckDBPyConnection,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    step_s: float,
) -> pl.DataFrame:
    """Counter increase (e.g. energy) per bucket from the minute or hour rollups; `step_s`
    must be a whole number of minutes. Columns: bucket, increase."""
    if step_s <= 0 or step_s % 60:
        raise ValueError("step_s must be a positive whole number of minutes")
    table = "rollup_1h" if step_s % 3600 == 0 and _watermarks(cur)["1h"] else "rollup_1m"
    return (
        cur.sql(
            f"""SELECT time_bucket(to_microseconds($step), bucket) AS b, sum(increase) AS increase
            FROM {table} WHERE sid = $sid AND bucket >= $start AND bucket < $end
            GROUP BY b ORDER BY b""",
            params={
                "step": int(step_s * 1_000_000),
                "sid": series_key(device_id, metric),
                "start": start,
                "end": end,
            },
        )
        .pl()
        .rename({"b": "bucket"})
    )
