"""Twin core at scale: one tick for a 100,000-GPU site, and a day of 1-minute rack history.

The site (4 halls x 16 rows x 25 racks x 8 nodes x 8 GPUs = 102,400 GPUs) and its state
are synthetic: every metric the simulated collectors emit, for every device, in a real
Store's `latest` table (~870k rows), updated in place between ticks as ingest would.
Both figures are taken on one core: the process is pinned to one CPU and DuckDB runs
one thread. The rollup history holds 24 h for every scope: minute rows compacted hour by hour, the
latest hour(s) still as tick rows, as the twin leaves them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.harness import Result
from domain.site import Site
from ingest.store import Store
from twin.state import Twin
from twin.topology import Topology
from twin.twin_config import TwinConfig

EMITTED = {  # metrics per device class, as the simulated source emits them (+ CRAH duty)
    "gpu": [
        "gpu_temp_c",
        "mem_temp_c",
        "power_w",
        "energy_mj",
        "util_gpu_pct",
        "sm_clock_mhz",
        "throttle_reasons",
        "ecc_uncorrected_total",
    ],
    "psu": ["input_power_w", "output_power_w", "temp_c", "energy_kwh"],
    "cdu": [
        "supply_temp_c",
        "return_temp_c",
        "flow_lpm",
        "pump_speed_pct",
        "pump_power_w",
        "diff_pressure_kpa",
    ],
    "pdu": ["power_w", "energy_kwh"],
    "crah": [
        "supply_air_temp_c",
        "return_air_temp_c",
        "fan_speed_pct",
        "fan_power_w",
        "cooling_kw",
    ],
    "meter": ["power_kw", "energy_kwh"],
    "chiller_plant": [
        "chw_supply_temp_c",
        "chw_return_temp_c",
        "cw_supply_temp_c",
        "chiller_power_kw",
        "tower_power_kw",
        "pump_power_kw",
        "cooling_load_kw",
    ],
}
T0 = datetime(2025, 6, 1)


def synthetic_site(halls: int = 4, rows: int = 16, racks: int = 25) -> Site:
    def hall(h: int) -> dict:
        return {
            "id": f"h{h}",
            "rows": [
                {
                    "id": f"row{r:02d}",
                    "template": "hgx",
                    "pdu": f"pdu{r:02d}",
                    "cdu": f"cdu{r:02d}",
                    "racks": [f"h{h}r{r:02d}k{k:02d}" for k in range(racks)],
                }
                for r in range(rows)
            ],
            "cdus": [
                {"id": f"cdu{r:02d}", "rated_kw": 1500.0, "nominal_flow_lpm": 2200.0}
                for r in range(rows)
            ],
            "pdus": [{"id": f"pdu{r:02d}", "rated_kw": 1500.0} for r in range(rows)],
            "crahs": [
                {"id": f"crah{c}", "rated_kw": 500.0, "fan_rated_w": 15000.0} for c in range(8)
            ],
        }

    return Site.model_validate(
        {
            "site": {"id": "big", "misc_load_kw": 500.0},
            "templates": {
                "hgx": {
                    "nodes": 8,
                    "gpus_per_node": 8,
                    "gpu_tdp_w": 700.0,
                    "gpu_idle_w": 70.0,
                    "node_overhead_w": 1800.0,
                    "psus": 6,
                    "psu_rated_w": 5500.0,
                    "liquid_fraction": 0.8,
                }
            },
            "ups": {"rated_kw": 120000.0},
            "plant": {"rated_kw": 130000.0},
            "meters": [
                {"id": "utility", "role": "facility_input"},
                {"id": "ups-out", "role": "ups_output"},
                {"id": "chiller-plant", "role": "cooling_plant"},
            ],
            "halls": [hall(h) for h in range(halls)],
        }
    )


def populate_latest(store: Store, twin: Twin, rng: np.random.Generator) -> int:
    ids: list[str] = []
    metrics: list[str] = []
    for cls, names in EMITTED.items():
        devs = twin.layout.blocks[cls].ids
        for m in names:
            ids += devs
            metrics += [m] * len(devs)
    n = len(ids)
    frame = pa.table(  # noqa: F841 - referenced by SQL below
        {
            "device_id": ids,
            "metric": metrics,
            "read_time": pa.array(np.full(n, int(T0.timestamp() * 1e6), np.int64)).cast(
                pa.timestamp("us")
            ),
            "value": rng.uniform(20, 80, n),
            "kind": ["x"] * n,
        }
    )
    store.cursor().execute("INSERT INTO latest SELECT * FROM frame")
    return n


def advance(store: Store, to: datetime) -> None:
    """What ingest does between ticks: every reading replaced in place by a newer one."""
    store.cursor().execute(
        "UPDATE latest SET value = value * (0.999 + 0.002 * random()), read_time = ?", [to]
    )


@contextmanager
def one_core(store: Store):
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    store.con.execute("SET threads = 1")
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        store.con.execute(f"SET threads = {os.cpu_count() or 1}")


def populate_history(twin: Twin, hours: int, tick_hours: int) -> datetime:
    """`hours` of history for every scope as the twin leaves it: minute rows compacted
    hour by hour (sorted by scope), and the last `tick_hours` still as 10 s tick rows.
    Returns the end of the history."""
    cur = twin.rollup_store.cur
    sc = twin.scope_index
    cur.register("bench_scopes", pa.table({"scope_id": sc.ids, "level": sc.levels}))
    compacted = hours - tick_hours
    cur.execute(
        f"""
        INSERT INTO twin_rollups_1m (time, scope_id, level, power_kw_sum, power_kw_n,
            power_kw_min, power_kw_max, power_kw_last, gpu_temp_max_c_sum, gpu_temp_max_c_n,
            gpu_temp_max_c_min, gpu_temp_max_c_max, gpu_temp_max_c_last)
        SELECT ?::TIMESTAMP + to_minutes(m.range), s.scope_id, s.level,
               6 * (40 + random()), 6, 39 + random(), 41 + random(), 40 + random(),
               6 * (70 + random()), 6, 69 + random(), 71 + random(), 70 + random()
        FROM range({compacted * 60}) m CROSS JOIN bench_scopes s
        ORDER BY m.range // 60, s.scope_id, m.range""",
        [T0],
    )
    tick_start = T0 + timedelta(hours=compacted)
    cur.execute(
        f"""
        INSERT INTO twin_rollups (time, scope_id, level, power_kw, gpu_temp_max_c)
        SELECT ?::TIMESTAMP + to_seconds(10 * t.range), s.scope_id, s.level,
               40 + random(), 70 + random()
        FROM range({tick_hours * 360}) t CROSS JOIN bench_scopes s ORDER BY t.range""",
        [tick_start],
    )
    twin.rollup_store.flushed_until = tick_start
    cur.execute("CHECKPOINT")
    return T0 + timedelta(hours=hours)


