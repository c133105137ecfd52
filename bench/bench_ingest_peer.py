"""Issue 24: dctwin's ingest beside VictoriaMetrics, and beside its own limits, in one run.

The same samples as bench_ingest (rack intervals of the example site, 640 samples per
message) go to Kafka for dctwin and, converted to Influx line protocol before any timing,
to VictoriaMetrics over HTTP (`/write`). Runs alternate (dctwin, VM, dctwin, VM, ...):
the machine's load changes from one minute to the next.

- dctwin: one ingest process (bench/ingest_proc.py) from partition assignment to the last
  DuckDB commit (stored = queryable), CPU of that process only.
- VictoriaMetrics (Debian package `victoria-metrics`, never a downloaded binary): a fresh
  instance per run on loopback with a temporary data directory. Its series are registered
  first (one sample per series, then a wait until they are searchable: new series become
  searchable only some seconds after creation, which would dominate a short run), then
  the samples are sent and the run is timed until a count query sees every one. CPU of
  the VictoriaMetrics process only (the load client and the broker are not counted).
- dctwin's limits on the same data: kafka-python fetching and decompressing the topic,
  and DuckDB's bare `INSERT ... SELECT` of the samples from Arrow into the samples table.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import duckdb
import numpy as np
import orjson
import psutil
import pyarrow as pa
from kafka import KafkaConsumer, TopicPartition

from bench.bench_ingest import ingest_process, ingest_result, rack_messages
from bench.harness import Result
from dctwin.broker import DevBroker
from domain.contract import Kind, telemetry_topic
from domain.topics import ensure_topics, make_producer
from ingest.store import SCHEMA

VM_BIN = "/usr/bin/victoria-metrics"
INSTALL_HINT = "apt-get install -y victoria-metrics (Debian package; bookworm has 1.79)"
CHUNK_BYTES = 4 * 1024 * 1024  # one HTTP request to VictoriaMetrics
CLIENTS = 2  # concurrent HTTP connections sending to VictoriaMetrics


class Data:
    """The benchmark's samples, in each system's wire form, prepared before any timing."""

    def __init__(self) -> None:
        self.samples = 0
        self.messages = 0
        self.chunks: list[bytes] = []  # Influx line protocol, whole lines per chunk
        self.register = b""  # one line per device: every series once
        self.t_first = self.t_last = 0
        self.series = 0
        self.arrow: list[pa.Table] = []  # for DuckDB's bare insert, one per poll's worth


def _influx(doc: dict, buf: list[bytes], devices: dict[str, bytes]) -> None:
    """One line per (device, read time): `gpu,device_id=..,rack=.. m1=v1,m2=v2 t_ms`."""
    s = doc["samples"]
    lines: dict[tuple[str, int], list[str]] = {}
    for d, m, v, t in zip(s["device_id"], s["metric"], s["value"], s["read_time_ms"], strict=True):
        lines.setdefault((d, t), []).append(f"{m}={v!r}")
    for (d, t), fields in lines.items():
        tags = devices.get(d)
        if tags is None:  # ids hold no space, comma or '=' (the contract's rules)
            tags = devices[d] = f"{doc['kind']},device_id={d},rack={doc['rack']}".encode()
        buf.append(b"%b %b %d" % (tags, ",".join(fields).encode(), t))


def produce_and_convert(bootstrap: str, n_samples: int) -> Data:
    producer = make_producer(
        bootstrap, "zstd", linger_ms=20, batch_size=1024 * 1024, max_block_ms=60_000
    )
    topic = telemetry_topic(Kind.gpu)
    data = Data()
    devices: dict[str, bytes] = {}
    first: dict[str, str] = {}  # device -> one line with every field of it (registration)
    buf: list[bytes] = []
    size = 0
    poll: list[dict] = []
    for key, value, count in rack_messages(n_samples):
        producer.send(topic, key=key, value=value)
        data.samples += count
        data.messages += 1
        doc = orjson.loads(value)
        start = len(buf)
        _influx(doc, buf, devices)
        for line in buf[start:]:
            size += len(line) + 1
        t = doc["samples"]["read_time_ms"]
        data.t_first = min(data.t_first or t[0], min(t))
        data.t_last = max(data.t_last, max(t))
        for d, m in zip(doc["samples"]["device_id"], doc["samples"]["metric"], strict=True):
            first.setdefault(d, "")
            if f"{m}=" not in first[d]:
                first[d] += ("," if first[d] else "") + f"{m}=0"
        if size >= CHUNK_BYTES:
            data.chunks.append(b"\n".join(buf) + b"\n")
            buf, size = [], 0
        poll.append(doc)
        if len(poll) == 2000:
            data.arrow.append(_arrow(poll))
            poll = []
    if buf:
        data.chunks.append(b"\n".join(buf) + b"\n")
    if poll:
        data.arrow.append(_arrow(poll))
    producer.flush()
    producer.close()
    # registration samples 10 s before the data: outside the timed count's window
    t_reg = data.t_first - 10_000
    data.register = b"".join(
        b"%b %b %d\n" % (devices[d], f.encode(), t_reg) for d, f in first.items()
    )
    data.series = sum(f.count("=") for f in first.values())
    return data


def _arrow(docs: list[dict]) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("device_id", "metric", "value", "read_time_ms")}
    kind: list[str] = []
    rack: list[str] = []
    for doc in docs:
        s = doc["samples"]
        for k in cols:
            cols[k] += s[k]
        kind += [doc["kind"]] * len(s["value"])
        rack += [doc["rack"]] * len(s["value"])
    return pa.table(
        {
            "read_time": pa.array(np.array(cols["read_time_ms"], "datetime64[ms]")),
            "device_id": pa.array(cols["device_id"]).dictionary_encode(),
            "metric": pa.array(cols["metric"]).dictionary_encode(),
            "value": pa.array(cols["value"], pa.float64()),
            "kind": pa.array(kind).dictionary_encode(),
            "rack": pa.array(rack).dictionary_encode(),
        }
    )


# -- VictoriaMetrics ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VictoriaMetrics:
    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                VM_BIN,
                f"-storageDataPath={data_dir}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-retentionPeriod=100y",
                "-search.disableCache",  # every count query is answered from storage
                "-loggerLevel=ERROR",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self._get("/health") == b"OK":
                    return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("victoria-metrics did not answer /health within 30 s")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def _get(self, path: str) -> bytes:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            con.request("GET", path)
            return con.getresponse().read()
        finally:
            con.close()

    def count(self, t_first: int, t_last: int) -> int:
        """Samples stored with read times in [t_first, t_last] (ms)."""
        q = f'sum(count_over_time({{__name__=~"gpu_.+"}}[{t_last - t_first + 1}ms]))'
        path = "/api/v1/query?" + urllib.parse.urlencode(
            {"query": q, "time": (t_last + 0.5) / 1000}
        )
        res = orjson.loads(self._get(path))["data"]["result"]
        return int(float(res[0]["value"][1])) if res else 0

    def send(self, chunks: list[bytes]) -> None:
        """POST the chunks over CLIENTS keep-alive connections."""
        errors: list[str] = []

        def worker(part: list[bytes]) -> None:
            con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            for body in part:
                con.request("POST", "/write?precision=ms", body=body)
                r = con.getresponse()
                r.read()
                if r.status >= 300:
                    errors.append(f"{r.status}")
            con.close()

        threads = [
            threading.Thread(target=worker, args=(chunks[k::CLIENTS],)) for k in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"victoria-metrics refused writes: {errors[:3]}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_vm(data: Data, tmp: Path, k: int) -> dict:
    data_dir = tmp / f"vm-{k}"
    vm = VictoriaMetrics(data_dir)
    try:
        vm.send([data.register])
        t_reg = data.t_first - 10_000
        t0 = time.monotonic()
        while vm.count(t_reg, t_reg) < data.series or time.monotonic() - t0 < 10:
            if time.monotonic() - t0 > 120:
                raise RuntimeError("victoria-metrics: registered series not searchable in 120 s")
            time.sleep(0.5)
        cpu0, t0 = vm.cpu_s(), time.perf_counter()
        vm.send(data.chunks)
        polls = 0
        while (seen := vm.count(data.t_first, data.t_last)) < data.samples:
            polls += 1
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"victoria-metrics: {seen:,} of {data.samples:,} visible")
            time.sleep(0.05)
        seconds, cpu = time.perf_counter() - t0, vm.cpu_s() - cpu0
        if seen != data.samples:
            raise AssertionError(f"victoria-metrics counts {seen:,}, sent {data.samples:,}")
        return {"samples": seen, "seconds": seconds, "cpu_s": cpu, "polls": polls}
    finally:
        vm.close()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- dctwin and its limits ------------------------------------------------------------------


def run_dctwin(bootstrap: str, tmp: Path, n: int, k: int) -> dict:
    db = tmp / f"dctwin-{k}.duckdb"
    out = ingest_result(ingest_process("fast", bootstrap, f"peer-{k}", n, "--db", str(db)), 900)
    for p in tmp.glob(f"dctwin-{k}.duckdb*"):
        p.unlink()
    if out["samples"] != n or out["dead_letters"]:
        raise AssertionError(f"dctwin stored {out['samples']:,} of {n:,}: {out['dead_letters']}")
    return out


def kafka_fetch(bootstrap: str, data: Data) -> dict:
    """kafka-python fetching and decompressing the topic (no JSON parsing), this process."""
    topic = telemetry_topic(Kind.gpu)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        max_poll_records=2000,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while seen < data.messages:
        for recs in consumer.poll(timeout_ms=1000).values():
            seen += len(recs)
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"kafka fetch: {seen} of {data.messages} messages")
    out = {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}
    consumer.close()
    return out


def duckdb_insert(data: Data, tmp: Path) -> dict:
    """DuckDB's bare INSERT ... SELECT from Arrow into the samples table, one transaction
    per poll's worth (2,000 messages), nothing else."""
    path = tmp / "bare.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET memory_limit = '512MB'")
    con.execute(SCHEMA)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for tbl in data.arrow:  # noqa: B007 - read by SQL below
        con.execute("INSERT INTO samples SELECT * FROM tbl")
    out = {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}
    con.close()
    path.unlink()
    return out


