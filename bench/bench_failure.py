"""Failure-risk live rescoring (issue 21 targets): CPU seconds per rescoring tick of the
serving path (`FailureRiskService.refresh`: incremental features, model, explanations)
for the example site and for a 100k-GPU synthetic fleet, against the SQL path it
replaces (`failure_risks`: features recomputed over the 6-h lookback).

Data: synthetic samples generated vectorized (every metric the simulated collectors emit
for GPUs, PSUs, CDUs, CRAHs and PDUs, read every 30 s, with rack, kind and counters as
the simulator writes them) into a real Store, one 5-min bucket at a time as ingest would;
the tick's CPU time excludes the insert. Model: a small one trained on a 4-h, 64-GPU
simulator run (timing, not accuracy: the cost does not depend on what the trees learnt).
CPU time is the process's (DuckDB's threads included), median over steady-state ticks
after a warm-up tick (the first tick reads the whole lookback once).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from bench.harness import Result, peak_rss_mb
from domain.site import load_site
from ingest.store import Store
from twin.failure import registry
from twin.failure.risk import failure_risks
from twin.failure.service import FailureRiskService

T0 = datetime(2025, 6, 1)  # on the 5-min grid
READ_S = 30
HORIZON_S = 3600.0
METRICS = {  # kind, metrics per read (as the simulated collectors emit them)
    "gpu": (
        "gpu",
        [
            "gpu_temp_c",
            "mem_temp_c",
            "power_w",
            "energy_mj",
            "util_gpu_pct",
            "sm_clock_mhz",
            "throttle_reasons",
            "ecc_corrected_total",
            "ecc_uncorrected_total",
            "remapped_rows_correctable",
            "remapped_rows_uncorrectable",
        ],
    ),
    "psu": ("power", ["input_power_w", "output_power_w", "temp_c"]),
    "pdu": ("power", ["power_w", "energy_kwh"]),
    "cdu": (
        "cooling",
        ["supply_temp_c", "return_temp_c", "flow_lpm", "pump_speed_pct", "pump_power_w"]
        + ["diff_pressure_kpa", "reservoir_level_pct", "leak_detected"],
    ),
    "crah": (
        "air",
        ["fan_power_w", "supply_air_temp_c", "return_air_temp_c", "fan_speed_pct"],
    ),
}
LEVEL = {  # typical value per metric (noise is 2 % of it)
    "gpu_temp_c": 65,
    "mem_temp_c": 70,
    "power_w": 550,
    "util_gpu_pct": 90,
    "sm_clock_mhz": 1980,
    "input_power_w": 2400,
    "output_power_w": 2250,
    "temp_c": 40,
    "power_w_pdu": 90_000,
    "supply_temp_c": 30,
    "return_temp_c": 40,
    "flow_lpm": 2000,
    "pump_speed_pct": 70,
    "pump_power_w": 6000,
    "diff_pressure_kpa": 150,
    "reservoir_level_pct": 80,
    "fan_power_w": 8000,
    "supply_air_temp_c": 22,
    "return_air_temp_c": 32,
    "fan_speed_pct": 65,
}
COUNTER = {"energy_mj", "energy_kwh", "ecc_corrected_total"}
ZERO = {
    "throttle_reasons",
    "ecc_uncorrected_total",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "leak_detected",
}


def example_fleet() -> dict[str, tuple[list[str], list[str]]]:
    """Device ids and racks per class of domain/sites/example.toml."""
    site = load_site(Path(__file__).resolve().parents[1] / "domain/sites/example.toml")
    out: dict[str, tuple[list[str], list[str]]] = {c: ([], []) for c in METRICS}
    for hall in site.halls:
        for row in hall.rows:
            tpl = site.templates[row.template]
            for rack in row.racks:
                for n in range(tpl.nodes):
                    for g in range(tpl.gpus_per_node):
                        out["gpu"][0].append(f"ex/{hall.id}/{rack}/n{n:02d}/gpu{g}")
                        out["gpu"][1].append(rack)
                for p in range(tpl.psus):
                    out["psu"][0].append(f"ex/{hall.id}/{rack}/psu{p:02d}")
                    out["psu"][1].append(rack)
        for cls, devs in (("cdu", hall.cdus), ("crah", hall.crahs), ("pdu", hall.pdus)):
            for d in devs:
                out[cls][0].append(f"ex/{hall.id}/{d.id}")
                out[cls][1].append(hall.id)
    return out


def gpu_fleet(n_gpus: int) -> dict[str, tuple[list[str], list[str]]]:
    """n_gpus GPUs, 64 a rack (8 nodes of 8), and the example's 6 PSUs a node."""
    racks = [f"k{i // 64:05d}" for i in range(n_gpus)]
    gpus = [f"big/{r}/n{(i % 64) // 8}/gpu{i % 8}" for i, r in enumerate(racks)]
    psu_racks = [f"k{i // 48:05d}" for i in range(n_gpus * 6 // 8)]
    psus = [f"big/{r}/psu{i % 48:02d}" for i, r in enumerate(psu_racks)]
    return {"gpu": (gpus, racks), "psu": (psus, psu_racks)}


def bucket_frame(
    fleet: dict[str, tuple[list[str], list[str]]], end: datetime, rng: np.random.Generator
) -> pl.DataFrame:
    """Every read of every device in the bucket (end - 300 s, end], vectorized."""
    reads = np.arange(1, 300 // READ_S + 1) * READ_S - 300  # offsets from `end`, s
    t_us = int((end - datetime(1970, 1, 1)).total_seconds() * 1e6)
    parts = []
    for cls, (ids, racks) in fleet.items():
        if not ids:
            continue
        kind, metrics = METRICS[cls]
        n, r, m = len(ids), len(reads), len(metrics)
        dev = np.repeat(np.arange(n), r * m)
        read = np.tile(np.repeat(reads, m), n)
        met = np.tile(np.arange(m), n * r)
        level = np.array(
            [
                0.0 if k in ZERO else 1e6 if k in COUNTER else LEVEL.get(f"{k}_{cls}", LEVEL[k])
                for k in metrics
            ]
        )
        value = level[met] * (1 + 0.02 * rng.standard_normal(dev.size))
        value[np.isin(met, [i for i, k in enumerate(metrics) if k in ZERO])] = 0.0
        id_s, rack_s = pl.Series(ids), pl.Series(racks)
        idx = pl.Series(dev)
        parts.append(
            pl.DataFrame(
                {
                    "read_time": pl.Series(t_us + read * 1_000_000).cast(pl.Datetime("us")),
                    "device_id": id_s.gather(idx),
                    "metric": pl.Series(metrics).gather(pl.Series(met)),
                    "value": value.round(2),
                    "kind": pl.repeat(kind, dev.size, eager=True),
                    "rack": rack_s.gather(idx),
                }
            )
        )
    return pl.concat(parts)


def _insert(store: Store, frame: pl.DataFrame) -> None:
    store.cursor().execute("INSERT INTO samples SELECT * FROM frame")


def small_model(root: Path) -> None:
    """Train and approve a small model on a short simulator run (seconds)."""
    from experiments.failure.dataset import RunSpec, generate
    from experiments.failure.evaluate import load_rows
    from twin.failure.model import FailureModel

    path = generate(RunSpec(1, 4.0, 60.0, 64), root / "data")
    rows = load_rows([path], HORIZON_S)
    model = FailureModel(HORIZON_S).fit(rows, rows)
    v = registry.save(model, {"note": "bench: timing only, trained on its own run"}, root / "m")
    registry.approve(v.version, root / "m")


def measure(
    name: str,
    fleet: dict[str, tuple[list[str], list[str]]],
    history_buckets: int,
    ticks: int,
    root: Path,
    baseline: bool,
) -> tuple[float, float, float | None, int]:
    """(warm-up CPU s, median steady-state CPU s per tick, SQL path CPU s, devices)."""
    rng = np.random.default_rng(0)
    store = Store(root / f"{name}.duckdb")
    try:
        end = T0
        for _ in range(history_buckets):
            end += timedelta(seconds=300)
            _insert(store, bucket_frame(fleet, end, rng))
        svc = FailureRiskService(store, HORIZON_S, root / "m")
        c = time.process_time()
        svc.refresh(end)
        warm = time.process_time() - c
        per_tick = []
        for _ in range(ticks):
            end += timedelta(seconds=300)
            _insert(store, bucket_frame(fleet, end, rng))
            c = time.process_time()
            assert svc.refresh(end)
            per_tick.append(time.process_time() - c)
        assert svc.table is not None
        n = svc.table.height
        sql = None
        if baseline:
            c = time.process_time()
            failure_risks(store, end, HORIZON_S, root / "m", models=svc.models)  # loaded
            sql = time.process_time() - c
        return warm, statistics.median(per_tick), sql, n
    finally:
        store.close()


def run(quick: bool = False) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small_model(root)
        hist = 18 if quick else 78  # 1.5 h / 6.5 h: the SQL baseline reads up to 6 h
        warm, tick, sql, n = measure("example", example_fleet(), hist, 3, root, True)
        results.append(
            Result(
                f"failure risk live rescoring, example site ({n:,} devices)",
                "CPU s per tick",
                tick,
                "< 0.5",
                tick < 0.5,
                baseline=sql,
                note=f"baseline: SQL path over {hist * 5 / 60:.1f} h; warm-up tick "
                f"{warm:.1f} s; peak RSS {peak_rss_mb():.0f} MB",
            )
        )
        gpus = 10_000 if quick else 100_000
        warm, tick, _, n = measure("fleet", gpu_fleet(gpus), 2, 2, root, False)
        results.append(
            Result(
                f"failure risk live rescoring, {gpus:,} GPUs + PSUs ({n:,} devices)",
                "CPU s per tick",
                tick,
                "< 10" if not quick else "",
                tick < 10 if not quick else None,
                note=f"warm-up tick {warm:.1f} s; peak RSS {peak_rss_mb():.0f} MB",
            )
        )
    return results
