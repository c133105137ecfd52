"""End to end: simulator tick, and the collector daemon -> Kafka -> DuckDB ingest path."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.harness import Result
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from dctwin.broker import DevBroker
from domain.site import EXAMPLE_SITE, load_site
from domain.topics import ensure_topics
from ingest.consumer import Ingestor
from ingest.store import Store
from simulator.model import SiteSimulator


def run(quick: bool = False) -> list[Result]:
    results = []
    site = load_site(EXAMPLE_SITE)
    sim = SiteSimulator(site, seed=1)
    n = 50 if quick else 500
    t = time.perf_counter()
    for _ in range(n):
        sim.step(1.0)
    ms = (time.perf_counter() - t) / n * 1000
    results.append(
        Result("simulator step, example site (2,048 GPUs)", "ms per tick", ms, "< 100", ms < 100)
    )

    intervals = 5 if quick else 30
    with DevBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        ensure_topics(broker.bootstrap, 8)
        cfg = CollectorConfig(
            name="bench",
            site="sv1",
            interval_s=0.01,
            kafka={"bootstrap": broker.bootstrap},
            sources=[{"type": "simulated"}],
        )
        daemon = CollectorDaemon(cfg, sources=[SimulatedSource(SimulatedSourceConfig())])
        t = time.perf_counter()
        daemon.run(max_intervals=intervals)
        produce_s = time.perf_counter() - t
        daemon.close()
        store = Store(Path(tmp) / "b.duckdb")
        ingestor = Ingestor(store, broker.bootstrap, "bench")
        # group join is not ingest work: wait for the assignment before timing
        while not ingestor.consumer.assignment():
            ingestor.consumer.poll(timeout_ms=200)
        ingestor.consumer.seek_to_beginning()
        t = time.perf_counter()
        while ingestor.stats.samples_stored < daemon.stats.samples_delivered:
            ingestor.poll_once(timeout_ms=500)
        ingest_s = time.perf_counter() - t
        ingestor.close()
        store.close()
    results.append(
        Result(
            "collector daemon produce (simulated site)",
            "samples/s",
            daemon.stats.samples_delivered / produce_s,
            note=f"{daemon.stats.samples_delivered:,} samples",
        )
    )
    results.append(
        Result(
            "ingest of the collector's batches (one Ingestor, bulk decode in DuckDB)",
            "samples/s",
            daemon.stats.samples_delivered / ingest_s,
            note="the ingest throughput target is measured in bench_ingest",
        )
    )
    return results