def run(quick: bool = False) -> list[Result]:
    if not os.path.exists(VM_BIN):
        raise RuntimeError(f"{VM_BIN} is missing: the peer benchmark needs it ({INSTALL_HINT})")
    n = 1_000_000 if quick else 10_000_000
    rounds = int(os.environ.get("DCTWIN_PEER_ROUNDS", "2"))
    dct: list[dict] = []
    vms: list[dict] = []
    loads: list[float] = []
    with DevBroker() as broker, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ensure_topics(broker.bootstrap, 8)
        data = produce_and_convert(broker.bootstrap, n)
        n = data.samples
        for k in range(rounds):  # interleaved: A B A B
            loads.append(os.getloadavg()[0])
            dct.append(run_dctwin(broker.bootstrap, tmp, n, k))
            loads.append(os.getloadavg()[0])
            vms.append(run_vm(data, tmp, k))
            print(
                f"round {k}: dctwin {n / dct[-1]['seconds']:,.0f}/s "
                f"({n / dct[-1]['cpu_s']:,.0f}/CPU-s), VictoriaMetrics "
                f"{n / vms[-1]['seconds']:,.0f}/s ({n / vms[-1]['cpu_s']:,.0f}/CPU-s), "
                f"load {loads[-1]:.1f}",
                file=sys.stderr,
            )
        kafka = kafka_fetch(broker.bootstrap, data)
        bare = duckdb_insert(data, tmp)
    loads.append(os.getloadavg()[0])

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(n / r[key] for r in runs)

    d_rate, v_rate = med(dct, "seconds"), med(vms, "seconds")
    d_cpu, v_cpu = med(dct, "cpu_s"), med(vms, "cpu_s")
    load = sum(loads) / len(loads)
    each = "; ".join(
        f"{n / a['seconds'] / 1e6:.2f}/{n / b['seconds'] / 1e6:.2f}M"
        for a, b in zip(dct, vms, strict=True)
    )
    note = f"{n:,} samples, median of {rounds} interleaved runs (dctwin/VM per round: {each})"
    vm_version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return [
        Result(
            "ingest vs VictoriaMetrics: wall clock (baseline = VM)",
            "samples/s",
            d_rate,
            ">= VM (aim 1.5x)",
            d_rate >= v_rate,
            v_rate,
            note,
        ),
        Result(
            "ingest vs VictoriaMetrics: per CPU-second of the ingesting process",
            "samples/CPU-s",
            d_cpu,
            ">= VM (aim 1.5x)",
            d_cpu >= v_cpu,
            v_cpu,
            "broker and load client excluded",
        ),
        Result(
            f"VictoriaMetrics {vm_version or '?'}: Influx lines over HTTP, until queryable",
            "samples/s",
            v_rate,
            note=f"{v_cpu:,.0f} samples/CPU-s; series registered before the timed run",
        ),
        Result(
            "dctwin ingest, 1 process, on an idle machine",
            "samples/s",
            d_rate,
            ">= 2,000,000 (idle)",
            d_rate >= 2e6 if load < 0.5 else None,
            note="target applies on an idle machine only" if load >= 0.5 else "machine was idle",
        ),
        Result(
            "dctwin's limit: kafka-python fetch + decompress of the topic (baseline)",
            "samples/s",
            n / kafka["seconds"],
            baseline=d_rate,
            note=f"{n / kafka['cpu_s']:,.0f} samples/CPU-s; ratio: limit / dctwin",
        ),
        Result(
            "dctwin's limit: DuckDB bare INSERT ... SELECT from Arrow (baseline)",
            "samples/s",
            n / bare["seconds"],
            baseline=d_rate,
            note=f"{n / bare['cpu_s']:,.0f} samples/CPU-s; ratio: limit / dctwin",
        ),
        Result(
            "machine load during the peer runs",
            "load average",
            load,
            note=f"{os.cpu_count()} CPUs; other work on the machine slows every figure",
        ),
    ]


if __name__ == "__main__":
    from rich.console import Console

    from bench.harness import print_table

    print_table(run(quick="--quick" in sys.argv), Console(width=200))
