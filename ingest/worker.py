"""A standalone ingest process: `python -m ingest.worker` or `dctwin ingest`.

Either one DuckDB file (`--db`: one worker per file) or a shard directory (`--shard-dir`:
any number of workers in one consumer group, one file per partition number; see
ingest/shards.py). SIGTERM/SIGINT stop it cleanly: what was polled is stored and
committed first. With `--stats-json` it rewrites that file (atomically) every half second
and on exit with `IngestStats.snapshot()`, so a supervisor or test can watch it without
opening the (locked) database.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from domain.site import load_site
from ingest.consumer import INGEST_TOPICS, IngestConfig, Ingestor
from ingest.downsampling import Retention
from ingest.shards import ShardedStore
from ingest.store import Store
from ingest.validate import IngestPolicy

log = logging.getLogger("ingest.worker")


def write_stats(path: Path, ingestor: Ingestor, extra: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**ingestor.stats.snapshot(), **extra}))
    os.replace(tmp, path)


def parser(default_bootstrap: str = "127.0.0.1:9092") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ingest.worker", description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default=default_bootstrap, help=f"default {default_bootstrap}")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="one DuckDB file (single worker)")
    where.add_argument("--shard-dir", type=Path, help="one DuckDB file per partition number")
    p.add_argument("--group", default="dctwin-ingest", help="consumer group")
    p.add_argument(
        "--topics",
        default=",".join(INGEST_TOPICS),
        help="comma-separated topics (default: telemetry.* and events)",
    )
    p.add_argument("--client-id", default=f"dctwin-ingest-{os.getpid()}")
    p.add_argument("--site", type=Path, help="site TOML: device ids are checked against it")
    p.add_argument("--unknown-device", choices=("accept", "reject"), default="accept")
    p.add_argument("--partial", choices=("keep_valid", "reject_batch"), default="keep_valid")
    p.add_argument("--max-future-s", type=float, default=IngestPolicy.max_future_s)
    p.add_argument("--max-past-s", type=float, default=IngestPolicy.max_past_s)
    p.add_argument("--max-poll-records", type=int, default=IngestConfig.max_poll_records)
    p.add_argument("--max-inflight", type=int, default=IngestConfig.max_inflight)
    p.add_argument("--session-timeout-ms", type=int, default=IngestConfig.session_timeout_ms)
    p.add_argument("--max-poll-interval-ms", type=int, default=IngestConfig.max_poll_interval_ms)
    p.add_argument("--raw-retention-s", type=float, default=Retention.raw_s)
    p.add_argument("--memory-limit", default="512MB", help="DuckDB memory limit per file")
    p.add_argument("--stats-json", type=Path)
    p.add_argument(
        "--quarantine",
        type=Path,
        help="JSON-lines file for dead letters the dead-letter topic refuses "
        "(default: quarantine.jsonl beside --db, or in --shard-dir)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None, default_bootstrap: str = "127.0.0.1:9092") -> int:
    """Run the worker; `dctwin ingest` passes the configured cluster (Settings) as the
    `--bootstrap` default, so the worker itself reads no environment."""
    args = parser(default_bootstrap).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    retention = Retention(raw_s=args.raw_retention_s)
    store: Store | ShardedStore
    if args.db:
        store = Store(args.db, retention=retention, memory_limit=args.memory_limit)
    else:
        store = ShardedStore(args.shard_dir, retention=retention, memory_limit=args.memory_limit)
    overrides = dict(
        unknown_device=args.unknown_device,
        partial=args.partial,
        max_future_s=args.max_future_s,
        max_past_s=args.max_past_s,
    )
    policy = (
        IngestPolicy.for_site(load_site(args.site), **overrides)
        if args.site
        else IngestPolicy(**overrides)
    )
    config = IngestConfig(
        max_poll_records=args.max_poll_records,
        max_inflight=args.max_inflight,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=max(100, args.session_timeout_ms // 6),
        max_poll_interval_ms=args.max_poll_interval_ms,
        quarantine_path=args.quarantine,
    )
    ingestor = Ingestor(
        store,
        args.bootstrap,
        args.group,
        client_id=args.client_id,
        topics=tuple(t for t in args.topics.split(",") if t),
        policy=policy,
        config=config,
    )
    extra = {"pid": os.getpid(), "client_id": args.client_id, "running": True}

    def on_signal(signum, frame):
        ingestor.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.stats_json:

        def report() -> None:
            while not ingestor.stop_event.wait(0.5):
                extra["assigned"] = sorted([t, p] for t, p in ingestor.assigned)
                write_stats(args.stats_json, ingestor, extra)

        threading.Thread(target=report, name="stats", daemon=True).start()
    log.info(
        "ingest worker %s: group %s, %s", args.client_id, args.group, args.db or args.shard_dir
    )
    try:
        ingestor.run()
    finally:
        ingestor.close()
        store.close()
        extra["running"] = False
        if args.stats_json:
            write_stats(args.stats_json, ingestor, extra)
        print(json.dumps(ingestor.stats.snapshot()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
