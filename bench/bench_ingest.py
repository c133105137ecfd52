"""Issue 5: ingest throughput, peak RSS, and the straightforward baseline, in one run.

The messages are produced first (producing is not ingest work); then each consumer runs
in its own process from the beginning of the topics, timed from partition assignment to
the last DuckDB commit. Messages are realistic rack intervals: 64 GPUs x 10 metrics =
640 samples, JSON v1, zstd-compressed by the producer, key = rack, 8 partitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from bench.harness import Result
from dctwin.broker import DevBroker
from domain.contract import Kind, telemetry_topic
from domain.site import EXAMPLE_SITE, load_site
from domain.topics import ensure_topics, make_producer

# metric -> (low, high) of the generated values: realistic readings of a GPU under load
VALUE_RANGES = {
    "gpu_temp_c": (30.0, 85.0),
    "mem_temp_c": (30.0, 90.0),
    "power_w": (60.0, 700.0),
    "energy_mj": (0.0, 0.0),  # a counter, set below
    "util_gpu_pct": (0.0, 100.0),
    "util_mem_pct": (0.0, 100.0),
    "sm_clock_mhz": (210.0, 1980.0),
    "mem_clock_mhz": (1593.0, 2619.0),
    "throttle_reasons": (0.0, 255.0),
    "fan_speed_pct": (0.0, 100.0),
}
GPU_METRICS = (
    "gpu_temp_c",
    "mem_temp_c",
    "power_w",
    "energy_mj",
    "util_gpu_pct",
    "util_mem_pct",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "throttle_reasons",
    "fan_speed_pct",
)
REPO = Path(__file__).resolve().parent.parent


def rack_messages(
    n_samples: int, seed: int = 0, end_ms: int | None = None
) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, samples) for whole rack intervals of the example site, 1 s apart and
    ending two minutes before `end_ms` (so they are inside the default skew window)."""
    site = load_site(EXAMPLE_SITE)
    by_rack: dict[str, list[str]] = {}
    for d in site.devices():
        if d.device_class == "gpu":
            by_rack.setdefault(d.rack, []).append(d.id)
    racks = sorted(by_rack)
    groups = [[r] for r in racks]  # one rack per message, keyed by it, as the contract requires
    per_interval = sum(len(g) for g in by_rack.values()) * len(GPU_METRICS)
    intervals = -(-n_samples // per_interval)
    end_ms = end_ms or int(time.time() * 1000)
    t0 = end_ms - 120_000 - intervals * 1000
    rng = np.random.default_rng(seed)
    layout = {}
    for g in groups:
        gpus = [d for r in g for d in by_rack[r]]
        layout[g[0]] = (
            [d for _ in GPU_METRICS for d in gpus],
            [m for m in GPU_METRICS for _ in gpus],
            len(gpus),
        )
    # values inside the contract's plausible ranges (domain/contract.py RANGES), else
    # ingest would refuse them as out_of_range
    bounds = {
        r: (
            np.repeat([VALUE_RANGES[m][0] for m in GPU_METRICS], n_gpu),
            np.repeat([VALUE_RANGES[m][1] for m in GPU_METRICS], n_gpu),
        )
        for r, (_, _, n_gpu) in layout.items()
    }
    produced = seq = 0
    for k in range(intervals):
        t = t0 + k * 1000
        for g in groups:
            ids, metrics, n_gpu = layout[g[0]]
            lo, hi = bounds[g[0]]
            vals = np.round(rng.uniform(lo, hi), 3)
            vals[3 * n_gpu : 4 * n_gpu] = 3.6e9 + k * 700_000.0  # energy counter, mJ
            seq += 1
            doc = {
                "version": 1,
                "type": "telemetry",
                "batch_id": uuid.uuid4().hex,
                "collector": f"bench-{g[0]}",
                "kind": Kind.gpu.value,
                "site": site.site.id,
                "rack": g[0],
                "seq": seq,
                "interval_s": 1.0,
                "sent_time_ms": t + 50,
                "samples": {
                    "device_id": ids,
                    "metric": metrics,
                    "value": vals.tolist(),
                    "read_time_ms": [t] * len(ids),
                },
            }
            yield g[0].encode(), orjson.dumps(doc), len(ids)
            produced += len(ids)
            if produced >= n_samples:
                return


def produce(
    bootstrap: str,
    n_samples: int,
    compression: str = "zstd",
    topic: str | None = None,
) -> tuple[int, int]:
    producer = make_producer(
        bootstrap, compression, linger_ms=20, batch_size=1024 * 1024, max_block_ms=60_000
    )
    topic = topic or telemetry_topic(Kind.gpu)
    n = n_bytes = 0
    for key, value, count in rack_messages(n_samples):
        producer.send(topic, key=key, value=value)
        n += count
        n_bytes += len(value)
    producer.flush()
    producer.close()
    return n, n_bytes


def ingest_process(
    mode: str, bootstrap: str, group: str, expect: int, *extra: str
) -> subprocess.Popen:
    """`bench/ingest_proc.py` in its own process; its JSON result is the last stdout line."""
    cmd = [
        sys.executable,
        "-m",
        "bench.ingest_proc",
        mode,
        "--bootstrap",
        bootstrap,
        "--group",
        group,
        "--expect",
        str(expect),
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def ingest_result(proc: subprocess.Popen, timeout_s: float) -> dict:
    out, _ = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest process failed ({proc.returncode}): {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_one(bootstrap: str, tmp: Path, expect: int, group: str) -> dict:
    return ingest_result(
        ingest_process("fast", bootstrap, group, expect, "--db", str(tmp / f"{group}.duckdb")), 900
    )


def run_two(bootstrap: str, tmp: Path, expect: int, group: str) -> list[dict]:
    stop = tmp / f"{group}.stop"
    progress = [tmp / f"{group}-{k}.progress" for k in range(2)]
    procs = [
        ingest_process(
            "fast",
            bootstrap,
            group,
            expect,
            "--shard-dir",
            str(tmp / group),
            "--tag",
            str(k),
            "--stop-file",
            str(stop),
            "--progress",
            str(progress[k]),
        )
        for k in range(2)
    ]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        done = sum(int(f.read_text() or 0) for f in progress if f.exists())
        if done >= expect:
            break
        time.sleep(0.05)
    stop.touch()
    return [ingest_result(p, 120) for p in procs]


def run(quick: bool = False) -> list[Result]:
    n = 1_000_000 if quick else 10_000_000
    n_base = 5_000 if quick else 20_000
    with DevBroker() as broker, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ensure_topics(broker.bootstrap, 8)
        t = time.perf_counter()
        n, n_bytes = produce(broker.bootstrap, n)
        produce_s = time.perf_counter() - t
        one = run_one(broker.bootstrap, tmp, n, "bench-one")
        loads = [os.getloadavg()[0]]
        two = run_two(broker.bootstrap, tmp, n, "bench-two")
        loads.append(os.getloadavg()[0])
        base = ingest_result(
            ingest_process(
                "baseline", broker.bootstrap, "bench-base", n_base, "--db", str(tmp / "base.duckdb")
            ),
            900,
        )
    base_rate = base["samples"] / base["seconds"]
    one_rate = one["samples"] / one["seconds"]
    two_n = sum(r["samples"] for r in two)
    # Two members join one after the other: the first reads alone until the group
    # rebalances. Time the steady state, from the last assignment change on.
    settled = max(r["t_settled"] for r in two)
    two_s = max(r["t_last"] for r in two) - settled
    two_after = two_n - sum(r["samples_at_settled"] for r in two)
    two_rate = two_after / two_s
    two_cpu = sum(r["cpu_after_settled_s"] for r in two) / two_after * 1e6
    for r in (one, *two):
        if r["dead_letters"]:
            raise AssertionError(f"benchmark messages were dead-lettered: {r['dead_letters']}")
    if one["samples"] != n or two_n != n:
        raise AssertionError(f"stored {one['samples']:,} / {two_n:,} of {n:,} samples")
    note = f"{n:,} samples, {n / (n_bytes / 1e6):,.0f}/MB JSON"
    best = max(one_rate, two_rate)
    return [
        # both designs are measured; the target is on the better of the two in this run
        Result(
            "ingest, best of 1 and 2 processes (rows below)",
            "samples/s",
            best,
            ">= 1,000,000",
            best >= 1e6,
            base_rate,
            "1 process" if best == one_rate else "2 processes",
        ),
        Result(
            "ingest, 1 process: Kafka -> bulk decode -> validate -> DuckDB",
            "samples/s",
            one_rate,
            "",
            None,
            base_rate,
            f"{note}; {one['seconds']:.1f} s, {one['cpu_s'] / n * 1e6:.2f} CPU s/M",
        ),
        Result(
            "ingest, 2 processes in one group (scale-out shards)",
            "samples/s",
            two_rate,
            "",
            None,
            base_rate,
            f"{two_after:,} samples after the group settled in {two_s:.1f} s, "
            f"{two_cpu:.2f} CPU s/M; split " + "/".join(f"{r['samples']:,}" for r in two),
        ),
        Result(
            "ingest peak RSS, 1 process",
            "MB",
            one["peak_rss_mb"],
            "< 1,500",
            one["peak_rss_mb"] < 1500,
        ),
        Result(
            "ingest peak RSS, largest of 2 processes",
            "MB",
            max(r["peak_rss_mb"] for r in two),
            "< 1,500",
            max(r["peak_rss_mb"] for r in two) < 1500,
        ),
        Result(
            "baseline ingest: pydantic model + row insert per sample",
            "samples/s",
            base_rate,
            note=f"{base['samples']:,} samples, {base['seconds']:.1f} s",
        ),
        Result(
            "bench producer (not ingest work)",
            "samples/s",
            n / produce_s,
            note=f"zstd, {n_bytes / 1e6:,.0f} MB JSON before compression",
        ),
        Result(
            "machine load during the ingest runs",
            "load average",
            sum(loads) / len(loads),
            note=f"{os.cpu_count()} CPUs; other work on the machine slows every figure",
        ),
    ]


if __name__ == "__main__":
    from rich.console import Console

    from bench.harness import print_table

    print_table(run(quick="--quick" in sys.argv), Console(width=200))
