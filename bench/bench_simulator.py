"""Simulator: batch mode for a 10,000-GPU site (target: one simulated hour at 10 s
resolution in under 120 s), the 100,000-GPU site, and the real-time source's read cost.

Batch runs go through `dctwin simulate` in a subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Result
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig

TARGET_S_PER_HOUR = 120.0


def _simulate(gpus: int, hours: float, out: Path, fmt: str = "parquet") -> dict:
    cmd = [
        sys.executable,
        "-m",
        "dctwin.cli.main",
        "simulate",
        "--gpus",
        str(gpus),
        "--hours",
        str(hours),
        "--step-s",
        "10",
        "--seed",
        "1",
        "--faults",
        "random:n=20",
        "--out",
        str(out),
        "--format",
        fmt,
        "--quiet",
    ]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout)
    summary["command_s"] = time.perf_counter() - t  # with start-up, site build and warm-up
    return summary


def _per_hour(s: dict, hours: float) -> float:
    """Seconds per simulated hour for the whole command: the batch work scales with the
    hours, the start-up (imports, site build, warm-up) is paid once."""
    return s["wall_s"] / hours + (s["command_s"] - s["wall_s"])


def run(quick: bool = False) -> list[Result]:
    results = []
    hours = 0.1 if quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        s = _simulate(10_000, hours, Path(tmp) / "pq")
        per_hour = _per_hour(s, hours)
        note = f"{s['samples']:,} samples; whole command (run alone: {s['wall_s']:.1f} s)" + (
            f", extrapolated from {hours} h" if quick else ""
        )
        results += [
            Result(
                "simulate 10k GPUs, 10 s steps -> Parquet",
                "s per simulated hour",
                per_hour,
                f"< {TARGET_S_PER_HOUR:.0f}",
                per_hour < TARGET_S_PER_HOUR,
                note=note,
            ),
            Result("simulate 10k GPUs -> Parquet", "samples/s", s["samples_per_s"]),
            Result("simulate 10k GPUs -> Parquet", "peak RSS MB", s["peak_rss_mb"]),
        ]
        d = _simulate(10_000, hours, Path(tmp) / "h.duckdb", "duckdb")
        results.append(
            Result(
                "simulate 10k GPUs, 10 s steps -> DuckDB",
                "s per simulated hour",
                _per_hour(d, hours),
                note=f"whole command; peak RSS {d['peak_rss_mb']:.0f} MB",
            )
        )
        big_h = 0.02 if quick else 0.25
        b = _simulate(100_000, big_h, Path(tmp) / "big")
        results += [
            Result(
                "simulate 100k GPUs -> Parquet",
                "s per simulated hour",
                b["wall_s"] / big_h,
                note=f"{b['samples']:,} samples in {big_h} h; run alone, the command took "
                f"{b['command_s']:.0f} s",
            ),
            Result(
                "simulate 100k GPUs -> Parquet",
                "peak RSS MB",
                b["peak_rss_mb"],
                note="chunked in time: bounded by chunk size, not run length",
            ),
        ]
    source = SimulatedSource(SimulatedSourceConfig())
    n = 20 if quick else 100
    t = time.perf_counter()
    samples = 0
    for _ in range(n):
        samples += len(source.read())
    ms = (time.perf_counter() - t) / n * 1000
    results.append(
        Result(
            "simulated source read, example site",
            "ms per read",
            ms,
            note=f"{samples // n:,} samples per read, step + readings",
        )
    )
    return results
