"""DuckDB storage: raw samples, events, latest state, and ingest bookkeeping.

Exactly-once storage on an at-least-once transport rests on two things written in the
same transaction as the samples: the next Kafka offset per partition (so a restarted
consumer resumes exactly where the database is), and the ids of stored batches (so a
collector's re-send of a batch is recognised and skipped).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from ingest.contract import EventBatch, TelemetryBatch

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
CREATE TABLE IF NOT EXISTS ingested_batches (
    batch_id VARCHAR PRIMARY KEY,
    collector VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    n_samples BIGINT NOT NULL,
    ingested_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS kafka_offsets (
    topic VARCHAR NOT NULL,
    partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    samples_stored: int
    events_stored: int
    batches_skipped: int  # already stored earlier: a replay or a collector re-send


class Store:
    """One DuckDB file. Writes are serialized; readers use `cursor()` from any thread."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(self.path, read_only=read_only)
        if not read_only:
            self.con.execute(SCHEMA)
        self._write_lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def offsets(self) -> dict[tuple[str, int], int]:
        rows = self.cursor().execute("SELECT topic, partition, next_offset FROM kafka_offsets")
        return {(t, p): o for t, p, o in rows.fetchall()}

    def write(self, telemetry: list[TelemetryBatch], events: list[EventBatch],
              offsets: dict[tuple[str, int], int]) -> WriteResult:
        """Store batches and advance offsets atomically."""
        with self._write_lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                result = self._write(cur, telemetry, events, offsets)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return result

    def _write(self, cur: duckdb.DuckDBPyConnection, telemetry: list[TelemetryBatch],
               events: list[EventBatch], offsets: dict[tuple[str, int], int]) -> WriteResult:
        all_ids = [b.batch_id for b in telemetry] + [b.batch_id for b in events]
        seen: set[str] = set()
        if all_ids:
            ids = pa.table({"batch_id": all_ids})  # noqa: F841 - referenced by SQL below
            seen = {r[0] for r in cur.execute(
                "SELECT batch_id FROM ingested_batches JOIN ids USING (batch_id)").fetchall()}
        fresh_t, fresh_e = [], []
        for b in telemetry:
            if b.batch_id not in seen:
                seen.add(b.batch_id)
                fresh_t.append(b)
        for b in events:
            if b.batch_id not in seen:
                seen.add(b.batch_id)
                fresh_e.append(b)
        skipped = len(telemetry) + len(events) - len(fresh_t) - len(fresh_e)

        n_samples = 0
        if fresh_t:
            frame = telemetry_frame(fresh_t)
            n_samples = frame.num_rows
            cur.execute("""
                INSERT INTO samples
                SELECT make_timestamp(read_time_ms * 1000), device_id, metric, value, kind, rack
                FROM frame""")
            cur.execute("""
                INSERT INTO latest
                SELECT device_id, metric, make_timestamp(max(read_time_ms) * 1000),
                       arg_max(value, read_time_ms), any_value(kind)
                FROM frame GROUP BY device_id, metric
                ON CONFLICT (device_id, metric) DO UPDATE
                SET value = excluded.value, read_time = excluded.read_time
                WHERE excluded.read_time >= latest.read_time""")
        n_events = 0
        if fresh_e:
            ev = pa.table({
                "read_time_ms": [e.read_time_ms for b in fresh_e for e in b.events],
                "device_id": [e.device_id for b in fresh_e for e in b.events],
                "kind": [e.kind.value for b in fresh_e for e in b.events],
                "severity": [e.severity for b in fresh_e for e in b.events],
                "message": [e.message for b in fresh_e for e in b.events],
                "attrs": [orjson.dumps(e.attrs).decode() for b in fresh_e for e in b.events],
                "collector": [b.collector for b in fresh_e for _ in b.events],
                "batch_id": [b.batch_id for b in fresh_e for _ in b.events],
            })
            n_events = ev.num_rows
            cur.execute("""
                INSERT INTO events SELECT make_timestamp(read_time_ms * 1000), device_id, kind,
                       severity, message, attrs, collector, batch_id FROM ev""")
        if fresh_t or fresh_e:
            batches = pa.table({  # noqa: F841 - referenced by SQL below
                "batch_id": [b.batch_id for b in fresh_t] + [b.batch_id for b in fresh_e],
                "collector": [b.collector for b in fresh_t] + [b.collector for b in fresh_e],
                "seq": [b.seq for b in fresh_t] + [b.seq for b in fresh_e],
                "n_samples": [len(b.samples) for b in fresh_t] + [0] * len(fresh_e),
            })
            cur.execute("INSERT INTO ingested_batches (batch_id, collector, seq, n_samples) "
                        "SELECT * FROM batches")
        if offsets:
            off = pa.table({  # noqa: F841 - referenced by SQL below
                "topic": [t for t, _ in offsets],
                "partition": pa.array([p for _, p in offsets], pa.int32()),
                "next_offset": list(offsets.values()),
            })
            cur.execute("""
                INSERT INTO kafka_offsets SELECT * FROM off
                ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset""")
        return WriteResult(n_samples, n_events, skipped)

    def close(self) -> None:
        self.con.close()


def telemetry_frame(batches: list[TelemetryBatch]) -> pa.Table:
    """Concatenate batches' columns into one Arrow table (no per-sample Python objects)."""
    device_id: list[str] = []
    metric: list[str] = []
    value: list[float] = []
    read_time_ms: list[int] = []
    kind: list[str] = []
    rack: list[str] = []
    for b in batches:
        s = b.samples
        n = len(s.device_id)
        device_id += s.device_id
        metric += s.metric
        value += s.value
        read_time_ms += s.read_time_ms
        kind += [b.kind.value] * n
        rack += [b.rack] * n
    return pa.table({
        "read_time_ms": pa.array(read_time_ms, pa.int64()),
        "device_id": device_id,
        "metric": metric,
        "value": pa.array(value, pa.float64()),
        "kind": kind,
        "rack": rack,
    })
