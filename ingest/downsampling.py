"""1-minute and 1-hour rollups, maintained incrementally, and retention.

Each closed minute is aggregated from raw samples exactly once (a watermark in
`rollup_state`); each closed hour from the minute rollups. A minute is closed once both
the clock and the newest stored sample are `lateness_s` past its end (by the clock alone
once nothing new has arrived for `idle_close_s`). A sample that arrives for a
minute already rolled up marks its (device, metric, minute) in `rollup_dirty`, in the
same transaction that stores it; the next `advance` recomputes those buckets and the
hours they fall in. Retention never deletes what the next tier has not yet covered.

Layout for series reads: every rollup row carries `sid`, a 64-bit key of its (device,
metric) (`series_key`). The rows of a closed hour are rewritten sorted by (sid, bucket)
when the hour closes, and those of a closed day, in `sid` slices, by `compact_step`
(one slice per maintenance call, so ingest never waits long): DuckDB's zone maps then
skip every row group but the one or two holding a series' day, and a day of one
series reads ~1,440 rows instead of the whole tier. Compaction rewrites rows, never
changes them: the rollups' values are the same in any order.

Columns: min, max, sum, count (mean = sum / count, a virtual column), last (the value
with the latest read time) and last_time, and for counters `increase`: the sum of
positive steps between consecutive samples, a drop counting as a reset to zero
(energy in the counter's unit: mJ for GPUs, kWh for meters and PDUs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
);
ALTER TABLE {name} ADD COLUMN IF NOT EXISTS sid UBIGINT;"""
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

# The series key: the first 8 bytes of MD5(device_id NUL metric), little-endian. Stable
# across DuckDB versions and shards (no dictionary to keep in step); 64 bits make a
# collision among a million series a ~3e-8 chance.
SERIES_KEY_SQL = "md5_number_upper(device_id || chr(0) || metric)"
_COLS = "bucket, device_id, metric, min, max, sum, count, last, last_time, increase, sid"
# a day's compaction rewrites about this many rows per transaction (one sid slice)
COMPACT_SLICE_ROWS = 2_000_000


