"""1-minute and 1-hour rollups, maintained incrementally, and retention.

Each closed minute is aggregated from raw samples exactly once (a watermark in
`rollup_state`); each closed hour from the minute rollups. A minute is closed once both
the clock and the newest stored sample are `lateness_s` past its end (by the clock alone
once nothing new has arrived for `idle_close_s`). A sample that arrives for a
minute already rolled up marks its (device, metric, minute) in `rollup_dirty`, in the
same transaction that stores it; the next `advance` recomputes those buckets and the
hours they fall in. Retention never deletes what the next tier has not yet covered.

Columns: min, max, sum, count (mean = sum / count, a virtual column), last (the value
with the latest read time) and last_time, and for counters `increase`: the sum of
positive steps between consecutive samples, a drop counting as a reset to zero
(energy in the counter's unit: mJ for GPUs, kWh for meters and PDUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from domain import contract
from ingest.sql import one_row

# Monotonic counters: their rollups carry `increase` (energy or event deltas).
COUNTER_METRICS = tuple(sorted(contract.COUNTER_METRICS))
_COUNTERS = "(" + ", ".join(f"'{m}'" for m in COUNTER_METRICS) + ")"

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    bucket TIMESTAMP NOT NULL,
    device_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    min DOUBLE NOT NULL,
    max DOUBLE NOT NULL,
    sum DOUBLE NOT NULL,
    count BIGINT NOT NULL,
    last DOUBLE NOT NULL,
    last_time TIMESTAMP NOT NULL,
    increase DOUBLE,
    mean DOUBLE GENERATED ALWAYS AS (sum / count) VIRTUAL
);"""
ROLLUP_SCHEMA = (
    _TABLE.format(name="rollup_1m")
    + _TABLE.format(name="rollup_1h")
    + """
CREATE TABLE IF NOT EXISTS rollup_state (
    tier VARCHAR PRIMARY KEY,
    done_until TIMESTAMP NOT NULL  -- every bucket before this is rolled up
);
CREATE TABLE IF NOT EXISTS rollup_dirty (
    device_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    bucket TIMESTAMP NOT NULL
);"""
)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
# a late counter sample's step is taken from raw samples this far back at most
DIRTY_LOOKBACK = timedelta(minutes=10)


@dataclass(frozen=True)
class Retention:
    raw_s: float = 7 * 86400.0
    rollup_1m_s: float = 90 * 86400.0
    rollup_1h_s: float = 730 * 86400.0
    lateness_s: float = 120.0  # a minute is rolled up this long after it ends
    idle_close_s: float = 3600.0  # no new samples for this long: close minutes by the clock
    counter_lookback_s: float = 86400.0  # how far back a counter's previous value is sought


def floor_to(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1)
    return epoch + ((t - epoch) // step) * step


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC).replace(tzinfo=None)


def _aggregate_sql(source: str, bucket_width: str) -> str:
    """Base aggregates of raw samples `source` (read_time, device_id, metric, value)."""
    return f"""
        SELECT time_bucket(INTERVAL {bucket_width}, read_time) AS bucket, device_id, metric,
               min(value) AS min, max(value) AS max, sum(value) AS sum, count(*) AS count,
               arg_max(value, read_time) AS last, max(read_time) AS last_time
        FROM {source} GROUP BY ALL"""


def _increase_sql(points: str, since: str) -> str:
    """Per minute counter increase from `points` (device_id, metric, read_time, value),
    which must include each series' previous point before `since`."""
    return f"""
        SELECT device_id, metric, time_bucket(INTERVAL 1 minute, read_time) AS bucket,
               sum(CASE WHEN prev IS NULL THEN 0 WHEN value >= prev THEN value - prev
                        ELSE value END) AS increase
        FROM (SELECT *, lag(value) OVER (PARTITION BY device_id, metric ORDER BY read_time)
                        AS prev FROM {points})
        WHERE read_time >= {since} GROUP BY ALL"""


