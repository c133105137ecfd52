"""The API as the load test sees it: uvicorn in its own process, the live view ticking.

`python -m bench.api_server --db D --keys K --port P` (started by bench/bench_api.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import uvicorn

from api.app import create_app
from api.http_server import uvicorn_config
from api.keys import KeyStore
from api.live_view import LiveView
from api.rack_scores import anomaly_rack_scorer
from dctwin import POLARS_MALLOC_CONF
from dctwin.broker import free_port, stop_process, wait_for_port
from dctwin.settings import Settings
from domain.site import EXAMPLE_SITE, load_site
from ingest.store import Store
from twin.anomaly.service import AnomalyService, AnomalyServiceConfig
from twin.events import EventBus
from twin.state import Twin


def spawn(
    db: Path, keys: Path, port: int, stderr: int | IO[Any] | None = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start this server in its own process (the caller waits for the port and stops it)."""
    # polars' allocator as `dctwin serve` sets it (dctwin/__init__.py), before polars loads
    env = {"_RJEM_MALLOC_CONF": POLARS_MALLOC_CONF} | dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "bench.api_server", "--db", str(db), "--keys", str(keys),
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
    )  # fmt: skip


def start_server(
    db: Path, keys: Path, stderr: int | IO[Any] | None, wait_s: float
) -> tuple[subprocess.Popen[bytes], int, str]:
    """`spawn` on a free port with a new viewer key, once it answers: (process, port,
    token). The caller stops the process (`stop_process`)."""
    _, token = KeyStore(keys).create("bench", "viewer")
    port = free_port()
    proc = spawn(db, keys, port, stderr)
    try:
        wait_for_port("127.0.0.1", port, wait_s)
    except BaseException:
        stop_process(proc)
        raise
    return proc, port, token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    # the memory settings as `dctwin serve` takes them (DCTWIN_DUCKDB_MEMORY_LIMIT,
    # DCTWIN_ANOMALY_FIT_MAX_SAMPLES; issue 24)
    settings = Settings()
    twin = Twin(load_site(EXAMPLE_SITE), Store(args.db, memory_limit=settings.duckdb_memory_limit))
    bus = EventBus()
    anomaly = AnomalyService(
        twin.site,
        twin.store,
        AnomalyServiceConfig(fit_max_samples=settings.anomaly_fit_max_samples),
    )
    live = LiveView(twin, bus, interval_s=1.0, scorers=[anomaly_rack_scorer(anomaly)])
    app = create_app(twin, keys=KeyStore(args.keys), bus=bus, live=live, anomaly=anomaly)
    anomaly.start_background()
    live.start()
    gc.freeze()  # long-lived startup objects leave the GC's scans
    try:
        # configured as `dctwin serve` configures it (api/http_server.py)
        uvicorn.Server(uvicorn_config(app, "127.0.0.1", args.port)).run()
    finally:  # stopped before the store closes
        live.stop()
        anomaly.stop_background()
        twin.store.close()


if __name__ == "__main__":
    main()
