"""API load test: p99 < 10 ms at 1,000 requests/s for /v1/pue and /v1/devices/{id}
(issue 24; was < 20 ms at 500/s).

uvicorn serves the real app (auth, problem handlers, live view ticking every second)
in a subprocess over a DuckDB file filled with simulated telemetry of the example site;
bench/loadgen.py offers a fixed 1,000 req/s open-loop load on loopback and reports
p50/p99 latency measured from each request's scheduled send time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.api_server import start_server
from bench.harness import Result
from bench.loadgen import run_load
from dctwin.broker import stop_process
from domain.site import EXAMPLE_SITE, load_site
from experiments.simdata import fill_store
from ingest.store import Store

RATE = 1000.0
P99_TARGET_MS = 10.0


def run(quick: bool = False) -> list[Result]:
    duration_s = 5.0 if quick else 30.0
    site = load_site(EXAMPLE_SITE)
    gpus = [d.id for d in site.devices() if d.device_class == "gpu"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "twin.duckdb"
        store = Store(db)
        fill_store(store, site, minutes=2 if quick else 10)
        store.close()
        proc, port, token = start_server(db, Path(tmp) / "keys.duckdb", subprocess.PIPE, 60)
        try:
            headers = {"Authorization": f"Bearer {token}"}
            base = f"http://127.0.0.1:{port}"
            for path in ("/v1/pue", f"/v1/devices/{gpus[0]}"):  # fail fast on a broken app
                r = httpx.get(base + path, headers=headers, timeout=10)
                r.raise_for_status()
            time.sleep(1.5)  # let the live view tick once
            cases = [
                ("/v1/pue", lambda i: "/v1/pue"),
                ("/v1/devices/{id}", lambda i: f"/v1/devices/{gpus[(i * 7919) % len(gpus)]}"),
            ]
            for name, paths in cases:
                run_load("127.0.0.1", port, paths, headers, RATE, 1.0)  # warm-up
                res = run_load("127.0.0.1", port, paths, headers, RATE, duration_s)
                ok = res.pct(99) < P99_TARGET_MS and res.errors == 0
                note = (
                    f"p50 {res.pct(50):.2f} ms, max {res.latencies_ms.max():.1f} ms, "
                    f"{res.rate_achieved:.0f} req/s offered, {res.requests} requests, "
                    f"{res.errors} errors" + (f" ({dict(res.error_kinds)})" if res.errors else "")
                )
                load = os.getloadavg()[0]
                if load > 1.5:  # the target is for an otherwise idle machine
                    note += f"; machine NOT idle (load average {load:.1f})"
                results.append(
                    Result(
                        f"API {name} at {RATE:.0f} req/s (open loop, loopback)",
                        "p99 ms",
                        res.pct(99),
                        f"< {P99_TARGET_MS:.0f}",
                        ok,
                        note=note,
                    )
                )
        finally:
            stop_process(proc)
    return results
