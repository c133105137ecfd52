"""History queries: downsampled series for one device and metric.

The one entry point NOC-facing code uses for time series. Today it buckets the raw
`samples` table; the rollup tables (1-minute, 1-hour) plug in behind the same signature,
chosen by the requested range and step.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

SERIES_COLUMNS = ("bucket", "min", "max", "mean", "last", "count")


def query_series(cur: duckdb.DuckDBPyConnection, device_id: str, metric: str,
                 start: datetime, end: datetime, step_s: float) -> pl.DataFrame:
    """Buckets of `step_s` seconds over [start, end): min, max, mean, last, count.

    Times are naive UTC (as stored). Empty buckets are absent, not zero-filled.
    """
    if step_s <= 0:
        raise ValueError("step_s must be positive")
    if end <= start:
        raise ValueError("end must be after start")
    step_us = int(step_s * 1_000_000)
    return cur.sql(
        """
        SELECT time_bucket(to_microseconds($step), read_time) AS bucket,
               min(value) AS min, max(value) AS max, avg(value) AS mean,
               arg_max(value, read_time) AS last, count(*) AS count
        FROM samples
        WHERE device_id = $device AND metric = $metric
          AND read_time >= $start AND read_time < $end
        GROUP BY bucket ORDER BY bucket
        """,
        params={"step": step_us, "device": device_id, "metric": metric,
                "start": start, "end": end},
    ).pl()
