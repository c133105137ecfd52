"""One ingest process for bench_ingest: consume until `--expect` samples are stored.

Run as a subprocess so that its peak RSS is the ingest's alone. Prints one JSON line:
samples stored, seconds from partition assignment to the last commit, CPU seconds and
peak RSS. The `baseline` mode is the straightforward consumer the fast path is compared
with: one pydantic model per sample and one row insert per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import duckdb
import orjson
from kafka import KafkaConsumer
from pydantic import BaseModel

from domain.site import EXAMPLE_SITE, load_site
from ingest.consumer import INGEST_TOPICS, IngestConfig, Ingestor
from ingest.downsampling import Retention
from ingest.shards import ShardedStore
from ingest.store import SCHEMA, Store
from ingest.validate import IngestPolicy


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": r.ru_utime + r.ru_stime, "peak_rss_mb": r.ru_maxrss / 1024.0}


def fast(args: argparse.Namespace) -> dict:
    retention = Retention(lateness_s=60.0)
    store = (
        ShardedStore(args.shard_dir, retention=retention)
        if args.shard_dir
        else Store(args.db, retention=retention)
    )
    config = IngestConfig(
        max_poll_records=args.max_poll_records,
        max_inflight=2,
        maintenance_every_s=args.maintenance_every_s,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    policy = IngestPolicy.for_site(load_site(EXAMPLE_SITE))
    ing = Ingestor(
        store,
        args.bootstrap,
        args.group,
        policy=policy,
        config=config,
        client_id=f"bench-{args.tag}",
        **({"topics": (args.topic,)} if args.topic else {}),
    )
    t_assigned = t_last = None
    cpu0 = cpu_settled = t_settled = 0.0
    at_settled = 0
    seen: frozenset = frozenset()
    last = 0
    worker = threading.Thread(target=ing.run, daemon=True)
    worker.start()
    while ing.stats.samples_stored < args.expect and worker.is_alive():
        if t_assigned is None and ing.assigned:
            t_assigned, cpu0 = time.time(), _usage()["cpu_s"]
        if ing.assigned != seen:  # a rebalance: the group's split settles at the last one
            seen = ing.assigned
            t_settled, at_settled, cpu_settled = (
                time.time(),
                ing.stats.samples_stored,
                _usage()["cpu_s"],
            )
        if ing.stats.samples_stored != last:
            last, t_last = ing.stats.samples_stored, time.time()
            if args.progress:
                Path(args.progress).write_text(str(last))
        if args.stop_file and Path(args.stop_file).exists():
            break
        time.sleep(0.005)
    if ing.stats.samples_stored != last:
        t_last = time.time()
    cpu = _usage()
    if os.environ.get("DCTWIN_BENCH_THREADS"):  # development: CPU seconds per thread
        names = {t.native_id: t.name for t in threading.enumerate()}
        for task in sorted(Path("/proc/self/task").iterdir()):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            secs = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            print(f"thread {names.get(int(task.name), 'native')}: {secs:.2f} s", file=sys.stderr)
    ing.stop_event.set()
    worker.join()
    for s in ing.router.stores():
        s.maintain()  # final rollups of what is closed, outside the timing
    ing.close()
    store.close()
    t_assigned = t_assigned or time.time()
    return {
        "samples": ing.stats.samples_stored,
        "seconds": (t_last or t_assigned) - t_assigned,
        "t_assigned": t_assigned,
        "t_last": t_last or t_assigned,
        "t_settled": t_settled,
        "samples_at_settled": at_settled,
        "cpu_after_settled_s": cpu["cpu_s"] - cpu_settled,
        "dead_letters": dict(ing.stats.dead_letters),
        "polls": ing.stats.polls,
        "pauses": ing.stats.pauses,
        "stage_s": ing.stats.stage_seconds,
        "commit_s": ing.stats.commit_seconds,
        "maintenance": ing.stats.maintenance_runs,
        "maintenance_s": ing.stats.maintenance_seconds,
        "late_rollup_buckets": ing.stats.late_rollup_buckets,
        "cpu_s": cpu["cpu_s"] - cpu0,
        "peak_rss_mb": cpu["peak_rss_mb"],
    }


class Sample(BaseModel):
    device_id: str
    metric: str
    value: float
    read_time_ms: int
    kind: str
    rack: str


def baseline(args: argparse.Namespace) -> dict:
    con = duckdb.connect(str(args.db))
    con.execute(SCHEMA)
    consumer = KafkaConsumer(
        *INGEST_TOPICS,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    stored = 0
    t0 = None
    while stored < args.expect:
        polled = consumer.poll(timeout_ms=500, max_records=8)
        if t0 is None and consumer.assignment():
            t0 = time.perf_counter()
        for msgs in polled.values():
            con.execute("BEGIN TRANSACTION")
            for m in msgs:
                doc = orjson.loads(m.value)
                s = doc["samples"]
                rows = [
                    Sample(
                        device_id=d,
                        metric=k,
                        value=v,
                        read_time_ms=t,
                        kind=doc["kind"],
                        rack=doc["rack"],
                    )
                    for d, k, v, t in zip(
                        s["device_id"], s["metric"], s["value"], s["read_time_ms"], strict=True
                    )
                ]
                con.executemany(
                    "INSERT INTO samples VALUES (make_timestamp(? * 1000), ?, ?, ?, ?, ?)",
                    [
                        [r.read_time_ms, r.device_id, r.metric, r.value, r.kind, r.rack]
                        for r in rows
                    ],
                )
                stored += len(rows)
            con.execute("COMMIT")
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    consumer.close()
    con.close()
    return {"samples": stored, "seconds": seconds, **_usage()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("fast", "baseline"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--db", type=Path)
    p.add_argument("--shard-dir", type=Path)
    p.add_argument("--tag", default="0")
    p.add_argument("--max-poll-records", type=int, default=IngestConfig.max_poll_records)
    p.add_argument("--maintenance-every-s", type=float, default=5.0)
    p.add_argument("--stop-file")
    p.add_argument("--progress")
    p.add_argument("--topic", help="read this topic only (default: every ingest topic)")
    args = p.parse_args()
    out = fast(args) if args.mode == "fast" else baseline(args)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
