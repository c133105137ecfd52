"""Simulated history straight into a Store (no broker): for API tests and benchmarks."""

from __future__ import annotations

import time

from collectors.batching import Batcher
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import EventBatch, TelemetryBatch
from domain.site import Site
from ingest.store import Store
from simulator.model import SiteSimulator


def fill_store(
    store: Store, site: Site, minutes: float = 10.0, interval_s: float = 10.0, seed: int = 3
) -> int:
    """`minutes` of simulated readings every `interval_s`, ending now; returns samples."""
    n = max(2, int(minutes * 60 / interval_s))
    start_s = time.time() - n * interval_s
    sim = SiteSimulator(site, seed=seed, start_time_s=start_s)
    source = SimulatedSource(SimulatedSourceConfig(seed=seed), simulator=sim)
    batcher = Batcher("simdata", site.site.id, interval_s)
    stored = 0
    for i in range(n):
        sim.step(interval_s)
        readings = source.snapshot(int((start_s + (i + 1) * interval_s) * 1000))
        batches = batcher.batches(readings)
        tele = [b for b in batches if isinstance(b, TelemetryBatch)]
        ev = [b for b in batches if isinstance(b, EventBatch)]
        stored += store.write(tele, ev, {}).samples_stored
    return stored
