"""Shaping samples for the detectors: topology table, time grid, wide per-class frames.

Samples arrive long (one row per device, metric, read time, as in the ``samples``
table). The fleet scorer works on a grid of intervals ("buckets"): the last reading of
each (device, metric) in each bucket. Physics residuals need a device's metrics side
by side, plus its neighbours' (the coolant temperature of the CDU cooling a GPU), so
each device class gets a wide frame: one row per (device, bucket).
"""

from __future__ import annotations

import polars as pl

from domain import contract
from domain.site import Site

# Counters: scored as increase per second (a reset counts as no increase).
RATE_SUFFIX, RESET_SUFFIX = ":rate", ":reset"
# the contract's counters, plus the XID count the scorer derives from events
COUNTER_METRICS = contract.COUNTER_METRICS | {"xid_total"}


def device_table(site: Site) -> pl.DataFrame:
    """device_id, device_class, hall, rack_id (full prefix or null), cdu_id, pdu_id."""
    sid = site.site.id
    rows: list[dict] = []
    rack_of = {r.rack: r for r in site.racks()}
    for d in site.devices():
        r = rack_of.get(d.rack)
        hall = r.hall if r is not None else (d.rack if d.rack != "facility" else None)
        rows.append(
            {
                "device_id": d.id,
                "device_class": d.device_class,
                "hall": hall,
                "rack_id": r.prefix if r is not None else None,
                "cdu_id": f"{sid}/{r.hall}/{r.cdu}" if r is not None else None,
                "pdu_id": f"{sid}/{r.hall}/{r.pdu}" if r is not None else None,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "device_id": pl.String,
            "device_class": pl.String,
            "hall": pl.String,
            "rack_id": pl.String,
            "cdu_id": pl.String,
            "pdu_id": pl.String,
        },
    )


def with_seconds(samples: pl.DataFrame) -> pl.DataFrame:
    """Add ``t_s`` (float seconds since the epoch) from ``read_time`` if missing."""
    if "t_s" in samples.columns:
        return samples
    return samples.with_columns(t_s=pl.col("read_time").dt.epoch("us").cast(pl.Float64) / 1e6)


def grid(samples: pl.DataFrame, interval_s: float) -> pl.DataFrame:
    """Last reading per (device, metric, bucket); bucket = floor(t_s / interval_s).

    Counters also get ``<metric>:rate`` rows (see `add_rates`).
    """
    s = with_seconds(samples)
    g = (
        s.with_columns(bucket=(pl.col("t_s") / interval_s).floor().cast(pl.Int64))
        .group_by("device_id", "metric", "bucket")
        .agg(pl.col("value").sort_by("t_s").last(), pl.col("t_s").max())
    )
    return add_rates(g)


GRID_SQL = """
SELECT device_id, metric, CAST(floor(epoch_us(read_time) / $step_us) AS BIGINT) AS bucket,
       arg_max(value, read_time) AS value, max(epoch_us(read_time)) / 1e6 AS t_s
FROM samples WHERE read_time >= $start AND read_time < $end
GROUP BY ALL
"""


def add_rates(g: pl.DataFrame) -> pl.DataFrame:
    """Add, for counters, ``<counter>:rate`` rows (increase per second since
    the previous bucket; a reset counts as no increase) and ``<counter>:reset`` rows where
    the counter went backwards. The raw counter stays (for stuck checks).
    """
    g = g.select("device_id", "metric", "bucket", "value", "t_s")
    counters = g.filter(pl.col("metric").is_in(list(COUNTER_METRICS)))
    if counters.height:
        prev = [
            pl.col(c).shift(1).over("device_id", "metric", order_by="bucket")
            for c in ("value", "t_s")
        ]
        d = counters.with_columns(dv=pl.col("value") - prev[0], dt=pl.col("t_s") - prev[1]).filter(
            pl.col("dt") > 0
        )
        rates = d.with_columns(
            value=pl.col("dv").clip(lower_bound=0.0) / pl.col("dt"),
            metric=pl.col("metric") + RATE_SUFFIX,
        ).select(g.columns)
        resets = (
            d.filter(pl.col("dv") < 0)
            .with_columns(value=pl.lit(1.0), metric=pl.col("metric") + RESET_SUFFIX)
            .select(g.columns)
        )
        g = pl.concat([g, rates, resets])
    return g


def wide(long_grid: pl.DataFrame, device_ids: list[str] | pl.Series) -> pl.DataFrame:
    """Rows (device_id, bucket), one column per metric, for the given devices."""
    ids = device_ids.to_list() if isinstance(device_ids, pl.Series) else list(device_ids)
    sub = long_grid.filter(pl.col("device_id").is_in(ids))
    if sub.height == 0:
        return pl.DataFrame(schema={"device_id": pl.String, "bucket": pl.Int64})
    return sub.pivot(
        on="metric", index=["device_id", "bucket"], values="value", aggregate_function="last"
    ).sort("device_id", "bucket")
