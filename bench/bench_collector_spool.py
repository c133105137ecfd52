"""Collector spool: cost of spooling an interval during an outage, disk per hour of outage,
and how fast a backlog replays into a real broker once it returns."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import Result
from collectors.batching import Batcher
from collectors.daemon import to_record
from collectors.shipper import Shipper
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from collectors.spool import Spool
from collectors.stats import DaemonStats
from dctwin.broker import DevBroker
from domain.topics import ensure_topics, make_producer


def run(quick: bool = False) -> list[Result]:
    intervals = 300 if quick else 3600  # one rack collector at 1 s: 5 min / 1 h of outage
    source = SimulatedSource(SimulatedSourceConfig(racks=["rk101"], seed=1))
    batcher = Batcher("bench-spool", "sv1", 1.0)
    groups = []
    for _ in range(intervals):
        source.sim.step(1.0)
        groups.append([to_record(b) for b in batcher.batches(source.snapshot(0))])
    samples = sum(r.n_samples for g in groups for r in g)
    results = []
    with tempfile.TemporaryDirectory() as tmp, DevBroker() as broker:
        spool = Spool(Path(tmp) / "spool", max_bytes=1 << 30, fsync=True, compress=True)
        append_ms = []
        for g in groups:
            t = time.perf_counter()
            spool.append(g)
            append_ms.append((time.perf_counter() - t) * 1000)
        mb = spool.bytes / 1e6
        results.append(
            Result(
                "spool append, one interval of one rack (fsync, zstd)",
                "p50 ms",
                statistics.median(append_ms),
                "< 10",
                statistics.median(append_ms) < 10,
                note=f"{len(groups[0])} batches, {samples // intervals} samples",
            )
        )
        results.append(
            Result(
                "spool disk per hour of outage, one rack at 1 s",
                "MB",
                mb * 3600 / intervals,
                note=f"measured over {intervals} intervals",
            )
        )

        ensure_topics(broker.bootstrap, 8)
        stats = DaemonStats()
        shipper = Shipper(
            spool,
            stats,
            lambda: make_producer(broker.bootstrap, "zstd"),
            on_dropped=lambda d: None,
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
        )
        t = time.perf_counter()
        shipper.start()
        while not spool.empty:
            time.sleep(0.01)
        replay_s = time.perf_counter() - t
        shipper.stop(10)
        spool.close()
        assert stats.samples_replayed == samples, (stats.samples_replayed, samples)
        speedup = intervals / replay_s
        results.append(
            Result(
                "spool replay into the broker (acks=all)",
                "x real time",
                speedup,
                ">= 20",
                speedup >= 20,
                note=f"{intervals} intervals in {replay_s:.1f} s, "
                f"{samples / replay_s:,.0f} samples/s",
            )
        )
    return results
