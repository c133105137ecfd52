"""Alert latency: from a fault appearing in a reading to the webhook arriving.

The whole example site (2,048 GPUs, 17,215 samples per interval) is collected every 1 s
by a simulated collector; ingest, the default rule set plus one `for: 0s` rule, and the
outbox run inside `dctwin.server.Server` as in `dctwin serve`. One GPU at a time reads
99 C; latency = webhook arrival (receiver clock) - the faulted sample's read time. Same
machine, same clock.

Two phases: first with only that pipeline running, then "while ingest runs at its
benchmark load": the ingest benchmark's consumer (bench/ingest_proc.py, one process)
reads a pre-produced backlog of rack intervals at full speed on the same broker and the
same two cores, restarted with a fresh consumer group and DuckDB file each time it reaches
the end. Faults are injected only while it is storing, and its throughput over the phase
is reported next to the latency.
"""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
import orjson
import yaml

from bench.bench_ingest import ingest_process, ingest_result, produce
from bench.harness import Result
from collectors.base import Readings
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from dctwin.broker import DevBroker
from dctwin.server import Server
from dctwin.settings import Settings
from domain.site import EXAMPLE_SITE, load_site
from domain.topics import ensure_topics

TARGET_P99_MS = 2000.0
BENCH_RULE = {
    "name": "BenchGpuHot",
    "kind": "threshold",
    "select": {"device_class": "gpu"},
    "metric": "gpu_temp_c",
    "op": ">",
    "value": 95,
    "clear": 90,
    "severity": "critical",
    "annotations": {"summary": "GPU {device_id} hot"},
}


class _FaultySource:
    def __init__(self, inner: SimulatedSource) -> None:
        self.inner, self.name = inner, inner.name
        self.device: str | None = None
        self.read_ms: dict[str, int] = {}
        self.index: dict[str, int] = {}  # sample position of each GPU's temperature

    def read(self) -> Readings:
        r = self.inner.read()
        dev = self.device
        if dev is not None:
            if not self.index:  # positions are the same every read: find them once
                self.index = {
                    d: k
                    for k, (d, m) in enumerate(zip(r.device_id, r.metric, strict=True))
                    if m == "gpu_temp_c"
                }
            i = self.index[dev]
            r.value[i] = 99.0
            self.read_ms.setdefault(dev, r.read_time_ms[i])
        return r

    def close(self) -> None:
        self.inner.close()


class _Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.fired: dict[str, float] = {}  # startsAt: when the engine saw the fault
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with outer.cond:
                    for a in body["alerts"]:
                        if a["status"] == "firing" and a["labels"]["alertname"] == "BenchGpuHot":
                            dev = a["labels"]["device_id"]
                            outer.arrived.setdefault(dev, at)
                            outer.fired.setdefault(
                                dev,
                                datetime.fromisoformat(
                                    a["startsAt"].replace("Z", "+00:00")
                                ).timestamp(),
                            )
                    outer.cond.notify_all()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, device: str, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: device in self.arrived, timeout_s)


