"""Training rows from stored telemetry (issue 19 item 2): what `dctwin optimize train`
learns from, never the simulator's internals.

One vectorized DuckDB query over the store's `samples` table: readings are put in
`bucket_s` buckets (one row per device and bucket first, so a device read twice counts
once), then every feature and target is one aggregate with a FILTER on (kind, metric[,
device]), as `observe.FEATURE_METRICS` / `observe.TARGET_METRICS` define them: the same
table the live `current_state` reads, so a training row and a live state mean the same
thing. Setpoints in the telemetry are the active (ramped) values; a row is *settled* when
no setpoint has moved for SETTLE_S (the plant's lags have played out), and only settled
rows are trained on.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from domain.site import MeterRole, Site
from twin.optimizer.observe import AGG_SQL, FEATURE_METRICS, TARGET_METRICS, FeatureSource
from twin.optimizer.space import COOLING_TARGETS, FEATURES, SETPOINTS, TARGETS

SETTLE_S = 300.0  # rows this soon after a setpoint moved are transients
# a setpoint reading that moves by less than this is the same setpoint (register resolution)
SETPOINT_TOL = 1e-3


class HistoryError(ValueError):
    """The store holds no usable history for the request (says what is missing)."""


def history_table(site: Site) -> dict[str, FeatureSource]:
    """Every column a training row needs: features, targets and the facility power."""
    meters = [m for m in site.meters if m.role == MeterRole.facility_input]
    if not meters:
        raise HistoryError(
            f"site {site.site.id}: no facility_input meter; the optimizer learns facility "
            "power from it"
        )
    facility = FeatureSource(
        FEATURE_METRICS["outdoor_drybulb_c"].kind, "power_kw", "sum", 1.0, site.meter_id(meters[0])
    )
    return {**FEATURE_METRICS, **TARGET_METRICS, "facility_kw": facility}


def _sql(table: dict[str, FeatureSource], bucket_s: float) -> str:
    pairs = sorted({f"{s.kind.value}|{s.metric}" for s in table.values()})
    cols = []
    for name, src in table.items():
        cond = f"kind = '{src.kind.value}' AND metric = '{src.metric}'"
        if src.device is not None:
            cond += f" AND device_id = '{src.device}'"
        cols.append(f"{AGG_SQL[src.agg]} FILTER (WHERE {cond}) * {src.scale!r} AS {name}")
    in_list = ", ".join(f"'{p}'" for p in pairs)
    return f"""
        WITH d AS (
            SELECT time_bucket(INTERVAL '{int(bucket_s)} seconds', read_time) AS time,
                   kind, metric, device_id, avg(value) AS value
            FROM samples
            WHERE read_time >= $since AND read_time < $until
              AND kind || '|' || metric IN ({in_list})
            GROUP BY ALL
        )
        SELECT time, {", ".join(cols)} FROM d GROUP BY time ORDER BY time"""


def history_rows(
    con: duckdb.DuckDBPyConnection,
    site: Site,
    since: datetime,
    until: datetime,
    bucket_s: float = 60.0,
) -> pl.DataFrame:
    """One row per bucket in [since, until) with FEATURES, TARGETS, facility/cooling kW and
    `since_change_s` (seconds since a setpoint last moved); rows missing any column are
    dropped. Times are naive UTC, as the store keeps them."""
    if until <= since:
        raise HistoryError(f"empty window: {since} .. {until}")
    table = history_table(site)
    arrow = con.sql(
        _sql(table, bucket_s), params={"since": _naive(since), "until": _naive(until)}
    ).to_arrow_table()
    df = pl.DataFrame(pl.from_arrow(arrow)).drop_nulls()
    if df.is_empty():
        return df
    cooling = pl.sum_horizontal(*COOLING_TARGETS)
    df = df.with_columns(
        cooling_kw=cooling, noncooling_kw=pl.col("facility_kw") - cooling
    ).with_columns(pl.col(s).round(6) for s in SETPOINTS)
    # seconds since any setpoint moved (a gap in the data also restarts the clock)
    gap = pl.col("time").diff().dt.total_seconds() > 1.5 * bucket_s
    moved = pl.any_horizontal(
        *(pl.col(s).diff().abs() > SETPOINT_TOL for s in SETPOINTS)
    ).fill_null(True)
    changed_at = (
        pl.when(moved | gap.fill_null(True)).then(pl.col("time")).otherwise(None).forward_fill()
    )
    df = df.with_columns(
        since_change_s=(pl.col("time") - changed_at).dt.total_seconds().cast(pl.Float64)
    )
    return df.select("time", "since_change_s", *FEATURES, *TARGETS, "facility_kw", "cooling_kw")


def training_rows(
    con: duckdb.DuckDBPyConnection,
    site: Site,
    since: datetime,
    until: datetime,
    bucket_s: float = 60.0,
) -> pl.DataFrame:
    """The settled rows of `history_rows`, in time order: what the models train on."""
    rows = history_rows(con, site, since, until, bucket_s)
    if rows.is_empty():
        raise HistoryError(
            f"no complete telemetry rows between {since:%Y-%m-%d %H:%M} and "
            f"{until:%Y-%m-%d %H:%M} in the store (need every metric of "
            "twin/optimizer/observe.py FEATURE_METRICS and TARGET_METRICS)"
        )
    return rows.filter(pl.col("since_change_s") >= SETTLE_S)


def _naive(t: datetime) -> datetime:
    from datetime import UTC

    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t