def time_series(
    twin: Twin, store: Store, rack: str, start: datetime, end: datetime, repeat: int
) -> tuple[float, str, int]:
    with one_core(store):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            source, df = twin.series(rack, "power_kw", start, end, 60.0)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), source, df.height


def run(quick: bool = False) -> list[Result]:
    results: list[Result] = []
    rng = np.random.default_rng(1)
    site = synthetic_site()
    t = time.perf_counter()
    topo = Topology(site)
    topo_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        twin = Twin(site, store, config=TwinConfig(telemetry_interval_s=10, stale_intervals=3))
        twin.auto_maintain = False  # compaction is measured on its own below
        n_gpu = len(twin.layout.gpu_ids)
        rows = populate_latest(store, twin, rng)
        base_ms = int(T0.timestamp() * 1000)
        with one_core(store):
            t = time.perf_counter()
            twin.tick(base_ms)  # maps every row id of `latest` to its slot once
            first_ms = (time.perf_counter() - t) * 1000
            n = 7 if quick else 30
            totals, parts = [], []
            for k in range(1, n + 1):
                advance(store, T0 + timedelta(seconds=10 * k))
                t = time.perf_counter()
                tick = twin.tick(base_ms + 10_000 * k)
                totals.append((time.perf_counter() - t) * 1000)
                parts.append(tick.timings_ms)
        med = statistics.median(totals)
        breakdown = ", ".join(
            f"{p} {statistics.median(x[p] for x in parts):.0f}"
            for p in ("refresh", "rollups", "heat_balance", "pue", "persist")
        )
        results.append(
            Result(
                f"twin tick, {n_gpu:,} GPUs ({rows:,} readings), one core",
                "median ms per tick",
                med,
                "< 200",
                med < 200,
                note=f"max {max(totals):.0f} ms over {n} ticks; median ms: {breakdown}",
            )
        )
        results.append(
            Result(
                "twin first tick (maps row ids to slots)", "ms", first_ms, note="once per process"
            )
        )
        results.append(
            Result(
                f"topology graph build, {len(topo.nodes):,} nodes",
                "ms",
                topo_s * 1000,
                note="once, on first topology query",
            )
        )

        # History: a rack's last 24 h at 1-minute steps. Worst case: the current hour is
        # not compacted yet, so 23 h come from minute rows and 1 h is bucketed from ticks.
        end = populate_history(twin, 24, 1)
        start = end - timedelta(hours=24)
        rack = twin.layout.rack_ids[len(twin.layout.rack_ids) // 2]
        repeat = 5 if quick else 20
        med, source, points = time_series(twin, store, rack, start, end, repeat)
        n_minute = store.cursor().execute("SELECT count(*) FROM twin_rollups_1m").fetchall()[0][0]
        n_tick = store.cursor().execute("SELECT count(*) FROM twin_rollups").fetchall()[0][0]
        with one_core(store):
            t = time.perf_counter()
            twin.rollup_store.maintain(end)  # compacts the last hour(s) of ticks
            compact_ms = (time.perf_counter() - t) * 1000
        med_after, _, _ = time_series(twin, store, rack, start, end, repeat)
        results.append(
            Result(
                "24 h, 1-minute series for one rack, one core",
                "median ms",
                med,
                "< 100",
                med < 100 and points == 1440,
                note=f"{points} points from {source} ({n_minute:,} minute rows, {n_tick:,} tick "
                f"rows, {twin.scope_index.n:,} scopes); {med_after:.1f} ms once compacted",
            )
        )
        results.append(
            Result(
                "hourly rollup compaction (after a tick, not in it)",
                "ms",
                compact_ms,
                note=f"one hour of ticks, {twin.scope_index.n:,} scopes, one core",
            )
        )
        store.close()
    return results


if __name__ == "__main__":
    import sys

    from bench.harness import print_table

    print_table(run(quick="--quick" in sys.argv))
