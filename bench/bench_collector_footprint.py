"""Collector footprint: one `dctwin collect` process reading 8 simulated GPUs (one HGX
node) and one Redfish CDU (DMTF's mockup over loopback HTTP) every second, producing to a
real broker. Measured from outside with psutil: resident memory and CPU time of the daemon
process alone. Targets (issue 4): < 100 MB RSS, < 3 % of one core.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.harness import Result
from dctwin.broker import DevBroker, stop_process
from dctwin.redfish_mockup import MockupServer
from domain.topics import ensure_topics

HERE = Path(__file__).resolve().parent
SITE = HERE / "sites" / "one-node.toml"
WARMUP_S = 4.0  # imports, the first Redfish walk, Kafka metadata


def _config(bootstrap: str, redfish_url: str) -> str:
    return f"""
name = "footprint-bench"
site = "bench"
interval_s = 1.0

[kafka]
bootstrap = "{bootstrap}"
compression = "zstd"

[[sources]]
type = "simulated"
site_file = "{SITE}"
racks = ["rk1"]

[[sources]]
type = "redfish"
name = "cdu"
base_url = "{redfish_url}"
auth = "session"
username = "admin"
password = "secret"
device_prefix = "bench/h1/cdu-row1"
rack = "h1"
chassis_kind = "cooling"
"""


def run(quick: bool = False) -> list[Result]:
    window_s = 8.0 if quick else 30.0
    with (
        DevBroker() as broker,
        MockupServer("public-cooling-unit", auth="session") as bmc,
        tempfile.TemporaryDirectory() as tmp,
    ):
        ensure_topics(broker.bootstrap, 4)
        cfg = Path(tmp) / "collector.toml"
        cfg.write_text(_config(broker.bootstrap, bmc.url))
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # own broker
        log = open(Path(tmp) / "daemon.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from dctwin.cli.main import app; app()",
                "collect",
                "--config",
                str(cfg),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            p = psutil.Process(proc.pid)
            time.sleep(WARMUP_S)
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(Path(tmp) / 'daemon.log').read_text()}")
            gets0 = sum(n for k, n in bmc.requests.items() if k.startswith("GET"))
            cpu0, t0 = p.cpu_times(), time.monotonic()
            rss = []
            while time.monotonic() - t0 < window_s:
                rss.append(p.memory_info().rss / 2**20)
                time.sleep(0.5)
            cpu1, t1 = p.cpu_times(), time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(Path(tmp) / 'daemon.log').read_text()}")
            gets = sum(n for k, n in bmc.requests.items() if k.startswith("GET")) - gets0
        finally:
            stop_process(proc)
            log.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(
                f"daemon failed ({proc.returncode}): "
                f"{(Path(tmp) / 'daemon.log').read_text()[-2000:]}"
            )
    cpu_pct = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0) * 100
    peak = max(rss)
    intervals = round(t1 - t0)
    note = f"{window_s:.0f} s window, {gets} Redfish GETs (~{gets / (t1 - t0):.0f}/s)"
    if gets < intervals:  # the daemon must really have been reading
        raise RuntimeError(f"only {gets} Redfish requests in {intervals} intervals")
    name = "collector daemon: 8 sim GPUs + 1 Redfish CDU @ 1 s"
    return [
        Result(name, "peak RSS MB", peak, "< 100", peak < 100, note=note),
        Result(name, "CPU % of one core", cpu_pct, "< 3", cpu_pct < 3, note=note),
    ]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.figure}: {r.value:.2f} (target {r.target}) {r.note}")
