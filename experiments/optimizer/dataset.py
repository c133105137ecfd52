"""Training data: simulator runs under an exploration policy, kept as history in DuckDB.

Issue 19 (item 2): `explore_to_store` runs the policy and writes the simulator's
*telemetry* into a store's `samples` table (the batch path of `dctwin simulate --out
x.duckdb`: the same rows ingest writes); `twin/optimizer/history.py` builds the training
rows from there. `explore` / `save_history` (simulator internals -> `optimizer_history`)
remain only as a reference for tests; `dctwin optimize train` no longer uses them.

Every `hold_s` the exploration policy commands new setpoints: mostly a random walk of at
most one step of the optimizer's ramp limit per setpoint, sometimes a uniform draw from
the exploration box held three times as long (so the models see both the neighbourhood of
any operating point and the whole space). Rows count as settled SETTLE_S after every
active setpoint has finished ramping to its command. Each simulator step gives one row:
the commanded setpoints, the state (offered GPU utilization, weather) and the outcomes
the models learn (component powers, GPU temperature percentiles, actual CDU / CRAH supply
temperatures). Rows go to the
DuckDB table `optimizer_history`; training reads them back in time order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from domain.site import Site
from experiments.optimizer.plant_control import apply_setpoints
from experiments.simulate import samples_table
from simulator.batch import BatchRun
from simulator.model import SiteSimulator
from twin.optimizer.history import SETTLE_S, history_table
from twin.optimizer.space import (
    DEFAULT_MAX_STEP,
    FEATURES,
    SETPOINTS,
    STATE,
    TARGETS,
)

EXTRA = ("it_kw", "facility_kw", "cooling_kw")

# exploration box, inside the envelopes: wide enough to cover where the optimizer goes
EXPLORE_LO = np.array([8.0, 16.0, 24.0, 5.0, 18.0, 0.0])
EXPLORE_HI = np.array([26.0, 34.0, 42.0, 150.0, 27.0, 1.0])  # inside the simulator envelopes

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS optimizer_history (run_id VARCHAR, time TIMESTAMP, "
    "since_change_s DOUBLE, " + ", ".join(f"{c} DOUBLE" for c in FEATURES + TARGETS + EXTRA) + ")"
)


def observe(sim: SiteSimulator) -> dict[str, float]:
    """State and outcomes of the simulator now, as the twin would see them (facility level)."""
    p = sim.plant
    util = sim.gpu.util
    temp = sim.gpu.temp_c
    cooling = p.plant_kw + p.cdu_pump_kw + p.crah_fan_kw
    return {
        "gpu_util_mean": float(util.mean()),
        "gpu_util_p95": float(np.percentile(util, 95)),
        "outdoor_drybulb_c": p.outdoor_drybulb_c,
        "outdoor_wetbulb_c": p.outdoor_wetbulb_c,
        "chiller_kw": p.chiller_kw,
        "tower_kw": p.tower_kw,
        "plant_pump_kw": p.chw_pump_kw + p.cw_pump_kw,
        "cdu_pump_kw": p.cdu_pump_kw,
        "crah_fan_kw": p.crah_fan_kw,
        "noncooling_kw": p.facility_kw - cooling,
        "gpu_temp_max_c": float(temp.max()),
        "gpu_temp_p99_c": float(np.percentile(temp, 99)),
        "cdu_supply_max_c": float(sim.cdu.supply_c.max()) if len(sim.cdu.supply_c) else 0.0,
        "crah_supply_max_c": float(sim.crah.supply_c.max()) if len(sim.crah.supply_c) else 0.0,
        "it_kw": p.it_kw,
        "facility_kw": p.facility_kw,
        "cooling_kw": cooling,
    }


class ExplorationPolicy:
    """Random walk within the exploration box with occasional uniform jumps."""

    def __init__(self, seed: int, jump_prob: float = 0.2) -> None:
        self.rng = np.random.default_rng([seed, 0xE5])
        self.jump_prob = jump_prob
        self.step = np.array([DEFAULT_MAX_STEP[n] for n in SETPOINTS])

    def next(self, current: np.ndarray) -> tuple[np.ndarray, bool]:
        """(new setpoints, whether it is a jump: held longer, as its ramps take longer)"""
        jump = bool(self.rng.random() < self.jump_prob)
        if jump:
            sp = self.rng.uniform(EXPLORE_LO, EXPLORE_HI)
        else:
            sp = current + self.rng.uniform(-1.0, 1.0, len(current)) * self.step
        sp = np.clip(sp, EXPLORE_LO, EXPLORE_HI)
        sp[-1] = float(self.rng.random() < 0.8)  # economizer mostly allowed
        return sp, jump


def explore(
    site: Site,
    *,
    seed: int,
    start_s: float,
    hours: float,
    climate: str = "temperate",
    step_s: float = 60.0,
    hold_s: float = 900.0,
    run_id: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> pl.DataFrame:
    """Run the simulator under the exploration policy; one row per step (time ordered).
    `progress(hours_done)` is called once per simulated hour."""
    sim = SiteSimulator(
        site, seed=seed, start_time_s=start_s, climate=climate, horizon_s=hours * 3600.0
    )
    policy = ExplorationPolicy(seed)
    current = np.array([sim.controls.get(n) for n in SETPOINTS])
    n_steps = int(round(hours * 3600.0 / step_s))
    per_hold = max(1, int(round(hold_s / step_s)))
    per_hour = max(1, int(round(3600.0 / step_s)))
    cols: dict[str, list[float]] = {c: [] for c in (*FEATURES, *TARGETS, *EXTRA)}
    times, since = [], []
    since_change, next_change = 0.0, per_hold
    for i in range(n_steps):
        if i == next_change:
            current, jump = policy.next(current)
            apply_setpoints(sim.controls, current)
            since_change = 0.0
            next_change = i + per_hold * (3 if jump else 1)
        sim.step(step_s)
        # settling is counted from when every active setpoint has reached its command
        ramping = any(
            not np.allclose(sim.controls.active[n], sim.controls.commanded[n]) for n in SETPOINTS
        )
        since_change = 0.0 if ramping else since_change + step_s
        obs = observe(sim)
        for k, v in zip(SETPOINTS, current, strict=True):
            cols[k].append(float(v))
        for k in (*STATE, *TARGETS, *EXTRA):
            cols[k].append(obs[k])
        times.append(datetime.fromtimestamp(sim.time_s, UTC).replace(tzinfo=None))
        since.append(since_change)
        if progress and (i + 1) % per_hour == 0:
            progress((i + 1) / per_hour)
    rid = run_id or f"explore-{seed}-{int(start_s)}"
    return pl.DataFrame(
        {"run_id": [rid] * len(times), "time": times, "since_change_s": since, **cols}
    )


def save_history(con: duckdb.DuckDBPyConnection, df: pl.DataFrame) -> int:
    """Append rows to optimizer_history (replacing an earlier run with the same run_id)."""
    con.execute(SCHEMA)
    ids = df["run_id"].unique().to_list()
    con.execute("DELETE FROM optimizer_history WHERE run_id IN (SELECT unnest(?))", [ids])
    arrow = df.to_arrow()  # noqa: F841 - scanned by name below
    con.execute("INSERT INTO optimizer_history BY NAME SELECT * FROM arrow")
    return df.height


def load_history(con: duckdb.DuckDBPyConnection, settled_only: bool = True) -> pl.DataFrame:
    """Training rows in time order (per run, runs ordered by their first time)."""
    where = f"WHERE since_change_s >= {SETTLE_S}" if settled_only else ""
    return con.sql(f"SELECT * FROM optimizer_history {where} ORDER BY time, run_id").pl()


def explore_to_store(
    con: duckdb.DuckDBPyConnection,
    site: Site,
    *,
    seed: int,
    start_s: float,
    hours: float,
    climate: str = "temperate",
    step_s: float = 60.0,
    hold_s: float = 900.0,
    progress: Callable[[float], None] | None = None,
    all_metrics: bool = False,
) -> int:
    """Run the simulator under the exploration policy and store its telemetry in the
    `samples` table of `con` (a Store's connection); returns the samples stored. Only the
    (kind, metric) pairs the optimizer's history table reads are kept unless `all_metrics`
    (a full site's telemetry at 60 s is ~37 M samples a week; the optimizer reads ~15 %)."""
    sim = SiteSimulator(
        site, seed=seed, start_time_s=start_s, climate=climate, horizon_s=hours * 3600.0
    )
    policy = ExplorationPolicy(seed)
    per_hold = max(1, int(round(hold_s / step_s)))
    per_hour = max(1, int(round(3600.0 / step_s)))
    current = [np.array([sim.controls.get(n) for n in SETPOINTS])]
    next_change = [per_hold]

    def command(i: int, s: SiteSimulator) -> None:
        if i == next_change[0]:
            current[0], jump = policy.next(current[0])
            apply_setpoints(s.controls, current[0])
            next_change[0] = i + per_hold * (3 if jump else 1)
        if progress and i % per_hour == 0:
            progress(i / per_hour)

    run = BatchRun(sim, hours, step_s, chunk_rows=2_000_000, before_step=command)
    plan = run.plan
    dicts = {
        "device": pa.array(plan.device_dict, pa.string()),
        "metric": pa.array(plan.metric_dict, pa.string()),
        "kind": pa.array(plan.kind_dict, pa.string()),
        "rack": pa.array(plan.rack_dict, pa.string()),
    }
    pairs = sorted({f"{src.kind.value}|{src.metric}" for src in history_table(site).values()})
    where = (
        ""
        if all_metrics
        else "WHERE kind::VARCHAR || '|' || metric::VARCHAR IN (SELECT unnest($pairs))"
    )
    stored = 0
    for chunk in run.chunks():
        chunk_table = samples_table(chunk, plan, dicts)  # noqa: F841 - scanned by name below
        n = con.execute(
            "INSERT INTO samples SELECT read_time, device_id::VARCHAR, metric::VARCHAR, "
            f"value, kind::VARCHAR, rack::VARCHAR FROM chunk_table {where}",
            {} if all_metrics else {"pairs": pairs},
        ).fetchone()
        stored += int(n[0]) if n else 0
    return stored