class Rollups:
    def __init__(self, con: duckdb.DuckDBPyConnection, retention: Retention) -> None:
        self.con = con
        self.retention = retention
        self._minute_done: datetime | None = None
        self._loaded = False

    def watermarks(
        self, cur: duckdb.DuckDBPyConnection | None = None
    ) -> dict[str, datetime | None]:
        rows = dict(
            (cur or self.con).execute("SELECT tier, done_until FROM rollup_state").fetchall()
        )
        return {"1m": rows.get("1m"), "1h": rows.get("1h")}

    def minute_done(self) -> datetime | None:
        if not self._loaded:
            self._minute_done = self.watermarks()["1m"]
            self._loaded = True
        return self._minute_done

    def mark_late(self, cur: duckdb.DuckDBPyConnection, source: str) -> None:
        """In the write transaction: note minutes already rolled up that get new samples."""
        done = self.minute_done()
        if done is None:
            return
        cut = int(done.replace(tzinfo=UTC).timestamp() * 1000)
        cur.execute(f"""INSERT INTO rollup_dirty
            SELECT DISTINCT device_id, metric,
                   time_bucket(INTERVAL 1 minute, epoch_ms(read_time_ms))
            FROM {source} WHERE read_time_ms < {cut}""")

    def _data_time(self) -> datetime | None:
        """How far the stored data has got: the least advanced partition's newest sample
        (partitions idle for `idle_close_s` do not hold the others back). Without Kafka
        bookkeeping (the reference write path), the newest sample overall."""
        idle = timedelta(seconds=self.retention.idle_close_s)
        t = one_row(
            self.con.execute(
                """SELECT min(max_read_time) FROM kafka_offsets
            WHERE max_read_time >= (SELECT max(max_read_time) FROM kafka_offsets) - $idle""",
                {"idle": idle},
            )
        )[0]
        if t is None:
            t = one_row(self.con.execute("SELECT max(read_time) FROM latest"))[0]
        return t

    def _set(self, tier: str, until: datetime) -> None:
        self.con.execute(
            "INSERT INTO rollup_state VALUES ($t, $u) ON CONFLICT (tier) "
            "DO UPDATE SET done_until = excluded.done_until",
            {"t": tier, "u": until},
        )

    def advance(self, now: datetime | None = None, hold: bool = False) -> dict[str, int]:
        """Roll up every minute (hour) that ended `lateness_s` before `now` and before the
        data clock; recompute dirty buckets. `hold`: only the latter. One transaction."""
        now = _now(now)
        con = self.con
        out = {"minutes": 0, "hours": 0, "dirty": 0}
        con.execute("BEGIN TRANSACTION")
        try:
            marks = self.watermarks()
            # Data time, not only wall time: while ingest catches up on a backlog, a minute
            # is closed once newer samples have arrived, not when the clock says so.
            newest = self._data_time()
            upto = now
            if newest is not None and now - newest < timedelta(seconds=self.retention.idle_close_s):
                upto = min(now, newest)  # else the stream stopped: close by the clock
            target = floor_to(upto - timedelta(seconds=self.retention.lateness_s), MINUTE)
            start = marks["1m"]
            if start is None:
                first = one_row(con.execute("SELECT min(read_time) FROM samples"))[0]
                start = floor_to(first, MINUTE) if first is not None else None
            out["dirty"] = self._recompute_dirty(marks["1m"], marks["1h"])
            if start is not None and target > start and not hold:
                self._roll_minutes(start, target)
                self._set("1m", target)
                out["minutes"] = int((target - start) / MINUTE)
                h_start = marks["1h"] or floor_to(start, HOUR)
                h_target = floor_to(target, HOUR)
                if h_target > h_start:
                    con.execute(
                        """INSERT INTO rollup_1h (bucket, device_id, metric, min, max,
                            sum, count, last, last_time, increase)
                        SELECT time_bucket(INTERVAL 1 hour, bucket) AS hb, device_id, metric,
                               min(min), max(max), sum(sum), sum(count)::BIGINT,
                               arg_max(last, last_time), max(last_time), sum(increase)
                        FROM rollup_1m WHERE bucket >= $a AND bucket < $b
                        GROUP BY hb, device_id, metric""",
                        {"a": h_start, "b": h_target},
                    )
                    self._set("1h", h_target)
                    out["hours"] = int((h_target - h_start) / HOUR)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            self._loaded = False
            raise
        self._loaded = False
        return out

    def _roll_minutes(self, start: datetime, end: datetime) -> None:
        lookback = timedelta(seconds=self.retention.counter_lookback_s)
        self.con.execute(
            f"""INSERT INTO rollup_1m (bucket, device_id, metric, min, max, sum,
                count, last, last_time, increase)
            WITH base AS ({
                _aggregate_sql(
                    "(SELECT * FROM samples WHERE read_time >= $a AND read_time < $b)", "1 minute"
                )
            }),
            pts AS (
                SELECT device_id, metric, read_time, value FROM samples
                WHERE read_time >= $a AND read_time < $b AND metric IN {_COUNTERS}
                UNION ALL  -- each counter's last value before $a, from the minute rollups
                SELECT device_id, metric, max(last_time), arg_max(last, last_time)
                FROM rollup_1m WHERE bucket < $a AND bucket >= $lb AND metric IN {_COUNTERS}
                GROUP BY device_id, metric),
            inc AS ({_increase_sql("pts", "$a")})
            SELECT b.*, inc.increase FROM base b LEFT JOIN inc USING (device_id, metric, bucket)
            """,
            {"a": start, "b": end, "lb": start - lookback},
        )

    def _recompute_dirty(self, m_done: datetime | None, h_done: datetime | None) -> int:
        con = self.con
        n = one_row(con.execute("SELECT count(*) FROM rollup_dirty"))[0]
        if not n or m_done is None:
            con.execute("DELETE FROM rollup_dirty")
            return 0
        # a counter's late sample also changes the next minute's first step
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _dirty AS
            SELECT DISTINCT device_id, metric, bucket FROM (
                SELECT * FROM rollup_dirty UNION ALL
                SELECT device_id, metric, bucket + INTERVAL 1 minute FROM rollup_dirty
                WHERE metric IN {_COUNTERS})
            WHERE bucket < $done""",
            {"done": m_done},
        )
        lo, hi = one_row(con.execute("SELECT min(bucket), max(bucket) FROM _dirty"))
        if lo is not None:
            con.execute("""DELETE FROM rollup_1m r USING _dirty d WHERE r.device_id = d.device_id
                           AND r.metric = d.metric AND r.bucket = d.bucket""")
            con.execute(
                """CREATE OR REPLACE TEMP TABLE _dsamples AS
                SELECT s.read_time, s.device_id, s.metric, s.value FROM samples s
                SEMI JOIN (SELECT DISTINCT device_id, metric FROM _dirty) d
                     ON d.device_id = s.device_id AND d.metric = s.metric
                WHERE s.read_time >= $lb AND s.read_time < $hi""",
                {"lb": lo - DIRTY_LOOKBACK, "hi": hi + MINUTE},
            )
            con.execute(
                f"""INSERT INTO rollup_1m (bucket, device_id, metric, min, max, sum,
                    count, last, last_time, increase)
                WITH base AS ({_aggregate_sql("_dsamples", "1 minute")}),
                inc AS ({
                    _increase_sql(f"(SELECT * FROM _dsamples WHERE metric IN {_COUNTERS})", "$lo")
                })
                SELECT b.*, inc.increase FROM base b
                SEMI JOIN _dirty d USING (device_id, metric, bucket)
                LEFT JOIN inc USING (device_id, metric, bucket)""",
                {"lo": lo},
            )
            if h_done is not None:
                con.execute(
                    """CREATE OR REPLACE TEMP TABLE _dirty_h AS
                    SELECT DISTINCT device_id, metric, time_bucket(INTERVAL 1 hour, bucket) AS hb
                    FROM _dirty WHERE bucket < $h""",
                    {"h": h_done},
                )
                con.execute("""DELETE FROM rollup_1h r USING _dirty_h d
                    WHERE r.device_id = d.device_id AND r.metric = d.metric AND r.bucket = d.hb""")
                con.execute("""INSERT INTO rollup_1h (bucket, device_id, metric, min, max, sum,
                        count, last, last_time, increase)
                    SELECT d.hb, r.device_id, r.metric, min(min), max(max), sum(sum),
                           sum(count)::BIGINT, arg_max(last, last_time), max(last_time),
                           sum(increase)
                    FROM rollup_1m r JOIN _dirty_h d ON r.device_id = d.device_id
                         AND r.metric = d.metric AND time_bucket(INTERVAL 1 hour, r.bucket) = d.hb
                    GROUP BY d.hb, r.device_id, r.metric""")
        con.execute("DELETE FROM rollup_dirty")
        return int(n)

    def apply_retention(self, now: datetime | None = None) -> dict[str, int]:
        """Delete raw samples, minute and hour rollups past their retention; never what
        the next tier has not rolled up yet."""
        now = _now(now)
        r = self.retention
        marks = self.watermarks()
        out = {}
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            if marks["1m"] is not None:
                cut = min(now - timedelta(seconds=r.raw_s), marks["1m"])
                out["samples_deleted"] = self._delete("samples", "read_time", cut)
            if marks["1h"] is not None:
                cut = min(now - timedelta(seconds=r.rollup_1m_s), marks["1h"])
                out["rollup_1m_deleted"] = self._delete("rollup_1m", "bucket", cut)
            out["rollup_1h_deleted"] = self._delete(
                "rollup_1h", "bucket", now - timedelta(seconds=r.rollup_1h_s)
            )
            out["batches_forgotten"] = self._delete(
                "ingested_batches", "ingested_at", now - timedelta(seconds=r.raw_s)
            )
            out["events_deleted"] = self._delete(
                "events", "read_time", now - timedelta(seconds=r.rollup_1h_s)
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return out

    def _delete(self, table: str, column: str, before: datetime) -> int:
        return one_row(self.con.execute(f"DELETE FROM {table} WHERE {column} < $t", {"t": before}))[
            0
        ]
