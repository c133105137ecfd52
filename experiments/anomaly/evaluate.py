"""`dctwin anomaly evaluate`: the detector against simulator faults on held-out seeds.

One scenario per seed: a 256-GPU site (4 rows, 4 CDUs, 2 CRAHs) simulated for
``hours`` with one fault of every catalog type, each on its own device, onsets after
the training window, gradual faults running to failure inside the run. The samples go
into a DuckDB store and the live scorer (twin/anomaly/service.py) works through them as
it would in production: it trains on the first ``train_h`` hours, then scores each
interval as it closes and refits every 6 h (earlier for a class that alarms as a whole).
Nothing from the fault labels reaches the scorer.

Seeds: development and tuning used DEV_SEEDS only; the acceptance figures come from
EVAL_SEEDS, which the code refuses to run in development mode (and vice versa).
Matching and metrics are in matching.py.
"""

from __future__ import annotations

import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl

from domain.site import Site
from experiments.simulate import run_simulation
from ingest.store import Store
from simulator.faults import CATALOG, SENSOR_METRICS
from simulator.model import SiteSimulator
from simulator.sitegen import site_toml
from twin.anomaly.incidents import IncidentConfig, Relations
from twin.anomaly.service import AnomalyService, AnomalyServiceConfig

DEV_SEEDS = range(1, 1000)  # used while building and tuning the detector
EVAL_SEEDS = range(1000, 4000)  # held out: the acceptance figures
# issue 20: the newest held-out set, declared in docs/anomaly.md before it was run. Every
# set so far (1000-1004 / 1500, 2000-2004 / 2500, 3000-3004 / 3500, 3100-3104 / 3600,
# 3200-3204 / 3700: the per-device driver ranges) was run once and is spent: declare a
# new one (docs/anomaly.md, here) before the next change
DEFAULT_EVAL_SEEDS = (3200, 3201, 3202, 3203, 3204)
# issue 20: fault-free runs for false incidents per healthy day, fixed before evaluating
DEFAULT_HEALTHY_SEEDS = (3700,)
DEFAULT_DEV_HEALTHY_SEEDS = (21,)
START = datetime(2025, 7, 7, tzinfo=UTC)  # a Monday in summer: chillers run


class SeedError(ValueError):
    pass


def check_seeds(seeds: list[int], dev: bool) -> None:
    """Development may never touch evaluation seeds, and the evaluation only uses them."""
    allowed, name = (DEV_SEEDS, "development") if dev else (EVAL_SEEDS, "evaluation")
    bad = [s for s in seeds if s not in allowed]
    if bad:
        raise SeedError(
            f"seeds {bad} are not {name} seeds ({allowed.start}-{allowed.stop - 1})"
            + (
                "; held-out seeds are only run without --dev"
                if dev
                else "; use --dev for development seeds"
            )
        )


def eval_site() -> Site:
    return Site.model_validate(tomllib.loads(site_toml(256, site_id="ev", racks_per_row=2)))


@dataclass
class Scenario:
    seed: int
    site: Site
    spec: str
    hours: float
    step_s: float
    train_h: float


