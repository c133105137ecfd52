"""The optimizer's inputs from telemetry: the current setpoints and state, read from the
store's latest readings (issue 19).

`FEATURE_METRICS` is the one table that says which telemetry each optimizer feature
(`space.SETPOINTS` + `space.STATE`) comes from: the contract kind and metric, how the
devices' values are combined (site-wide mean, or the 95th percentile over GPUs) and a
scale (GPU utilization % -> the 0..1 fraction the models use). Training rows built from
stored history use the same table (`AGG_SQL` per aggregation), so a live state and a
training row mean the same thing. Setpoints are the active (ramped) values the plant
publishes (docs/wire-contract.md).

`GUARD_METRICS` are the readings the closed loop watches after a change: the hottest GPU,
the warmest CDU secondary supply and the lowest CDU loop differential pressure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from domain.contract import Kind
from domain.plant import CONTROL_METRICS
from twin.optimizer.space import FEATURES, SETPOINTS, STATE

# device class of a control (domain/plant.py CONTROL_METRICS) -> its telemetry kind
CLASS_KIND: dict[str, Kind] = {"plant": Kind.facility, "cdu": Kind.cooling, "crah": Kind.air}


@dataclass(frozen=True)
class FeatureSource:
    kind: Kind
    metric: str
    agg: str  # a key of AGG_SQL, over the devices reporting the metric
    scale: float = 1.0
    # issue 19 opt-ml: one device only (history queries, twin/optimizer/history.py; the
    # latest-readings `observe` below is for tables without it)
    device: str | None = None


# how devices' values combine into one site-wide feature (DuckDB aggregate over `value`)
AGG_SQL: dict[str, str] = {
    "mean": "avg(value)",
    "max": "max(value)",
    "min": "min(value)",
    "p95": "quantile_cont(value, 0.95)",
    # issue 19 opt-ml: totals over units and the hottest-percentile GPU (training targets)
    "sum": "sum(value)",
    "p99": "quantile_cont(value, 0.99)",
}

FEATURE_METRICS: dict[str, FeatureSource] = {
    **{
        control: FeatureSource(CLASS_KIND[device_class], metric, "mean")
        for control, (device_class, metric) in CONTROL_METRICS.items()
    },
    "gpu_util_mean": FeatureSource(Kind.gpu, "util_gpu_pct", "mean", 0.01),
    "gpu_util_p95": FeatureSource(Kind.gpu, "util_gpu_pct", "p95", 0.01),
    "outdoor_drybulb_c": FeatureSource(Kind.facility, "outdoor_drybulb_c", "mean"),
    "outdoor_wetbulb_c": FeatureSource(Kind.facility, "outdoor_wetbulb_c", "mean"),
}
assert set(FEATURE_METRICS) == set(FEATURES), "every optimizer feature has one telemetry source"


# --- issue 19 opt-ml: the outcomes the models learn, from the same telemetry -------------
# Plant powers from the chiller plant's own meters; CDU pump and CRAH fan power summed over
# the units (W -> kW); the site's facility input meter (its device id comes from the site
# file, `history.target_metrics`); GPU and supply temperatures as the hottest reading.
# noncooling_kw = facility_kw - the five cooling terms (history.training_rows).
TARGET_METRICS: dict[str, FeatureSource] = {
    "chiller_kw": FeatureSource(Kind.facility, "chiller_power_kw", "sum"),
    "tower_kw": FeatureSource(Kind.facility, "tower_power_kw", "sum"),
    "plant_pump_kw": FeatureSource(Kind.facility, "pump_power_kw", "sum"),
    "cdu_pump_kw": FeatureSource(Kind.cooling, "pump_power_w", "sum", 0.001),
    "crah_fan_kw": FeatureSource(Kind.air, "fan_power_w", "sum", 0.001),
    "gpu_temp_max_c": FeatureSource(Kind.gpu, "gpu_temp_c", "max"),
    "gpu_temp_p99_c": FeatureSource(Kind.gpu, "gpu_temp_c", "p99"),
    "cdu_supply_max_c": FeatureSource(Kind.cooling, "supply_temp_c", "max"),
    "crah_supply_max_c": FeatureSource(Kind.air, "supply_air_temp_c", "max"),
}
# --- end issue 19 opt-ml -----------------------------------------------------------------

GUARD_METRICS: dict[str, FeatureSource] = {
    "gpu_temp_max_c": FeatureSource(Kind.gpu, "gpu_temp_c", "max"),
    "cdu_supply_max_c": FeatureSource(Kind.cooling, "supply_temp_c", "max"),
    "cdu_dp_min_kpa": FeatureSource(Kind.cooling, "diff_pressure_kpa", "min"),
}


@dataclass
class Observation:
    """Site-wide values of `names` from the readings newer than `since`."""

    values: dict[str, float]
    missing: list[str]  # no fresh reading
    since: datetime
    newest: datetime | None = None
    devices: dict[str, int] = field(default_factory=dict)  # readings per name

    @property
    def setpoints(self) -> dict[str, float]:
        return {k: self.values[k] for k in SETPOINTS if k in self.values}

    @property
    def state(self) -> dict[str, float]:
        return {k: self.values[k] for k in STATE if k in self.values}

    @property
    def complete(self) -> bool:
        return not self.missing


def _naive_utc(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def observe(
    con: duckdb.DuckDBPyConnection,
    table: dict[str, FeatureSource],
    since: datetime,
) -> Observation:
    """One aggregate per (kind, metric) over the `latest` table, in one query."""
    pairs = sorted({(s.kind.value, s.metric) for s in table.values()})
    aggs = sorted({s.agg for s in table.values()})
    cols = ", ".join(f"{AGG_SQL[a]} AS {a}" for a in aggs)
    rows = con.execute(
        f"SELECT kind, metric, {cols}, count(*) AS n, max(read_time) AS newest FROM latest "
        "WHERE read_time >= ? AND list_contains(?, kind || '|' || metric) GROUP BY kind, metric",
        [_naive_utc(since), [f"{k}|{m}" for k, m in pairs]],
    ).fetchall()
    by_pair = {(r[0], r[1]): dict(zip([*aggs, "n", "newest"], r[2:], strict=True)) for r in rows}
    values, missing, counts = {}, [], {}
    newest: datetime | None = None
    for name, src in table.items():
        got = by_pair.get((src.kind.value, src.metric))
        if got is None or got[src.agg] is None:
            missing.append(name)
            continue
        values[name] = float(got[src.agg]) * src.scale
        counts[name] = int(got["n"])
        newest = got["newest"] if newest is None else max(newest, got["newest"])
    return Observation(values, missing, _naive_utc(since), newest, counts)


def current_state(
    con: duckdb.DuckDBPyConnection, now: datetime | None = None, max_age_s: float = 120.0
) -> Observation:
    """The optimizer's setpoints and state (FEATURES) from readings at most `max_age_s`
    old: `values` holds every feature with a fresh reading, `missing` the others."""
    now = _naive_utc(now or datetime.now(UTC))
    return observe(con, FEATURE_METRICS, now - timedelta(seconds=max_age_s))


def guard_readings(con: duckdb.DuckDBPyConnection, since: datetime) -> Observation:
    """The guarded limits' readings (GUARD_METRICS) newer than `since`."""
    return observe(con, GUARD_METRICS, since)