def series_key(device_id: str, metric: str) -> int:
    """`SERIES_KEY_SQL` computed in Python (the value a series read filters on)."""
    digest = hashlib.md5(f"{device_id}\0{metric}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "little")


def backfill_series_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Rows written before the key existed get it (once: a no-op afterwards)."""
    for table in ("rollup_1m", "rollup_1h"):
        con.execute(f"UPDATE {table} SET sid = {SERIES_KEY_SQL} WHERE sid IS NULL")


MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
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
    # Cold tier: raw samples past `raw_s` are first written here as Parquet (zstd, sorted
    # by series), one file per retention pass, then deleted; files older than `cold_s`
    # are removed. None: raw samples past retention are only deleted.
    cold_dir: str | None = None
    cold_s: float = 365 * 86400.0


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
        # closed days still to be rewritten sorted: (day, sid slice, slices); in memory
        # only, since a day left hour-sorted after a restart is slower, never wrong
        self.compact_queue: list[tuple[datetime, int, int]] = []

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

    def advance(
        self, now: datetime | None = None, hold: bool = False, max_span_s: float | None = None
    ) -> dict[str, int]:
        """Roll up every minute (hour) that ended `lateness_s` before `now` and before the
        data clock; recompute dirty buckets. `hold`: only the latter. One transaction.
        `max_span_s`: roll at most this much time in one call (`backlog` 1 in the answer:
        call again), so that a long backlog (a simulated history, a restart after
        downtime) never holds the store's writer for long (issue 26, story)."""
        now = _now(now)
        con = self.con
        out = {"minutes": 0, "hours": 0, "dirty": 0, "backlog": 0}
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
            if start is not None and max_span_s is not None and not hold:
                capped = floor_to(start + timedelta(seconds=max(60.0, max_span_s)), MINUTE)
                if target > capped:
                    target, out["backlog"] = capped, 1
            if start is not None and target > start and not hold:
                self._roll_minutes(start, target)
                self._set("1m", target)
                out["minutes"] = int((target - start) / MINUTE)
                h_start = marks["1h"] or floor_to(start, HOUR)
                h_target = floor_to(target, HOUR)
                if h_target > h_start:
                    self._sort_run("rollup_1m", h_start, h_target)
                    con.execute(
                        f"""INSERT INTO rollup_1h ({_COLS})
                        SELECT time_bucket(INTERVAL 1 hour, bucket) AS hb, device_id, metric,
                               min(min), max(max), sum(sum), sum(count)::BIGINT,
                               arg_max(last, last_time), max(last_time), sum(increase),
                               any_value(sid) AS sid
                        FROM rollup_1m WHERE bucket >= $a AND bucket < $b
                        GROUP BY hb, device_id, metric ORDER BY sid, hb""",
                        {"a": h_start, "b": h_target},
                    )
                    self._queue_days(h_start, h_target)
                    self._set("1h", h_target)
                    out["hours"] = int((h_target - h_start) / HOUR)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            self._loaded = False
            raise
        self._loaded = False
        return out

    def _sort_run(
        self,
        table: str,
        a: datetime,
        b: datetime,
        sid_lo: int = 0,
        sid_hi: int = 1 << 64,
    ) -> int:
        """Rewrite `table`'s rows in [a, b) x [sid_lo, sid_hi) sorted by (sid, bucket): the
        sorted copy is appended, then the rows it copied deleted (in the caller's
        transaction)."""
        con = self.con
        top = one_row(con.execute(f"SELECT coalesce(max(rowid), -1) FROM {table}"))[0]
        p = {"a": a, "b": b, "lo": sid_lo, "hi": sid_hi - 1}
        where = "bucket >= $a AND bucket < $b AND sid BETWEEN $lo AND $hi"
        n = one_row(
            con.execute(
                f"INSERT INTO {table} ({_COLS}) SELECT {_COLS} FROM {table} WHERE {where} "
                "ORDER BY sid, bucket",
                p,
            )
        )[0]
        con.execute(f"DELETE FROM {table} WHERE {where} AND rowid <= $top", {**p, "top": top})
        return int(n)

    def _queue_days(self, h_start: datetime, h_target: datetime) -> None:
        """Closed days (by the hour watermark) join the compaction queue, in slices."""
        day = floor_to(h_start, DAY)
        while day + DAY <= h_target:
            if day + DAY > h_start:  # the day closed in this advance
                rows = one_row(
                    self.con.execute(
                        "SELECT count(*) FROM rollup_1m WHERE bucket >= $a AND bucket < $b",
                        {"a": day, "b": day + DAY},
                    )
                )[0]
                slices = max(1, -(-int(rows) // COMPACT_SLICE_ROWS))
                self.compact_queue += [(day, k, slices) for k in range(slices)]
            day += DAY

    def compact_step(self) -> int:
        """Rewrite one queued slice of a closed day sorted by (sid, bucket), in its own
        transaction; returns the rows rewritten (0: nothing queued)."""
        if not self.compact_queue:
            return 0
        day, k, slices = self.compact_queue[0]
        width = (1 << 64) // slices
        lo, hi = k * width, (1 << 64) if k == slices - 1 else (k + 1) * width
        self.con.execute("BEGIN TRANSACTION")
        try:
            n = self._sort_run("rollup_1m", day, day + DAY, lo, hi)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.compact_queue.pop(0)
        return n

    def _roll_minutes(self, start: datetime, end: datetime) -> None:
        lookback = timedelta(seconds=self.retention.counter_lookback_s)
        self.con.execute(
            f"""INSERT INTO rollup_1m ({_COLS})
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
            SELECT b.*, inc.increase, {SERIES_KEY_SQL} AS sid FROM base b
            LEFT JOIN inc USING (device_id, metric, bucket) ORDER BY sid, bucket
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
                f"""INSERT INTO rollup_1m ({_COLS})
                WITH base AS ({_aggregate_sql("_dsamples", "1 minute")}),
                inc AS ({
                    _increase_sql(f"(SELECT * FROM _dsamples WHERE metric IN {_COUNTERS})", "$lo")
                })
                SELECT b.*, inc.increase, {SERIES_KEY_SQL} FROM base b
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
                con.execute(f"""INSERT INTO rollup_1h ({_COLS})
                    SELECT d.hb, r.device_id, r.metric, min(min), max(max), sum(sum),
                           sum(count)::BIGINT, arg_max(last, last_time), max(last_time),
                           sum(increase), any_value(r.sid)
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
                if r.cold_dir is not None:
                    out["samples_to_cold"] = self._to_cold(cut, now)
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

    def _to_cold(self, cut: datetime, now: datetime) -> int:
        """Samples before `cut` to a Parquet file named by their time range (a retried
        pass rewrites the same file), sorted by series so each reads as one run; cold
        files past `cold_s` removed."""
        assert self.retention.cold_dir is not None
        folder = Path(self.retention.cold_dir)
        folder.mkdir(parents=True, exist_ok=True)
        lo, n = one_row(
            self.con.execute(
                "SELECT min(read_time), count(*) FROM samples WHERE read_time < $t", {"t": cut}
            )
        )
        if n:
            name = folder / f"samples_{lo:%Y%m%dT%H%M%S}_{cut:%Y%m%dT%H%M%S}.parquet"
            self.con.execute(
                f"""COPY (SELECT * FROM samples WHERE read_time < $t
                    ORDER BY device_id, metric, read_time)
                TO '{name}' (FORMAT PARQUET, COMPRESSION ZSTD, ROW_GROUP_SIZE 1000000)""",
                {"t": cut},
            )
        oldest = now - timedelta(seconds=self.retention.cold_s)
        for f in folder.glob("samples_*_*.parquet"):
            end = datetime.strptime(f.stem.rsplit("_", 1)[1], "%Y%m%dT%H%M%S")
            if end < oldest:
                f.unlink()
        return int(n)

    def _delete(self, table: str, column: str, before: datetime) -> int:
        return one_row(self.con.execute(f"DELETE FROM {table} WHERE {column} < $t", {"t": before}))[
            0
        ]
