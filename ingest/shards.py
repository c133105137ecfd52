"""Scale-out storage: one DuckDB file per partition number, and readers over all of them.

DuckDB allows one writing process per file, so ingest processes in one consumer group
cannot share a file. Each partition number p gets its own file `p{p:03d}.duckdb`, holding
partition p of every topic: its samples, and the Kafka offsets that go with them. The
`PartitionNumberAssignor` hands each member whole partition numbers, so a file has one
writer at a time; when a partition moves, the old owner commits and closes the file in
its revocation callback and the new owner opens it and resumes from the offsets inside.
Exactly-once therefore holds across rebalances and crashes, not only within a process.

`open_shards` attaches every shard read-only (when no worker holds them) and exposes the
usual table names as views over their union, so `query_series` and friends work as is.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
from kafka.coordinator.assignors.abstract import (
    AbstractPartitionAssignor,
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)

from ingest.downsampling import Retention
from ingest.store import Store

log = logging.getLogger(__name__)

TABLES = (
    "samples",
    "latest",
    "events",
    "ingested_batches",
    "kafka_offsets",
    "rollup_1m",
    "rollup_1h",
    "dead_letters",
    "ingest_data_loss",
)


class PartitionNumberAssignor(AbstractPartitionAssignor):
    """Every topic's partition p goes to the same member: members sorted by id, p % n."""

    name = "dctwin-partition-number"
    version = 0

    @classmethod
    def assign(cls, cluster, members):
        ids = sorted(m.member_id for m in members)
        topics = sorted({t for m in members for t in m.metadata.topics})
        assignment: dict[str, dict[str, list[int]]] = {
            m: collections.defaultdict(list) for m in ids
        }
        for topic in topics:
            for p in sorted(cluster.partitions_for_topic(topic) or ()):
                assignment[ids[p % len(ids)]][topic].append(p)
        return {
            m: ConsumerProtocolAssignment(cls.version, sorted(assignment[m].items()), b"")
            for m in ids
        }

    @classmethod
    def metadata(cls, topics):
        return ConsumerProtocolSubscription(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment, generation):
        pass


class SingleStore:
    """Router for the usual case: every partition goes to one Store."""

    assignors: tuple[type, ...] | None = None  # kafka-python's defaults

    def __init__(self, store: Store) -> None:
        self.store = store

    def split(
        self, records: list[Any], offsets: dict[tuple[str, int], int]
    ) -> list[tuple[Store, list[Any], dict[tuple[str, int], int]]]:
        return [(self.store, records, offsets)]

    def acquire(self, partitions: Iterable[int]) -> None:
        pass

    def release(self, partitions: Iterable[int]) -> None:
        pass

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        return self.store.offsets()

    def stored_topic_ids(self) -> dict[tuple[str, int], str]:
        return self.store.topic_ids()

    def store_for(self, partition: int) -> Store:
        return self.store

    def stores(self) -> list[Store]:
        return [self.store]

    def by_store(self) -> list[tuple[Store, set[int] | None]]:
        return [(self.store, None)]  # every partition


class ShardedStore:
    """One Store per partition number under `directory`, opened while assigned."""

    assignors = (PartitionNumberAssignor,)

    def __init__(
        self,
        directory: str | Path,
        *,
        retention: Retention | None = None,
        memory_limit: str = "256MB",
        lock_timeout_s: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retention = retention
        self.memory_limit = memory_limit
        self.lock_timeout_s = lock_timeout_s
        self._open: dict[int, Store] = {}

    def path_for(self, partition: int) -> Path:
        return self.directory / f"p{partition:03d}.duckdb"

    def acquire(self, partitions: Iterable[int]) -> None:
        for p in sorted(set(partitions) - set(self._open)):
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    self._open[p] = Store(
                        self.path_for(p), retention=self.retention, memory_limit=self.memory_limit
                    )
                    break
                except duckdb.IOException as exc:  # the previous owner has not let go yet
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"shard {self.path_for(p)} stayed locked for "
                            f"{self.lock_timeout_s}s: {exc}"
                        ) from exc
                    time.sleep(0.2)

    def release(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            store = self._open.pop(p, None)
            if store is not None:
                store.close()

    def split(
        self, records: list[Any], offsets: dict[tuple[str, int], int]
    ) -> list[tuple[Store, list[Any], dict[tuple[str, int], int]]]:
        by_p: dict[int, list[Any]] = collections.defaultdict(list)
        for r in records:
            by_p[r.partition].append(r)
        out = []
        for p in sorted(set(by_p) | {p for _, p in offsets}):
            out.append(
                (self._open[p], by_p.get(p, []), {tp: o for tp, o in offsets.items() if tp[1] == p})
            )
        return out

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for p, store in self._open.items():
            out.update({tp: o for tp, o in store.offsets().items() if tp[1] == p})
        return out

    def stored_topic_ids(self) -> dict[tuple[str, int], str]:
        out: dict[tuple[str, int], str] = {}
        for p, store in self._open.items():
            out.update({tp: i for tp, i in store.topic_ids().items() if tp[1] == p})
        return out

    def store_for(self, partition: int) -> Store:
        return self._open[partition]

    def stores(self) -> list[Store]:
        return list(self._open.values())

    def by_store(self) -> list[tuple[Store, set[int] | None]]:
        return [(store, {p}) for p, store in self._open.items()]

    def close(self) -> None:
        self.release(list(self._open))


def open_shards(directory: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only view over every shard in `directory` (no worker may hold them)."""
    paths = sorted(Path(directory).glob("p*.duckdb"))
    if not paths:
        raise FileNotFoundError(f"no shard files (p*.duckdb) in {directory}")
    con = duckdb.connect()
    for k, path in enumerate(paths):
        con.execute(f"ATTACH '{path}' AS s{k} (READ_ONLY)")
    for table in TABLES:
        union = " UNION ALL ".join(f"SELECT * FROM s{k}.{table}" for k in range(len(paths)))
        con.execute(f"CREATE TEMP VIEW {table} AS {union}")
    # a tier is usable only up to the oldest shard's watermark, and only if all have one
    con.execute(f"""CREATE TEMP VIEW rollup_state AS
        SELECT tier, min(done_until) AS done_until FROM ({
        " UNION ALL ".join(f"SELECT * FROM s{k}.rollup_state" for k in range(len(paths)))
    })
        GROUP BY tier HAVING count(*) = {len(paths)}""")
    return con