def _rules_file(path: Path, url: str) -> Path:
    doc = yaml.safe_load(resources.files("twin.alerts").joinpath("default_rules.yaml").read_text())
    doc["rules"].append(BENCH_RULE)
    doc["receivers"] = [
        {"name": "bench", "type": "webhook", "url": url, "secret": "bench", "retry_initial": 0.1}
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


LOAD_TOPIC = "bench.ingest-load"  # the ingest benchmark's backlog, apart from the site's


class _IngestLoad:
    """The ingest benchmark running beside the alert pipeline (see the module docstring)."""

    def __init__(self, bootstrap: str, tmp: Path, backlog: int) -> None:
        self.bootstrap, self.tmp, self.backlog = bootstrap, tmp, backlog
        self.stop = threading.Event()
        self.passes: list[dict] = []
        self.progress: Path | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        k = 0
        while not self.stop.is_set():
            k += 1
            db, progress = self.tmp / f"load-{k}.duckdb", self.tmp / f"load-{k}.progress"
            stop_file = self.tmp / f"load-{k}.stop"
            self.progress = progress
            proc = ingest_process(
                "fast",
                self.bootstrap,
                f"bench-load-{k}",
                self.backlog,
                "--db",
                str(db),
                "--topic",
                LOAD_TOPIC,
                "--progress",
                str(progress),
                "--stop-file",
                str(stop_file),
            )
            while proc.poll() is None:
                if self.stop.wait(0.1):
                    stop_file.touch()
                    break
            self.passes.append(ingest_result(proc, 120))
            db.unlink(missing_ok=True)
            db.with_suffix(".duckdb.wal").unlink(missing_ok=True)

    def storing(self) -> bool:
        """Is the load consumer storing right now (progress written in the last 0.5 s)?"""
        p = self.progress
        return p is not None and p.exists() and time.time() - p.stat().st_mtime < 0.5

    def rate(self) -> float:
        n = sum(r["samples"] for r in self.passes)
        s = sum(r["seconds"] for r in self.passes)
        return n / s if s else 0.0


def _measure(
    faults: int,
    first: int,
    source: _FaultySource,
    rx: _Receiver,
    gpus: list[str],
    ready=lambda: True,
) -> tuple[list[float], list[float], int]:
    """Inject `faults` faults one after another; (latencies ms, read->fired ms, missed)."""
    lat, fired, missed = [], [], 0
    for k in range(first, first + faults):
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        dev = gpus[(k * 131) % len(gpus)]
        source.device = dev
        if rx.wait(dev, 15.0):
            lat.append((rx.arrived[dev] - source.read_ms[dev] / 1000) * 1000)
            fired.append((rx.fired[dev] - source.read_ms[dev] / 1000) * 1000)
        else:
            missed += 1
        source.device = None
        time.sleep(1.5)  # the GPU cools below the clear level; alert resolves
    return lat, fired, missed


def _latency_results(
    label: str, lat_ms: list[float], fired_ms: list[float], missed: int, note: str
) -> list[Result]:
    lat = np.array(lat_ms)
    split = (
        f"median read->fired {np.median(fired_ms):.0f} ms, fired->received "
        f"{np.median(lat - np.array(fired_ms)):.0f} ms; "
        if len(lat)
        else ""
    )
    note = f"{len(lat)} faults, {missed} missed; {split}{note}"
    p50 = float(np.percentile(lat, 50)) if len(lat) else float("nan")
    p99 = float(np.percentile(lat, 99)) if len(lat) else float("nan")
    name = f"alerts: fault in a reading -> webhook received, {label}"
    return [
        Result(name, "p50 ms", p50, note=note),
        Result(
            name,
            "p99 ms",
            p99,
            f"<= {TARGET_P99_MS:,.0f}",
            bool(missed == 0 and p99 <= TARGET_P99_MS),
            note=note,
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    faults = 6 if quick else 30
    backlog = 2_000_000 if quick else 20_000_000
    site = load_site(EXAMPLE_SITE)
    gpus = [d.id for d in site.devices() if d.device_class == "gpu"]
    rx = _Receiver()
    eval_ms: list[float] = []
    with DevBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        ensure_topics(broker.bootstrap, 8)
        ensure_topics(broker.bootstrap, 8, (LOAD_TOPIC,))
        produce(broker.bootstrap, backlog, topic=LOAD_TOPIC)  # before anything is timed
        settings = Settings(
            kafka_bootstrap=broker.bootstrap,
            db_path=Path(tmp) / "b.duckdb",
            consumer_group="bench-alerts",
            alerts_topic="",
            alert_rules_file=_rules_file(Path(tmp) / "rules.yaml", rx.url),
        )
        server = Server(settings)
        source = _FaultySource(SimulatedSource(SimulatedSourceConfig(seed=11)))
        daemon = CollectorDaemon(
            CollectorConfig(
                name="bench-alerts",
                site="sv1",
                interval_s=1.0,
                kafka={"bootstrap": broker.bootstrap},
                sources=[{"type": "simulated"}],
            ),
            sources=[source],
        )
        collector = threading.Thread(target=daemon.run, daemon=True)
        load = _IngestLoad(broker.bootstrap, Path(tmp), backlog)
        try:
            server.start_ingest()
            ingestor = server.ingestor
            assert ingestor is not None  # start_ingest made it
            collector.start()
            # warm up: group join and first full site stored before any fault
            deadline = time.monotonic() + 60
            while server.alerts.engine.evaluations < 3 or not ingestor.stats.samples_stored:
                if time.monotonic() > deadline:
                    raise RuntimeError("ingest never stored a poll")
                time.sleep(0.2)
            time.sleep(2.0)
            quiet = _measure(faults, 0, source, rx, gpus)
            eval_ms = [s.duration_ms for s in server.alerts.engine.status.values()]
            load.thread.start()
            loaded = _measure(faults, faults, source, rx, gpus, ready=load.storing)
        finally:
            load.stop.set()
            if load.thread.is_alive():
                load.thread.join(180)
            daemon.stop_event.set()
            collector.join(10)
            daemon.close()
            server.stop()
            rx.server.shutdown()
    site_note = "1 s interval, whole example site"
    return [
        *_latency_results("site load only", *quiet, site_note),
        *_latency_results(
            "ingest benchmark running",
            *loaded,
            f"{site_note}; beside it the ingest benchmark stored "
            f"{sum(r['samples'] for r in load.passes):,} samples in "
            f"{len(load.passes)} passes at {load.rate():,.0f} samples/s",
        ),
        Result(
            "alerts: ingest benchmark throughput during that phase",
            "samples/s",
            load.rate(),
            note="its own figure on a machine to itself: bench_ingest",
        ),
        Result(
            f"alerts: one evaluation, default rules ({len(eval_ms) - 1}), example site",
            "ms",
            float(sum(eval_ms)),
            note="sum of per-rule times of the last evaluation",
        ),
    ]


if __name__ == "__main__":
    from bench.harness import print_table

    print_table(run(quick=True))
