"""Helpers for API tests: a Store filled with simulated telemetry and keys per role."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from api.keys import KeyStore, Role
from collectors.batching import Batcher
from collectors.simulator.model import SiteSimulator
from collectors.sources.simulated import SimulatedSource, SimulatedSourceConfig
from dctwin.broker import free_port
from ingest.contract import EventBatch, TelemetryBatch
from ingest.site import Site
from ingest.store import Store


def fill_store(store: Store, site: Site, minutes: float = 10.0, interval_s: float = 10.0,
               seed: int = 3) -> int:
    """Simulated history ending now: `minutes` of readings every `interval_s`."""
    n = max(2, int(minutes * 60 / interval_s))
    start_s = time.time() - n * interval_s
    sim = SiteSimulator(site, seed=seed, start_time_s=start_s)
    source = SimulatedSource(SimulatedSourceConfig(seed=seed), simulator=sim)
    batcher = Batcher("api-test", site.site.id, interval_s)
    stored = 0
    for i in range(n):
        sim.step(interval_s)
        readings = source.snapshot(int((start_s + (i + 1) * interval_s) * 1000))
        batches = batcher.batches(readings)
        tele = [b for b in batches if isinstance(b, TelemetryBatch)]
        ev = [b for b in batches if isinstance(b, EventBatch)]
        stored += store.write(tele, ev, {}).samples_stored
    return stored


def keys_per_role(path: Path) -> tuple[KeyStore, dict[Role, str]]:
    keys = KeyStore(path)
    tokens = {role: keys.create(f"test-{role.value}", role)[1] for role in Role}
    return keys, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def serve(app, timeout_s: float = 15.0) -> Iterator[str]:
    """Run `app` on a real uvicorn server on a free loopback port; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