def make_scenario(
    seed: int,
    hours: float = 12.0,
    step_s: float = 30.0,
    train_h: float = 2.0,
    healthy: bool = False,
) -> Scenario:
    """One fault of each type on distinct devices, placed with the seed (``healthy``: none,
    for false incidents per healthy day)."""
    site = eval_site()
    if healthy:
        return Scenario(seed, site, "", hours, step_s, train_h)
    rng = np.random.default_rng([seed, 0xE7A1])
    devices = site.devices()
    by_class: dict[str, list[str]] = {}
    for d in devices:
        by_class.setdefault(d.device_class, []).append(d.id)
    nodes = sorted({g.rsplit("/", 1)[0] for g in by_class["gpu"]})
    used_racks: set[str] = set()
    used: set[str] = set()

    def pick(ids: list[str], spread: bool = False) -> str:
        free = [i for i in ids if i not in used and not (spread and _rack(i) in used_racks)]
        choice = free[int(rng.integers(len(free)))]
        used.add(choice)
        used_racks.add(_rack(choice))
        return choice

    h = 3600.0
    lo, hi = (train_h + 0.5) * h, 0.6 * hours * h

    def onset() -> str:
        return f"onset={rng.uniform(lo, hi):.0f}"

    def span(a: float, b: float) -> float:
        return rng.uniform(a, b) * hours * h

    items = []
    cdus = list(by_class["cdu"])
    # device faults first, then sensor faults on devices still untouched; the UPS faults
    # (`random=False`: a site has one UPS) after them, below
    types = [t for t in CATALOG if CATALOG[t].random]
    for ftype in sorted(types, key=lambda t: CATALOG[t].device_class == "sensor"):
        kind = CATALOG[ftype]
        if ftype in ("pump_degradation", "hx_fouling", "coolant_leak"):
            target = pick(cdus)
        elif kind.device_class == "gpu":
            target = pick(by_class["gpu"], spread=True)
        elif kind.device_class == "node":
            target = pick(nodes, spread=True)
        elif kind.device_class == "psu":
            target = pick(by_class["psu"], spread=True)
        elif kind.device_class == "crah":
            target = pick(by_class["crah"])
        elif kind.device_class == "plant":
            target = by_class["chiller_plant"][0]
        else:  # sensor faults: a measured metric of a device no other fault touches
            free = sorted(c for c in SENSOR_METRICS if set(by_class.get(c, [])) - used)
            cls = str(rng.choice(free))
            metric = str(rng.choice(SENSOR_METRICS[cls]))
            target = f"{pick(by_class[cls], spread=cls in ('gpu', 'psu'))}#{metric}"
        params = [onset()]
        if "fail_after" in kind.defaults:
            params.append(f"fail_after={span(0.2, 0.33):.0f}")
        if "duration" in kind.defaults:
            params.append(f"duration={span(0.3, 0.45):.0f}")
        if ftype == "coolant_leak":
            params.append(f"rate={70.0 / (span(0.2, 0.33) / h):.3f}")
        items.append(f"{ftype}@{target}:{','.join(params)}")
    # issue 20 part anom2: the UPS faults (`random=False`) all act on the site's one UPS,
    # so one of them, drawn with the seed, is placed per scenario (drawn last: the other
    # placements stay what they were). Before, they stopped scenario building.
    ups_types = sorted(t for t in CATALOG if CATALOG[t].device_class == "ups")
    if ups_types and by_class.get("ups"):
        ftype = str(rng.choice(ups_types))
        params = [onset()]
        if "duration" in CATALOG[ftype].defaults and ftype != "utility_dip":
            params.append(f"duration={span(0.2, 0.33):.0f}")
        items.append(f"{ftype}@{by_class['ups'][0]}:{','.join(params)}")
    return Scenario(seed, site, ";\n".join(items), hours, step_s, train_h)


def _rack(device_id: str) -> str:
    parts = device_id.split("/")
    return "/".join(parts[:4]) if len(parts) > 4 else device_id


@dataclass
class ScenarioRun:
    scenario: Scenario
    scores: pl.DataFrame  # device_id, bucket, score, top_metric, top_component
    labels: pl.DataFrame
    devices: pl.DataFrame
    interval_s: float
    first_scored_bucket: int
    last_bucket: int
    wall_s: float
    samples: int
    incidents: pl.DataFrame  # IncidentTracker.frame(): what the live service opened
    relations: Relations


