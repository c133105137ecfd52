"""Per-device failure features from DuckDB windows, with as-of semantics.

A feature row for (device, t) uses only samples and events with read_time <= t. Samples
are first reduced to buckets of `bucket_s` seconds that END on a grid anchored at the
last snapshot time ((end - bucket_s, end]); windows are frames over those buckets, so a
row at t sees buckets ending at or before t and nothing later. The whole computation is
SQL (no per-sample Python). tests/test_failure_leakage.py recomputes features on history
truncated at t and requires identical rows.

A part swap starts afresh: the twin writes a `part_swapped` event when a slot's part
changes (twin/parts.py), at the new part's first report, which is its tenure's start.
A row (device, t) reads only the device's samples and its own events since the newest
such event at or before t, so a new GPU's features never count the old one's XIDs or
counters. The device's samples before a swap but in the swap's own bucket are left out
altogether (a bucket then holds one part only, the peers' medians included).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import polars as pl

from domain.xids import FAILURE_XID_CODES

CLASSES = ("gpu", "psu", "cdu", "crah")
LOOKBACK_S = 6 * 3600  # the longest window: what a single as-of computation reads
THROTTLE_MASK = 0x08 | 0x20 | 0x40  # HwSlowdown | SwThermalSlowdown | HwThermalSlowdown
XID_WINDOW_S = 2 * 3600

COMMON = ["stale_reads", "read_ratio_15m", "metrics_missing", "collector_errors_1h"]
XID_COLS = [f"xid{x}_2h" for x in FAILURE_XID_CODES]
FEATURES: dict[str, list[str]] = {
    "gpu": [
        "temp_c",
        "temp_dev_c",
        "temp_slope_kph",
        "power_w",
        "throttle_frac_1h",
        "ecc_corr_1h",
        "ecc_corr_rate_15m_ph",
        "ecc_accel",
        "ecc_uncorr_6h",
        "remap_corr_6h",
        "remap_uncorr_6h",
        "row_remap_pending",
        "row_remap_failure_6h",
        *XID_COLS,
        *COMMON,
    ],
    # losses, not efficiency: an ageing PSU's conversion losses grow (1 + 3p^2 in the
    # simulator) while efficiency moves by fractions of a point; losses relative to the
    # rack's other PSUs cancel load and inlet temperature
    "psu": [
        "psu_loss_ratio",
        "psu_loss_slope_30m_ph",
        "psu_loss_slope_1h_ph",
        "psu_loss_slope_2h_ph",
        "psu_loss_rise_age_h",
        "psu_loss_double_h",
        *COMMON,
    ],
    "cdu": [
        "speed_per_flow",
        "speed_per_flow_drift_6h",
        "speed_per_flow_slope_ph",
        "pump_w_per_lpm",
        "flow_lpm",
        "reservoir_pct",
        "reservoir_slope_pph",
        "hours_to_reservoir_30",
        "leak_detected",
        *COMMON,
    ],
    "crah": [
        "fan_power_ratio",
        "fan_power_ratio_dev",
        "fan_power_ratio_slope_ph",
        "fan_power_ratio_drift_6h",
        "fan_power_ratio_rise_pct",
        "fan_power_ratio_rise_pct_30m",
        "fan_speed_pct",
        "return_air_c",
        *COMMON,
    ],
}


def _ts(t: datetime) -> str:
    return t.replace(tzinfo=None).isoformat(sep=" ")


def _frame(window_s: int, bucket_s: int) -> str:
    """A window over the buckets ending in (t - window_s, t] of the same part (a swap
    starts a new partition)."""
    back = max(window_s - bucket_s, 0)
    return (
        f"(PARTITION BY device_id, part_since ORDER BY bucket_end RANGE BETWEEN "
        f"INTERVAL {back} SECOND PRECEDING AND CURRENT ROW)"
    )


def swaps_query(events: str, lo: str, hi: str) -> str:
    """(device_id, swap_t) of the part swaps in (lo, hi]: where a slot's new part's
    tenure starts (the twin's `part_swapped` events)."""
    return (
        f"SELECT DISTINCT device_id, read_time AS swap_t FROM {events} "
        f"WHERE kind = 'part_swapped' AND read_time > TIMESTAMP '{lo}' "
        f"AND read_time <= TIMESTAMP '{hi}'"
    )


def bucket_query(samples: str, anchor: str, lo: str, b: int, swaps: str | None = None) -> str:
    """Per (device, bucket) aggregates of the samples in (lo, anchor], buckets
    (end - b, end] ending on the grid anchored at `anchor`: the one definition both the
    SQL features and the live ones (twin/failure/live.py) reduce samples with.

    `swaps` (a table name: device_id, swap_t; None: no swap in the span): each bucket row
    gets `part_since`, the newest swap at or before its samples (NULL: none), and a
    device's samples before a swap in that swap's bucket are dropped."""
    bucket_end = (
        f"TIMESTAMP '{anchor}' - to_seconds({b} * floor(epoch(TIMESTAMP '{anchor}' - read_time)"
        f" / {b}))"
    )
    span = f"""
      SELECT *, {bucket_end} AS bucket_end FROM {samples}
      WHERE read_time > TIMESTAMP '{lo}' AND read_time <= TIMESTAMP '{anchor}'
        AND kind IN ('gpu', 'power', 'cooling', 'air')"""
    if swaps is None:  # the plain reduction: no part column to carry through it
        s, part_since = span, "NULL::TIMESTAMP"
    else:
        part_since = "max(part_since)"
        # p: the swap that started the sample's part; n: the next swap, whose bucket
        # holds only the new part's samples
        s = f"""
      SELECT x.*, p.swap_t AS part_since FROM ({span}) x
      ASOF LEFT JOIN {swaps} p ON x.device_id = p.device_id AND x.read_time >= p.swap_t
      ASOF LEFT JOIN {swaps} n ON x.device_id = n.device_id AND x.read_time < n.swap_t
      WHERE n.swap_t IS NULL OR n.swap_t > x.bucket_end"""
    return f"""
    WITH s AS ({s})
    SELECT device_id, bucket_end, any_value(rack) AS rack, {part_since} AS part_since,
      CASE WHEN any_value(kind) = 'gpu' THEN 'gpu' WHEN any_value(kind) = 'cooling' THEN 'cdu'
           WHEN any_value(kind) = 'air' THEN 'crah'
           WHEN bool_or(metric = 'output_power_w') THEN 'psu' END AS device_class,
      max(read_time) AS last_read, count(DISTINCT read_time) AS n_reads,
      count(DISTINCT metric) AS n_metrics,
      avg(value) FILTER (metric = 'gpu_temp_c') AS temp_c,
      avg(value) FILTER (metric = 'power_w') AS power_w,
      avg((((value::BIGINT) & {THROTTLE_MASK}) > 0)::INT)
          FILTER (metric = 'throttle_reasons') AS throttled,
      max(value) FILTER (metric = 'ecc_corrected_total') AS ecc_corr,
      max(value) FILTER (metric = 'ecc_uncorrected_total') AS ecc_uncorr,
      max(value) FILTER (metric = 'remapped_rows_correctable') AS remap_corr,
      max(value) FILTER (metric = 'remapped_rows_uncorrectable') AS remap_uncorr,
      max(value) FILTER (metric = 'row_remap_pending') AS remap_pending,
      max(value) FILTER (metric = 'row_remap_failure') AS remap_failure,
      100 * sum(value) FILTER (metric = 'output_power_w')
          / nullif(sum(value) FILTER (metric = 'input_power_w'), 0) AS eff_pct,
      avg(value) FILTER (metric = 'pump_speed_pct')
          / nullif(avg(value) FILTER (metric = 'flow_lpm'), 0) * 100 AS speed_per_flow,
      avg(value) FILTER (metric = 'pump_power_w')
          / nullif(avg(value) FILTER (metric = 'flow_lpm'), 0) AS pump_w_per_lpm,
      avg(value) FILTER (metric = 'flow_lpm') AS flow_lpm,
      avg(value) FILTER (metric = 'reservoir_level_pct') AS reservoir_pct,
      max(value) FILTER (metric = 'leak_detected') AS leak_detected,
      avg(value) FILTER (metric = 'fan_power_w')
          / nullif(pow(avg(value) FILTER (metric = 'fan_speed_pct') / 100, 3), 0)
          AS fan_power_ratio,
      avg(value) FILTER (metric = 'fan_speed_pct') AS fan_speed_pct,
      avg(value) FILTER (metric = 'return_air_temp_c') AS return_air_c
    FROM s GROUP BY device_id, bucket_end
    """


def peers_query(buckets: str) -> str:
    """Bucket rows with a class, plus peer deviations (same class and rack/hall, same
    bucket): tdev, lr (losses over the rack median PSU's losses), fdev."""
    return f"""
    SELECT *,
        temp_c - median(temp_c) OVER (PARTITION BY device_class, rack, bucket_end) AS tdev,
        -- losses (input/output - 1) over the rack median PSU's losses
        (100 / nullif(eff_pct, 0) - 1) / nullif(100 / nullif(median(eff_pct)
            OVER (PARTITION BY device_class, rack, bucket_end), 0) - 1, 0) AS lr,
        fan_power_ratio / nullif(median(fan_power_ratio)
            OVER (PARTITION BY device_class, rack, bucket_end), 0) - 1 AS fdev
    FROM {buckets} WHERE device_class IS NOT NULL"""


def compute_features(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    bucket_s: int = 300,
    classes: tuple[str, ...] = CLASSES,
    samples: str = "samples",
    events: str = "events",
) -> pl.DataFrame:
    """Feature rows for every device of `classes` at every t = end - k*bucket_s >= start.

    One row per (device, t) for devices seen before t (within LOOKBACK_S); columns
    device_id, device_class, rack, t, then the union of FEATURES (null where a class does
    not have a feature)."""
    end = end.replace(tzinfo=None, microsecond=0)
    start = min(start.replace(tzinfo=None), end)  # `now` with microseconds: score at end
    n_steps = int((end - start).total_seconds() // bucket_s)
    lo = end - timedelta(seconds=n_steps * bucket_s + LOOKBACK_S)
    anchor, b = _ts(end), bucket_s
    f15, f30, f1h, f2h, f6h = (_frame(w, b) for w in (900, 1800, 3600, 7200, LOOKBACK_S))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _fsw AS {swaps_query(events, _ts(lo), anchor)}")
    has_swaps = bool(con.sql("SELECT count(*) FROM _fsw").fetchall()[0][0])
    swaps = "_fsw" if has_swaps else None  # no swap: the plain reduction, no as-of joins
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _fb AS {bucket_query(samples, anchor, _ts(lo), b, swaps)}"
    )
    # peer deviations (same class and rack/hall, same bucket), then windows over buckets
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE _fw0 AS
    WITH p AS (
      SELECT *, epoch(bucket_end - TIMESTAMP '{anchor}') / 3600.0 AS th
      FROM ({peers_query("_fb")}))
    SELECT device_id, device_class, rack, bucket_end, last_read, part_since,
      {b}.0 / nullif(max(n_reads) OVER {f6h}, 0) AS read_interval_s,
      sum(n_reads) OVER {f15} / nullif(3 * max(n_reads) OVER {f6h}, 0) AS read_ratio_15m,
      max(n_metrics) OVER {f6h} - n_metrics AS metrics_missing,
      avg(temp_c) OVER {f15} AS temp_c, avg(tdev) OVER {f15} AS temp_dev_c,
      regr_slope(temp_c, th) OVER {f2h} AS temp_slope_kph,
      avg(power_w) OVER {f15} AS power_w, avg(throttled) OVER {f1h} AS throttle_frac_1h,
      ecc_corr - min(ecc_corr) OVER {f1h} AS ecc_corr_1h,
      4 * (ecc_corr - min(ecc_corr) OVER {f15}) AS ecc_corr_rate_15m_ph,
      ln(1 + 4 * (ecc_corr - min(ecc_corr) OVER {f15}))
        - ln(1 + (ecc_corr - min(ecc_corr) OVER {f6h}) * 3600.0
                 / greatest(epoch(bucket_end - min(bucket_end) OVER {f6h}) + {b}, {b}))
        AS ecc_accel,
      ecc_uncorr - min(ecc_uncorr) OVER {f6h} AS ecc_uncorr_6h,
      remap_corr - min(remap_corr) OVER {f6h} AS remap_corr_6h,
      remap_uncorr - min(remap_uncorr) OVER {f6h} AS remap_uncorr_6h,
      -- NVML row-remap flags: pending clears at the next GPU reset (the latest bucket
      -- says whether one is waiting), a failure (no spare row left) is sticky: any in 6 h.
      -- Not reported (older drivers, the simulator) reads as 0: nothing known pending
      coalesce(remap_pending, 0) AS row_remap_pending,
      coalesce(max(remap_failure) OVER {f6h}, 0) AS row_remap_failure_6h,
      avg(lr) OVER {f15} AS psu_loss_ratio,
      avg(speed_per_flow) OVER {f15} AS speed_per_flow,
      avg(speed_per_flow) OVER {f15} - first_value(speed_per_flow) OVER {f6h}
        AS speed_per_flow_drift_6h,
      regr_slope(speed_per_flow, th) OVER {f2h} AS speed_per_flow_slope_ph,
      avg(pump_w_per_lpm) OVER {f15} AS pump_w_per_lpm, avg(flow_lpm) OVER {f15} AS flow_lpm,
      reservoir_pct, regr_slope(reservoir_pct, th) OVER {f1h} AS reservoir_slope_pph,
      leak_detected,
      avg(fan_power_ratio) OVER {f15} AS fan_power_ratio, avg(fdev) OVER {f15}
        AS fan_power_ratio_dev,
      regr_slope(fan_power_ratio, th) OVER {f2h} AS fan_power_ratio_slope_ph,
      avg(fan_power_ratio) OVER {f15} - first_value(fan_power_ratio) OVER {f6h}
        AS fan_power_ratio_drift_6h,
      -- relative rise over the fan's own 6-h low and over the last 30 min: comparable
      -- across fan models, and quick to show a rise that has only just begun
      100 * (avg(fan_power_ratio) OVER {f15}
             / nullif(min(fan_power_ratio) OVER {f6h}, 0) - 1) AS fan_power_ratio_rise_pct,
      100 * (fan_power_ratio / nullif(first_value(fan_power_ratio) OVER {f30}, 0) - 1)
        AS fan_power_ratio_rise_pct_30m,
      avg(fan_speed_pct) OVER {f15} AS fan_speed_pct, avg(return_air_c) OVER {f15}
        AS return_air_c
    FROM p
    """)
    # trends of the 15-min loss ratio: change from the bucket `w` earlier, per hour
    slopes = ",\n".join(
        f"(psu_loss_ratio - first_value(psu_loss_ratio) OVER {_frame(w + b, b)}) / nullif("
        f"epoch(bucket_end - first_value(bucket_end) OVER {_frame(w + b, b)}) / 3600.0, 0)"
        f" AS psu_loss_slope_{name}_ph"
        for name, w in (("30m", 1800), ("1h", 3600), ("2h", 7200))
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE _fw AS SELECT *, {slopes} FROM _fw0")
    xid_counts = ",\n".join(
        f"count(*) FILTER (e.kind = 'xid' AND e.attrs->>'xid' = '{x}') AS xid{x}_2h"
        for x in FAILURE_XID_CODES
    )
    cls = ", ".join(f"'{c}'" for c in classes)
    # the part in the slot at t: the newest swap at or before t (NULL: none in the span)
    current_part = (
        "SELECT g0.*, x.swap_t AS cur_since FROM g0 ASOF LEFT JOIN _fsw x "
        "ON g0.device_id = x.device_id AND g0.t >= x.swap_t"
        if has_swaps
        else "SELECT *, NULL::TIMESTAMP AS cur_since FROM g0"
    )
    # grid: every device seen within the lookback before t, at every t; as-of join to
    # its newest bucket (a silent device keeps its last features and grows stale_reads),
    # if that bucket is of the part in the slot at t (a new part not reporting yet has no
    # row); events: the device's own since its part's swap, its rack's all
    out = con.sql(f"""
    WITH g0 AS (
      SELECT d.device_id, t.t FROM (SELECT DISTINCT device_id FROM _fw
                                    WHERE device_class IN ({cls})) d,
        (SELECT TIMESTAMP '{anchor}' - to_seconds({b} * k) AS t
         FROM range(0, {n_steps + 1}) r(k)) t),
    g AS ({current_part}),
    j AS (
      SELECT g.t, w.* FROM g ASOF JOIN _fw w
        ON g.device_id = w.device_id AND w.bucket_end <= g.t
      WHERE w.bucket_end > g.t - INTERVAL {LOOKBACK_S} SECOND
        AND w.part_since IS NOT DISTINCT FROM g.cur_since),
    ev AS (
      SELECT j.device_id, j.t, {xid_counts},
        count(*) FILTER (e.kind = 'source_error' AND e.read_time > j.t - INTERVAL 1 HOUR)
          AS collector_errors_1h
      FROM j JOIN {events} e
        ON (e.device_id = j.device_id OR e.device_id = j.rack)
       AND e.read_time <= j.t AND e.read_time > j.t - INTERVAL {XID_WINDOW_S} SECOND
       AND (e.device_id <> j.device_id OR j.part_since IS NULL
            OR e.read_time >= j.part_since)
      GROUP BY j.device_id, j.t)
    SELECT j.* EXCLUDE (bucket_end, last_read, read_interval_s, part_since),
      epoch(j.t - j.last_read) / nullif(j.read_interval_s, 0) AS stale_reads,
      j.read_interval_s,
      -- linear extrapolation of the loss ratio: hours since it left 1 (the peers' level)
      -- and hours until it doubles; capped at 100 h for flat or falling losses
      CASE WHEN j.psu_loss_slope_1h_ph IS NOT NULL THEN least((j.psu_loss_ratio - 1)
        / greatest(j.psu_loss_slope_1h_ph, 1e-3), 100) END AS psu_loss_rise_age_h,
      CASE WHEN j.psu_loss_slope_1h_ph IS NOT NULL THEN least(j.psu_loss_ratio
        / greatest(j.psu_loss_slope_1h_ph, 1e-3), 100) END AS psu_loss_double_h,
      least((j.reservoir_pct - 30) / nullif(greatest(-j.reservoir_slope_pph, 0), 0), 100)
        AS hours_to_reservoir_30,
      {", ".join(f"coalesce(ev.{c}, 0) AS {c}" for c in XID_COLS)},
      coalesce(ev.collector_errors_1h, 0) AS collector_errors_1h
    FROM j LEFT JOIN ev ON ev.device_id = j.device_id AND ev.t = j.t
    ORDER BY j.t, j.device_id
    """).pl()
    out = out.with_columns(
        pl.when(pl.col("device_class") != "cdu")
        .then(None)
        .otherwise(pl.col("hours_to_reservoir_30").fill_null(100.0))
        .alias("hours_to_reservoir_30")
    )
    return out.filter(pl.col("t") >= start)


def features_asof(
    con: duckdb.DuckDBPyConnection, now: datetime, bucket_s: int = 300, **kw
) -> pl.DataFrame:
    """The feature rows of every device at `now` (reads only the lookback window)."""
    return compute_features(con, now, now, bucket_s, **kw)


def failed_devices(
    con: duckdb.DuckDBPyConnection, now: datetime, events: str = "events"
) -> pl.DataFrame:
    """Devices with a failure event (XID 79/48/95/64, device lost, pump/PSU/fan failed) in
    the lookback: they are not at risk, they have failed. A failure before the slot's
    newest part swap was the old part's: the new part has not failed."""
    crit = "('79', '48', '95', '64')"
    now_s = _ts(now)
    return con.sql(f"""
    WITH sw AS (
      SELECT device_id, max(read_time) AS since FROM {events}
      WHERE kind = 'part_swapped' AND read_time <= TIMESTAMP '{now_s}'
        AND read_time > TIMESTAMP '{now_s}' - INTERVAL {LOOKBACK_S} SECOND
      GROUP BY device_id)
    SELECT e.device_id, max(e.read_time) AS failed_at,
      arg_max(e.message, e.read_time) AS message
    FROM {events} e LEFT JOIN sw ON sw.device_id = e.device_id
    WHERE e.read_time <= TIMESTAMP '{now_s}'
      AND e.read_time > TIMESTAMP '{now_s}' - INTERVAL {LOOKBACK_S} SECOND
      AND (e.kind IN ('device_lost', 'pump_failed', 'psu_fault', 'fan_failed')
           OR (e.kind = 'xid' AND e.attrs->>'xid' IN {crit}))
      AND (sw.since IS NULL OR e.read_time >= sw.since)
    GROUP BY e.device_id""").pl()
