"""DuckDB storage: raw samples, events, latest state, rollups and ingest bookkeeping.

Exactly-once storage on an at-least-once transport rests on what is written in the same
transaction as the samples:
- the next Kafka offset per partition, so a restarted consumer resumes exactly where the
  database is;
- the ids of stored batches, so a replayed or re-sent batch is skipped whole;
- the samples themselves, against which a sample that comes again in another batch
  (a collector that re-batched its spool) is recognised by (device, metric, read time).
How each duplicate is found cheaply is in `_append` and docs/ingest.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from domain.contract import EventBatch, TelemetryBatch
from ingest.deadletters import SCHEMA as DEAD_LETTER_SCHEMA
from ingest.deadletters import DataLossEvent, DeadLetterRow
from ingest.downsampling import ROLLUP_SCHEMA, Retention, Rollups, backfill_series_keys
from ingest.sql import one_row
from ingest.staging import Staged, Stager, unregister_rows
from ingest.validate import IngestPolicy

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    read_time TIMESTAMP NOT NULL,
    device_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    kind VARCHAR NOT NULL,
    rack VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS latest (
    device_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    read_time TIMESTAMP NOT NULL,
    value DOUBLE NOT NULL,
    kind VARCHAR NOT NULL,
    PRIMARY KEY (device_id, metric)
);
CREATE TABLE IF NOT EXISTS events (
    read_time TIMESTAMP NOT NULL,
    device_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    message VARCHAR,
    attrs JSON,
    collector VARCHAR,
    batch_id VARCHAR
);
-- No primary key: at a million samples a second that is ~1,500 batches a second, and an
-- in-memory index over every id ever stored would grow without bound. Duplicates are
-- looked up in a recent window (ingested_at is in insertion order, so zone maps prune).
CREATE TABLE IF NOT EXISTS ingested_batches (
    batch_id VARCHAR NOT NULL,
    collector VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    n_samples BIGINT NOT NULL,
    ingested_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
ALTER TABLE ingested_batches ADD COLUMN IF NOT EXISTS n_rejected BIGINT DEFAULT 0;
CREATE TABLE IF NOT EXISTS kafka_offsets (
    topic VARCHAR NOT NULL,
    partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
-- newest read time stored per partition: the rollups' data clock (see downsampling.py)
ALTER TABLE kafka_offsets ADD COLUMN IF NOT EXISTS max_read_time TIMESTAMP;
-- the broker's id of the topic the offset belongs to: a re-created topic has a new one
-- and its offsets start again (docs/ingest.md, "Offsets the broker no longer has")
ALTER TABLE kafka_offsets ADD COLUMN IF NOT EXISTS topic_id VARCHAR;
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    samples_stored: int
    events_stored: int
    batches_skipped: int  # already stored earlier: a replay or a collector re-send
    duplicate_samples: int = 0  # samples already stored by another batch (re-batched)


@dataclass(slots=True)
class IngestResult:
    write: WriteResult
    staged: Staged
    commit_s: float = 0.0
    stage_s: float = 0.0


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Store:
    """One DuckDB file. Writes are serialized; readers use `cursor()` from any thread."""

    def __init__(
        self,
        path: str | Path,
        read_only: bool = False,
        *,
        retention: Retention | None = None,
        memory_limit: str | None = "512MB",
        batch_dedupe_window_s: float = 3600.0,
        dead_letter_retention_s: float = 7 * 86400.0,
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(self.path, read_only=read_only)
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        if not read_only:
            self.con.execute(SCHEMA)
            self.con.execute(ROLLUP_SCHEMA)
            backfill_series_keys(self.con)
            self.con.execute(DEAD_LETTER_SCHEMA)
        self.retention = retention or Retention()
        self.rollups = Rollups(self.con, self.retention)
        self.batch_dedupe_window_s = batch_dedupe_window_s
        self.dead_letter_retention_s = dead_letter_retention_s
        self._write_lock = threading.Lock()
        self._stagers: dict[IngestPolicy, Stager] = {}

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def offsets(self) -> dict[tuple[str, int], int]:
        rows = self.cursor().execute("SELECT topic, partition, next_offset FROM kafka_offsets")
        return {(t, p): o for t, p, o in rows.fetchall()}

    def topic_ids(self) -> dict[tuple[str, int], str]:
        """The topic id each stored offset belongs to, where the broker gave one."""
        rows = self.cursor().execute(
            "SELECT topic, partition, topic_id FROM kafka_offsets WHERE topic_id IS NOT NULL"
        )
        return {(t, p): i for t, p, i in rows.fetchall()}

    def record_data_loss(self, event: DataLossEvent) -> None:
        with self._write_lock:
            self.con.execute(
                "INSERT INTO ingest_data_loss VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    event.time,
                    event.topic,
                    event.partition,
                    event.from_offset,
                    event.to_offset,
                    event.lost_records,
                    event.reason,
                ],
            )

    def store_dead_letters(
        self,
        rows: list[DeadLetterRow],
        offsets: dict[tuple[str, int], int],
        topic_ids: dict[str, str] | None = None,
    ) -> None:
        """Dead letters and the offsets past them, in one transaction (no samples)."""
        with self._write_lock:
            self._transaction(
                lambda cur: self._append(
                    cur, False, None, None, [], offsets, utc_now(), rows, topic_ids
                )
            )

    # -- the fast path: raw Kafka records -------------------------------------------------

    def ingest(
        self,
        records: list[Any],
        offsets: dict[tuple[str, int], int],
        policy: IngestPolicy,
        before_commit: Callable[[Staged], list[DeadLetterRow] | None] | None = None,
        now: datetime | None = None,
        topic_ids: dict[str, str] | None = None,
    ) -> IngestResult:
        """Decode, validate and store one poll's records in one transaction.

        `before_commit(staged)` runs after validation and before the commit: the ingestor
        produces dead letters there, so a crash can repeat a dead letter but never lose one;
        the rows it returns go into `dead_letters` in the transaction.
        """
        now = now or utc_now()
        with self._write_lock:
            t0 = time.perf_counter()
            stager = self._stagers.get(policy)
            if stager is None:  # reference tables are per connection and policy
                stager = self._stagers[policy] = Stager(self.con, policy)
            staged = stager.stage(records, int(now.replace(tzinfo=UTC).timestamp() * 1000))
            t1 = time.perf_counter()
            dead_rows = before_commit(staged) if before_commit is not None else None
            result = self._transaction(
                lambda cur: self._append(
                    cur,
                    staged.accepted > 0,
                    policy,
                    staged,
                    [b for _, b in staged.events],
                    offsets,
                    now,
                    dead_rows,
                    topic_ids,
                )
            )
            return IngestResult(result, staged, time.perf_counter() - t1, t1 - t0)

    # -- the reference path: already validated pydantic batches ---------------------------

    def write(
        self,
        telemetry: list[TelemetryBatch],
        events: list[EventBatch],
        offsets: dict[tuple[str, int], int],
    ) -> WriteResult:
        """Store validated batches and advance offsets atomically."""
        with self._write_lock:
            if telemetry:
                rows = telemetry_frame(telemetry)  # noqa: F841 - referenced by SQL below
                msgs = pa.table(  # noqa: F841 - referenced by SQL below
                    {
                        "i": pa.array(range(len(telemetry)), pa.int32()),
                        "batch_id": [b.batch_id for b in telemetry],
                        "collector": [b.collector for b in telemetry],
                        "seq": pa.array([b.seq for b in telemetry], pa.int64()),
                        "kind": [b.kind.value for b in telemetry],
                        "rack": [b.rack for b in telemetry],
                        "site": [b.site for b in telemetry],
                    }
                )
                unregister_rows(self.con)
                self.con.execute("""CREATE OR REPLACE TEMP TABLE _rows AS
                    SELECT r.i, m.kind, m.rack, m.site, r.device_id, r.metric, r.value,
                           r.read_time_ms FROM rows r JOIN msgs m USING (i) ORDER BY r.k""")
                self.con.execute("""CREATE OR REPLACE TEMP TABLE _acc AS
                    SELECT m.*, coalesce(a.n, 0) AS n, 0::BIGINT AS n_bad, a.dmin, a.dmax,
                           a.tmin, a.tmax
                    FROM msgs m LEFT JOIN (
                        SELECT i, count(*) AS n, min(device_id) AS dmin, max(device_id) AS dmax,
                               min(read_time_ms) AS tmin, max(read_time_ms) AS tmax
                        FROM _rows GROUP BY i) a USING (i)""")
            now = utc_now()
            return self._transaction(
                lambda cur: self._append(cur, bool(telemetry), None, None, events, offsets, now)
            )

    def _transaction(self, body: Callable[[duckdb.DuckDBPyConnection], WriteResult]) -> WriteResult:
        cur = self.con
        cur.execute("BEGIN TRANSACTION")
        try:
            result = body(cur)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return result

    def _append(
        self,
        cur: duckdb.DuckDBPyConnection,
        has_rows: bool,
        policy: IngestPolicy | None,
        staged: Staged | None,
        events: list[EventBatch],
        offsets: dict[tuple[str, int], int],
        now: datetime,
        dead_rows: list[DeadLetterRow] | None = None,
        topic_ids: dict[str, str] | None = None,
    ) -> WriteResult:
        since = now - timedelta(seconds=self.batch_dedupe_window_s)
        n_samples = skipped = dupes = 0
        if has_rows:
            n_samples, skipped, dupes = self._append_samples(cur, policy, staged, since, now)
        n_events, skipped_events = self._append_events(cur, events, since, now)
        if offsets:
            off = pa.table(  # noqa: F841 - referenced by SQL below
                {
                    "topic": [t for t, _ in offsets],
                    "partition": pa.array([p for _, p in offsets], pa.int32()),
                    "next_offset": pa.array(list(offsets.values()), pa.int64()),
                    "topic_id": pa.array(
                        [(topic_ids or {}).get(t) for t, _ in offsets], pa.string()
                    ),
                }
            )
            cur.execute("""
                INSERT INTO kafka_offsets (topic, partition, next_offset, topic_id)
                SELECT * FROM off
                ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset,
                    topic_id = coalesce(excluded.topic_id, kafka_offsets.topic_id)""")
            if has_rows and staged is not None:
                cur.execute("""UPDATE kafka_offsets k
                    SET max_read_time = greatest(coalesce(k.max_read_time, n.t), n.t)
                    FROM (SELECT topic, partition, epoch_ms(max(tmax)) AS t FROM _acc
                          WHERE i NOT IN (SELECT i FROM _skip) GROUP BY ALL) n
                    WHERE k.topic = n.topic AND k.partition = n.partition""")
        if dead_rows:
            dl = pa.Table.from_pylist(  # noqa: F841 - referenced by SQL below
                [{k: getattr(r, k) for k in DeadLetterRow.__slots__} for r in dead_rows]
            )
            cur.execute(
                'INSERT INTO dead_letters (time, reason, detail, topic, partition, "offset", '
                "size_bytes, sha256, excerpt, outcome) SELECT time, reason, detail, topic, "
                'partition, "offset", size_bytes, sha256, excerpt, outcome FROM dl'
            )
        return WriteResult(n_samples, n_events, skipped + skipped_events, dupes)

    def _append_samples(
        self,
        cur: duckdb.DuckDBPyConnection,
        policy: IngestPolicy | None,
        staged: Staged | None,
        since: datetime,
        now: datetime,
    ) -> tuple[int, int, int]:
        # 1. whole batches already stored (replay, re-send) or twice in this poll
        cur.execute(
            """CREATE OR REPLACE TEMP TABLE _skip AS
            SELECT i FROM _acc QUALIFY row_number() OVER (PARTITION BY batch_id ORDER BY i) > 1
            UNION
            SELECT i FROM _acc SEMI JOIN (SELECT batch_id FROM ingested_batches
                                          WHERE ingested_at >= $since) USING (batch_id)""",
            {"since": since},
        )
        skipped = one_row(cur.execute("SELECT count(*) FROM _skip"))[0]
        pairs_valid = staged is not None and staged.pairs_valid
        where = []
        if not pairs_valid:  # rows of messages that are not stored are still in _rows
            where.append("r.i IN (SELECT i FROM _acc)")
        if skipped:
            where.append("r.i NOT IN (SELECT i FROM _skip)")
        if staged is not None and staged.row_filter:
            where.append(staged.row_filter)
        # A plain scan keeps poll order; filters may become joins that do not, so then the
        # order is restored (per series, rowid order must follow read order).
        # Poll order: the `rid` column of the columnar decoder's Arrow rows, else rowid.
        rid = "r.rid" if staged is not None and staged.columnar else "r.rowid"
        cur.execute(f"""CREATE OR REPLACE TEMP VIEW _ins AS
            SELECT {rid} AS rid, r.i, r.device_id, r.metric, r.value, r.read_time_ms,
                   r.kind, r.rack
            FROM _rows r {"WHERE " + " AND ".join(where) + f" ORDER BY {rid}" if where else ""}
            """)
        # 2. per series in this poll: the newest sample (for `latest`) and the oldest
        series_source = (
            "(SELECT device_id, metric, kind, t0, t1, v1 FROM _pairs)"
            if pairs_valid and not skipped
            else """(
            SELECT device_id, metric, kind, min(read_time_ms) AS t0, max(read_time_ms) AS t1,
                   arg_max(value, read_time_ms) AS v1 FROM _ins GROUP BY ALL)"""
        )
        cur.execute(f"""CREATE OR REPLACE TEMP TABLE _series AS
            SELECT device_id, metric, any_value(kind) AS kind, min(t0) AS t0, max(t1) AS t1,
                   arg_max(v1, t1) AS v1
            FROM {series_source} GROUP BY device_id, metric""")
        # 3. A sample can only be a duplicate if (a) its series already has a stored
        #    sample at least as new (series-level join with `latest`), or (b) another
        #    message of this poll overlaps it in both device-id range and time range.
        #    Only those rows get the exact (device, metric, read time) check.
        cur.execute("""CREATE OR REPLACE TEMP TABLE _late AS
            SELECT s.device_id, s.metric FROM _series s
            JOIN latest l ON l.device_id = s.device_id AND l.metric = s.metric
            WHERE epoch_ms(s.t0) <= l.read_time""")
        cur.execute("""CREATE OR REPLACE TEMP TABLE _susp AS
            WITH a AS (SELECT i, dmin, dmax, tmin, tmax FROM _acc
                       WHERE n > 0 AND i NOT IN (SELECT i FROM _skip))
            SELECT DISTINCT x.i FROM a x JOIN a y
            ON x.i <> y.i AND x.dmin <= y.dmax AND y.dmin <= x.dmax
               AND x.tmin <= y.tmax AND y.tmin <= x.tmax""")
        if policy is not None and policy.exact_dedupe:  # every message gets the exact check
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _susp AS SELECT i FROM _acc "
                "WHERE i NOT IN (SELECT i FROM _skip)"
            )
        n_late, n_susp = one_row(
            cur.execute("SELECT (SELECT count(*) FROM _late), (SELECT count(*) FROM _susp)")
        )
        cols = "epoch_ms(read_time_ms), device_id, metric, value, kind, rack"
        dupes = 0
        if n_late or n_susp:
            cur.execute("""CREATE OR REPLACE TEMP TABLE _fix AS
                SELECT x.* FROM _ins x
                LEFT JOIN _late l ON l.device_id = x.device_id AND l.metric = x.metric
                WHERE l.device_id IS NOT NULL OR x.i IN (SELECT i FROM _susp)""")
            cur.execute("""CREATE OR REPLACE TEMP TABLE _keep AS
                WITH bounds AS (SELECT epoch_ms(min(read_time_ms)) AS lo,
                                       epoch_ms(max(read_time_ms)) AS hi FROM _fix),
                     old AS (SELECT s.device_id, s.metric, s.read_time FROM samples s, bounds
                             WHERE s.read_time BETWEEN bounds.lo AND bounds.hi)
                SELECT f.* FROM (SELECT * FROM _fix QUALIFY row_number() OVER (
                        PARTITION BY device_id, metric, read_time_ms ORDER BY rid) = 1) f
                ANTI JOIN old o ON o.device_id = f.device_id AND o.metric = f.metric
                                   AND o.read_time = epoch_ms(f.read_time_ms)""")
            cur.execute("""CREATE OR REPLACE TEMP TABLE _dropped AS
                SELECT i, count(*) AS dropped FROM _fix WHERE rid NOT IN (SELECT rid FROM _keep)
                GROUP BY i""")
            dupes = one_row(cur.execute("SELECT coalesce(sum(dropped), 0) FROM _dropped"))[0]
            source = (
                "(SELECT * FROM (SELECT * FROM _ins WHERE rid NOT IN (SELECT rid FROM "
                "_fix) UNION ALL SELECT * FROM _keep) ORDER BY rid)"
            )
        else:
            cur.execute("CREATE OR REPLACE TEMP TABLE _dropped (i INTEGER, dropped BIGINT)")
            source = "_ins"
        cur.execute(f"INSERT INTO samples SELECT {cols} FROM {source}")
        cur.execute("""
            INSERT INTO latest SELECT device_id, metric, epoch_ms(t1), v1, kind FROM _series
            ON CONFLICT (device_id, metric) DO UPDATE
            SET value = excluded.value, read_time = excluded.read_time
            WHERE excluded.read_time >= latest.read_time""")
        self.rollups.mark_late(cur, source)
        cur.execute(
            """
            INSERT INTO ingested_batches (batch_id, collector, seq, n_samples, n_rejected,
                                          ingested_at)
            SELECT batch_id, collector, seq, n - n_bad - coalesce(d.dropped, 0), n_bad, $now
            FROM _acc LEFT JOIN _dropped d USING (i) WHERE i NOT IN (SELECT i FROM _skip)""",
            {"now": now},
        )
        stored = one_row(
            cur.execute("""SELECT coalesce(sum(n - n_bad), 0) FROM _acc
                                WHERE i NOT IN (SELECT i FROM _skip)""")
        )[0]
        return int(stored) - int(dupes), int(skipped), int(dupes)

    def _append_events(
        self,
        cur: duckdb.DuckDBPyConnection,
        events: list[EventBatch],
        since: datetime,
        now: datetime,
    ) -> tuple[int, int]:
        if not events:
            return 0, 0
        ids = pa.table({"batch_id": [b.batch_id for b in events]})  # noqa: F841
        seen = {
            r[0]
            for r in cur.execute(
                "SELECT batch_id FROM ingested_batches SEMI JOIN ids USING (batch_id) "
                "WHERE ingested_at >= $since",
                {"since": since},
            ).fetchall()
        }
        fresh = []
        for b in events:
            if b.batch_id not in seen:
                seen.add(b.batch_id)
                fresh.append(b)
        if fresh:
            ev = pa.table(  # noqa: F841 - referenced by SQL below
                {
                    "read_time_ms": pa.array(
                        [e.read_time_ms for b in fresh for e in b.events], pa.int64()
                    ),
                    "device_id": [e.device_id for b in fresh for e in b.events],
                    "kind": [e.kind.value for b in fresh for e in b.events],
                    "severity": [e.severity for b in fresh for e in b.events],
                    "message": [e.message for b in fresh for e in b.events],
                    "attrs": [orjson.dumps(e.attrs).decode() for b in fresh for e in b.events],
                    "collector": [b.collector for b in fresh for _ in b.events],
                    "batch_id": [b.batch_id for b in fresh for _ in b.events],
                }
            )
            cur.execute("""
                INSERT INTO events SELECT epoch_ms(read_time_ms), device_id, kind,
                       severity, message, attrs, collector, batch_id FROM ev""")
            batches = pa.table(  # noqa: F841 - referenced by SQL below
                {
                    "batch_id": [b.batch_id for b in fresh],
                    "collector": [b.collector for b in fresh],
                    "seq": pa.array([b.seq for b in fresh], pa.int64()),
                }
            )
            cur.execute(
                "INSERT INTO ingested_batches (batch_id, collector, seq, n_samples, "
                "ingested_at) SELECT batch_id, collector, seq, 0, $now FROM batches",
                {"now": now},
            )
        return sum(len(b.events) for b in fresh), len(events) - len(fresh)

    # -- maintenance ----------------------------------------------------------------------

    def maintain(
        self,
        now: datetime | None = None,
        hold_rollups: bool = False,
        max_rollup_span_s: float | None = None,
    ) -> dict[str, int]:
        """Advance rollups (unless held: late data is still recomputed; at most
        `max_rollup_span_s` of data time, `backlog` 1 when more is left), then apply
        retention. Cheap when there is nothing to do."""
        with self._write_lock:
            done = self.rollups.advance(now, hold=hold_rollups, max_span_s=max_rollup_span_s)
            done.update(self.rollups.apply_retention(now))
            done["rows_compacted"] = self.rollups.compact_step()
            # operators' view of dead letters is bounded: the topic keeps the originals
            keep_from = (now or utc_now()) - timedelta(seconds=self.dead_letter_retention_s)
            self.con.execute("DELETE FROM dead_letters WHERE time < ?", [keep_from])
            return done

    def close(self) -> None:
        for stager in self._stagers.values():
            stager.close()
        self.con.close()


def telemetry_frame(batches: list[TelemetryBatch]) -> pa.Table:
    """Concatenate batches' columns into one Arrow table, with the batch index `i`."""
    device_id: list[str] = []
    metric: list[str] = []
    value: list[float] = []
    read_time_ms: list[int] = []
    index: list[int] = []
    for i, b in enumerate(batches):
        s = b.samples
        device_id += s.device_id
        metric += s.metric
        value += s.value
        read_time_ms += s.read_time_ms
        index += [i] * len(s.device_id)
    return pa.table(
        {
            "k": pa.array(range(len(index)), pa.int64()),
            "i": pa.array(index, pa.int32()),
            "device_id": pa.array(device_id, pa.string()),
            "metric": pa.array(metric, pa.string()),
            "value": pa.array(value, pa.float64()),
            "read_time_ms": pa.array(read_time_ms, pa.int64()),
        }
    )