def run_scenario(
    sc: Scenario,
    workdir: Path | None = None,
    refresh_every_s: float = 3600.0,
    multivariate: bool = True,
    incidents: IncidentConfig | None = None,
) -> ScenarioRun:
    """Simulate the scenario into DuckDB and run the live scorer through it."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"scenario-{sc.seed}.duckdb"
        sim = SiteSimulator(
            sc.site,
            seed=sc.seed,
            start_time_s=START.timestamp(),
            faults=sc.spec or None,
            horizon_s=sc.hours * 3600.0,
        )
        summary = run_simulation(
            sim,
            sc.hours,
            path,
            step_s=sc.step_s,
            fmt="duckdb",
            faults=sc.spec or None,
            progress=False,
        )
        store = Store(path)
        try:
            labels = (
                store.cursor()
                .sql(
                    "SELECT fault_id, fault, device_id, device_class, metric, onset, failure_time,"
                    " signature FROM labels"
                )
                .pl()
            )
            parts: list[pl.DataFrame] = []
            config = AnomalyServiceConfig(
                interval_s=sc.step_s,
                train_s=sc.train_h * 3600.0,
                lag_s=0.0,
                incidents=incidents or IncidentConfig(),
                # the evaluated model fits on its whole window (issue 24's memory cap is the
                # server's; its effect is bounded in tests/test_anomaly_memory.py)
                fit_max_samples=0,
            )
            live = AnomalyService(sc.site, store, config, sink=parts.append)
            live.scorer.use_multivariate = multivariate
            end = START + timedelta(hours=sc.hours)
            now = START + timedelta(hours=sc.train_h)
            while now < end + timedelta(seconds=refresh_every_s):
                live.refresh(min(now, end))
                now += timedelta(seconds=refresh_every_s)
            found = live.incidents.frame()
        finally:
            store.close()
    scores = pl.concat(parts) if parts else pl.DataFrame()
    interval = sc.step_s
    first = int(cast(int, scores["bucket"].min())) if scores.height else 0
    return ScenarioRun(
        sc,
        scores.select("device_id", "bucket", "score", "p", "top_metric", "top_component")
        if scores.height
        else scores,
        labels,
        live.devices,
        interval,
        first,
        int((end.timestamp()) // interval) - 1,
        time.perf_counter() - t0,
        summary.samples,
        found,
        live.incidents.rel,
    )


# -- the whole evaluation ------------------------------------------------------------------

# issue 20: the acceptance targets, on incidents (strict precision is the headline)
ACCEPTANCE = {
    "recall": 0.9,
    "precision_strict": 0.8,
    "median_incidents_per_fault": 1.5,
    "false_incidents_per_healthy_day": 1.0,
    "abrupt_median_delay_intervals": 2.0,
}


@dataclass
class Evaluation:
    seeds: list[int]
    healthy_seeds: list[int]
    faults: pl.DataFrame  # one row per fault (matching.match_incidents), with the seed
    incidents: pl.DataFrame  # one row per incident with its verdict, with the seed
    summary: dict
    by_type: pl.DataFrame
    config: dict

    def acceptance(self) -> dict[str, bool]:
        s, a = self.summary, ACCEPTANCE

        def le(v: float | None, t: float) -> bool:
            return v is not None and v == v and v <= t

        return {
            f"recall >= {a['recall']}": s["recall"] >= a["recall"],
            f"strict precision >= {a['precision_strict']}": s["precision_strict"]
            >= a["precision_strict"],
            f"median incidents per fault <= {a['median_incidents_per_fault']}": le(
                s["median_incidents_per_fault"], a["median_incidents_per_fault"]
            ),
            f"false incidents per healthy day <= {a['false_incidents_per_healthy_day']:g}": le(
                s["false_incidents_per_healthy_day"], a["false_incidents_per_healthy_day"]
            ),
            f"abrupt median delay <= {a['abrupt_median_delay_intervals']:g} intervals": le(
                s["abrupt_median_delay_intervals"], a["abrupt_median_delay_intervals"]
            ),
        }


def evaluate(
    seeds: list[int],
    dev: bool = False,
    hours: float = 12.0,
    step_s: float = 30.0,
    threshold: float | None = None,
    multivariate: bool = True,
    workdir: Path | None = None,
    progress=None,
    healthy_seeds: list[int] | None = None,
    healthy_hours: float = 24.0,
    incidents: IncidentConfig | None = None,
) -> Evaluation:
    """Run every seed's scenario and the fault-free runs; score incidents against labels."""
    from experiments.anomaly.matching import (
        MatchConfig,
        alarm_events,
        match_incidents,
        per_type_incidents,
        summarize_incidents,
    )

    inc_cfg = incidents or IncidentConfig()
    if threshold is not None:
        inc_cfg = replace(inc_cfg, alarm_score=threshold)
    healthy = list(
        healthy_seeds
        if healthy_seeds is not None
        else (DEFAULT_DEV_HEALTHY_SEEDS if dev else DEFAULT_HEALTHY_SEEDS)
    )
    check_seeds(seeds + healthy, dev)
    cfg = MatchConfig(threshold=inc_cfg.alarm_score)
    faults, incs = [], []
    n_alarm_events = 0
    for seed in seeds:
        run = run_scenario(
            make_scenario(seed, hours, step_s),
            workdir,
            multivariate=multivariate,
            incidents=inc_cfg,
        )
        f, i = match_incidents(
            run.incidents,
            run.labels,
            run.devices,
            run.relations,
            run.interval_s,
            run.last_bucket,
            cfg,
        )
        n_alarm_events += alarm_events(run.scores, cfg).height if run.scores.height else 0
        faults.append(f.with_columns(seed=pl.lit(seed)))
        incs.append(i.with_columns(seed=pl.lit(seed)))
        if progress is not None:
            progress(seed, run, f, i)
    healthy_incidents, healthy_days = 0, 0.0
    for seed in healthy:
        run = run_scenario(
            make_scenario(seed, healthy_hours, step_s, healthy=True),
            workdir,
            multivariate=multivariate,
            incidents=inc_cfg,
        )
        healthy_incidents += run.incidents.height
        healthy_days += (run.last_bucket - run.first_scored_bucket + 1) * run.interval_s / 86400
        if progress is not None:
            progress(seed, run, None, run.incidents)
    fa, inc = pl.concat(faults), pl.concat(incs)
    summary = summarize_incidents(fa, inc, healthy_incidents, healthy_days)
    summary["alarm_events"] = n_alarm_events
    return Evaluation(
        seeds,
        healthy,
        fa,
        inc,
        summary,
        per_type_incidents(fa),
        {
            "hours": hours,
            "healthy_hours": healthy_hours,
            "step_s": step_s,
            "train_h": 2.0,
            "multivariate": multivariate,
            "incidents": asdict(inc_cfg),
            "site": "simulator.sitegen 256 GPUs, 4 rows x 2 racks",
            "start": START.isoformat(),
        },
    )
