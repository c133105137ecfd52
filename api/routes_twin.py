"""Twin endpoints: topology, (p)PUE, heat balance, rollups and history series.

Times in and out are RFC 3339 UTC; a time without an offset is rejected (422, see
docs/api.md). Errors are problem details naming the bad parameter. Response models with
examples live in api/twin_schemas.py.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import polars as pl
from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import TwinDep
from api.shape import UtcDatetime
from api.twin_schemas import (
    PUE_EXAMPLE,
    HeatBalanceOut,
    PueScopeOut,
    RollupsOut,
    SeriesOut,
    TopologyNodeOut,
    TopologyOut,
    TwinStatusOut,
)
from twin.pue import PueFigure, Quality
from twin.rollup_history import to_ts
from twin.rollups import COLUMNS, LEVELS, UNITS
from twin.state import Twin, now_ms
from twin.topology import CHAINS, DEPTH_ORDER

MAX_BUCKETS = 10_000
# Energy figures integrate at `energy_resolution_s` cells: an unbounded range (start in
# year 1) would allocate hundreds of millions of cells (found by the API fuzz test).
MAX_RANGE = timedelta(days=400)
_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _fin(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def parse_step(step: str | None) -> float | None:
    if step is None or step == "":
        return None
    m = _STEP.match(step)
    if not m or float(m.group(1)) <= 0:
        raise HTTPException(
            400, f"step: {step!r} is not a positive duration (e.g. 60, 60s, 5m, 1h, 1d)"
        )
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_range(
    start: datetime | None,
    end: datetime | None,
    step_s: float | None,
    default_span: timedelta | None = None,
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(tzinfo=None)
    e = _naive(end) if end else now
    if start is None:
        if default_span is None:
            raise HTTPException(422, "start: required")
        s = e - default_span
    else:
        s = _naive(start)
    if e <= s:
        raise HTTPException(
            422, f"end: must be after start (start={s.isoformat()}Z, end={e.isoformat()}Z)"
        )
    if e - s > MAX_RANGE:
        raise HTTPException(
            400,
            f"start: the range {s.isoformat()}Z .. {e.isoformat()}Z is "
            f"longer than {MAX_RANGE.days} days; query it in parts",
        )
    if step_s is not None and (e - s).total_seconds() / step_s > MAX_BUCKETS:
        raise HTTPException(
            400,
            f"step: {step_s:g} s gives more than {MAX_BUCKETS} buckets "
            "over this range; use a larger step",
        )
    return s, e


# -- models --------------------------------------------------------------------------------


class ReadingOut(BaseModel):
    device_id: str
    metric: str
    value: float
    read_time: datetime = Field(description="when the device was read (RFC 3339, UTC)")
    age_s: float
    stale: bool = False


class QualityOut(BaseModel):
    status: str = Field(description="ok, flagged (stale or partial inputs) or unknown")
    coverage: float | None = Field(
        None, description="share of the interval where every input is known (energy figures)"
    )
    missing_meters: list[str]
    stale_inputs: list[str]
    counter_resets: int
    counter_wraps: int
    gaps: int
    methods: dict[str, str]
    input_coverage: dict[str, float]

    @classmethod
    def of(cls, q: Quality) -> QualityOut:
        return cls(
            status=q.status,
            coverage=q.coverage,
            missing_meters=q.missing_meters,
            stale_inputs=q.stale_inputs,
            counter_resets=q.counter_resets,
            counter_wraps=q.counter_wraps,
            gaps=q.gaps,
            methods=q.methods,
            input_coverage=q.input_coverage,
        )


class PuePointOut(BaseModel):
    start: datetime
    end: datetime
    value: float | None
    dcie: float | None
    total: float | None
    it: float | None
    reason: str | None
    quality: QualityOut


class PueOut(BaseModel):
    value: float | None = Field(
        description="facility / IT (PUE) or (IT + subsystem) / IT (pPUE); null when unknown"
    )
    dcie: float | None = Field(description="1 / value")
    category: str | None = Field(description="ISO/IEC 30134-2 category: PUE1, PUE2 or PUE3")
    time: datetime | None
    inputs: list[ReadingOut]
    stale_inputs: list[str]
    reason: str | None = Field(None, description="why the value is unknown")
    scope: str
    figure: str = Field(description="PUE or pPUE")
    method: str = Field(description="instantaneous (power) or energy (over start..end)")
    unit: str = Field(description="unit of total and it: kW or kWh")
    total: float | None = Field(description="numerator: facility (PUE) or IT + subsystem")
    it: float | None = Field(description="denominator: IT power or energy")
    start: datetime | None = None
    end: datetime | None = None
    step_s: float | None = None
    quality: QualityOut
    series: list[PuePointOut] | None = None


def _reading(r, now: datetime, stale_after_s: float) -> ReadingOut:
    age = (now - r.read_time).total_seconds()
    return ReadingOut(
        device_id=r.device_id,
        metric=r.metric,
        value=r.value,
        read_time=_utc(r.read_time),
        age_s=round(age, 3),
        stale=age > stale_after_s,
    )


def _pue_out(fig: PueFigure, now: datetime, stale_after_s: float) -> PueOut:
    return PueOut(
        value=fig.value,
        dcie=fig.dcie,
        category=fig.category,
        time=_utc(fig.time),
        inputs=[_reading(r, now, stale_after_s) for r in fig.inputs],
        stale_inputs=fig.stale_inputs,
        reason=fig.reason,
        scope=fig.scope,
        figure=fig.figure,
        method=fig.method,
        unit="kWh" if fig.method == "energy" else "kW",
        total=fig.total,
        it=fig.it,
        start=_utc(fig.start),
        end=_utc(fig.end),
        quality=QualityOut.of(fig.quality),
    )


# -- router --------------------------------------------------------------------------------


router = APIRouter(tags=["twin"])


def _need_scope(twin: Twin, scope: str) -> None:
    if scope not in twin.scopes:
        raise HTTPException(400, f"scope: unknown {scope!r} (known: {sorted(twin.scopes)})")


@router.get(
    "/v1/pue",
    response_model=PueOut,
    summary="Site PUE or a scope's pPUE, now or energy-based over an interval",
    responses={200: {"content": {"application/json": {"example": PUE_EXAMPLE}}}},
)
async def pue(
    twin: TwinDep,
    background: BackgroundTasks,
    start: UtcDatetime | None = Query(None, description="energy-based from here"),
    end: UtcDatetime | None = Query(None, description="default now"),
    step: str | None = Query(None, description="per-step series, e.g. 3600, 15m, 1h"),
    scope: str = Query("site", description="site, hall:<id>, cooling:<subsystem>"),
) -> PueOut:
    _need_scope(twin, scope)
    step_s = parse_step(step)
    now = datetime.now(UTC).replace(tzinfo=None)
    if start is None and end is None and step_s is None:
        # Answered on the event loop from the last tick (no thread hand-off: issue 24's
        # p99). A due tick is made after the response, in a worker thread, while this
        # and the next requests serve the last one (stale-while-revalidate, up to twice
        # the tick interval); only a tick older than that is waited for.
        tick, due = twin.tick_without_waiting()
        if tick is None:
            tick = await run_in_threadpool(twin.current)
        elif due:
            background.add_task(twin.current)
        return _pue_out(tick.pue[scope], now, twin.stale_after_s)
    s, e = parse_range(start, end, step_s)
    res = await run_in_threadpool(twin.pue_interval, scope, s, e, step_s, now)
    out = _pue_out(res.overall, now, twin.stale_after_s)
    out.step_s = step_s
    if step_s:
        out.series = [
            PuePointOut(
                start=_utc(f.start),
                end=_utc(f.end),
                value=f.value,
                dcie=f.dcie,
                total=f.total,
                it=f.it,
                reason=f.reason,
                quality=QualityOut.of(f.quality),
            )
            for f in res.series
        ]
    return out


@router.get("/v1/pue/scopes", response_model=list[PueScopeOut])
def pue_scopes(twin: TwinDep) -> list[dict]:
    return [
        {
            "scope": s.name,
            "figure": s.figure,
            "category": s.category,
            "it": s.it and s.it.id,
            "terms": [t.id if t.source == "meter" else f"{t.id}:{t.column}" for t in s.extra],
            "reason": s.reason,
        }
        for s in twin.scopes.values()
    ]


@router.get("/v1/heat-balance", response_model=HeatBalanceOut)
def heat_balance(
    twin: TwinDep,
    id: str | None = Query(None, description="a CDU, hall or site id"),
    level: str | None = Query(None, description="cdu, hall or site"),
    start: UtcDatetime | None = None,
    end: UtcDatetime | None = None,
    step: str | None = Query(None, description="trend series step"),
) -> dict:
    tick = twin.current()
    hb = tick.heat_balance
    if level is not None and level not in ("cdu", "hall", "site"):
        raise HTTPException(400, f"level: unknown {level!r} (cdu, hall or site)")
    if id is not None and id not in hb.ids:
        raise HTTPException(404, f"id: {id!r} is not a CDU, hall or site of this site")
    step_s = parse_step(step)
    rng = parse_range(start, end, step_s) if start or step_s else None
    entries = []
    for i, sid in enumerate(hb.ids):
        if (id and sid != id) or (level and hb.levels[i] != level):
            continue
        e: dict[str, Any] = {
            "id": sid,
            "level": hb.levels[i],
            "liquid_kw": _fin(hb.liquid_kw[i]),
            "air_kw": _fin(hb.air_kw[i]),
            "it_kw": _fin(hb.it_kw[i]),
            "residual_kw": _fin(hb.residual_kw[i]),
            "residual_pct": _fin(hb.residual_pct[i]),
            "trend_pct_per_h": _fin(hb.trend_pct_per_h[i]),
            "over_threshold": bool(hb.over_threshold[i]),
            "ticks_above_threshold": int(hb.exceeded_ticks[i]),
            "stale_inputs": int(hb.stale_inputs[i]),
            "reason": hb.reasons[i],
            "status": "unknown"
            if hb.reasons[i]
            else (
                "out_of_balance"
                if hb.over_threshold[i]
                else "flagged"
                if hb.stale_inputs[i]
                else "ok"
            ),
        }
        if rng is not None:
            _, df = twin.series(sid, "hb_residual_pct", rng[0], rng[1], step_s or 60.0)
            e["history"] = [
                {"time": _utc(b), "residual_pct": _fin(m)}
                for b, m in zip(df["bucket"].to_list(), df["mean"].to_list(), strict=True)
            ]
        entries.append(e)
    return {
        "time": _utc(tick.time),
        "threshold_pct": twin.config.heat_balance_threshold_pct,
        "persist_ticks": twin.config.heat_balance_persist_ticks,
        "scopes": entries,
    }


@router.get("/v1/rollups", response_model=RollupsOut)
def rollups(
    twin: TwinDep,
    level: str = Query("rack", description=f"one of {LEVELS}"),
    id: str | None = Query(None, description="one scope id"),
) -> dict:
    if level not in LEVELS:
        raise HTTPException(400, f"level: unknown {level!r} (known: {list(LEVELS)})")
    tick = twin.current()
    sl = twin.scope_index.slices[level]
    ids = twin.scope_index.ids[sl]
    if id is not None and id not in ids:
        raise HTTPException(404, f"id: {id!r} is not a {level} of this site")
    rows = []
    for k, sid in enumerate(ids):
        if id and sid != id:
            continue
        i = sl.start + k
        rows.append({"id": sid, **{c: _fin(tick.rollups[c][i]) for c in COLUMNS}})
    return {"time": _utc(tick.time), "level": level, "units": UNITS, "rollups": rows}


@router.get("/v1/series", response_model=SeriesOut)
def series(
    twin: TwinDep,
    id: str,
    metric: str,
    start: UtcDatetime | None = None,
    end: UtcDatetime | None = None,
    step: str = Query("60", description="bucket"),
) -> dict | Response:
    metrics = twin.series_metrics(id)
    if metrics is None:
        raise HTTPException(
            404,
            f"id: {id!r} is neither a device nor a rollup scope "
            "(rack, row, hall, site, CDU) of this site",
        )
    if metric not in metrics:
        raise HTTPException(
            400, f"metric: {metric!r} is not available for {id!r} (available: {metrics})"
        )
    step_s = parse_step(step)
    assert step_s is not None
    s, e = parse_range(start, end, step_s, default_span=timedelta(hours=24))
    source, df = twin.series(id, metric, s, e, step_s)
    cols = [c for c in ("min", "max", "mean", "last", "count", "sum") if c in df.columns]
    if step_s == int(step_s):  # buckets are whole seconds: the columnar path
        return Response(_series_json(id, metric, source, s, e, step_s, df, cols), media_type=JSON)
    data = {c: df[c].to_list() for c in cols}
    points = [
        {"time": _utc(b), **{c: _fin(data[c][k]) if c != "count" else data[c][k] for c in cols}}
        for k, b in enumerate(df["bucket"].to_list())
    ]
    return {
        "id": id,
        "metric": metric,
        "source": source,
        "start": _utc(s),
        "end": _utc(e),
        "step_s": step_s,
        "points": points,
    }


JSON = "application/json"


def _rfc3339(t: datetime) -> str:
    """As pydantic writes an aware UTC datetime: no fraction when it is zero, then Z."""
    return t.replace(tzinfo=None).isoformat() + "Z"


def _series_json(
    sid: str,
    metric: str,
    source: str,
    start: datetime,
    end: datetime,
    step_s: float,
    df: pl.DataFrame,
    cols: list[str],
) -> bytes:
    """The /v1/series body built from the frame's columns (polars writes the points; no
    Python object per point): same fields and values as the SeriesOut model, non-finite
    values as null."""
    points = df.select(
        pl.col("bucket").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("time"),
        *(
            pl.col(c)
            if c == "count"
            else pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(None).alias(c)
            for c in cols
        ),
    ).write_json()
    head = orjson.dumps(
        {
            "id": sid,
            "metric": metric,
            "source": source,
            "start": _rfc3339(start),
            "end": _rfc3339(end),
            "step_s": step_s,
        }
    )
    return head[:-1] + b',"points":' + points.encode() + b"}"


@router.get("/v1/topology", response_model=TopologyOut)
def topology(
    twin: TwinDep,
    depth: str = Query("rack", description=f"one of {DEPTH_ORDER}"),
    chain: str = Query("all", description="power, cooling, location or all"),
) -> dict:
    if depth not in DEPTH_ORDER:
        raise HTTPException(400, f"depth: unknown {depth!r} (known: {list(DEPTH_ORDER)})")
    if chain != "all" and chain not in CHAINS:
        raise HTTPException(400, f"chain: unknown {chain!r} (known: {list(CHAINS)}, all)")
    chains = CHAINS if chain == "all" else (chain,)
    nodes, edges = twin.topology.subgraph(depth, chains)
    return {
        "site": twin.site.site.id,
        "depth": depth,
        "chains": list(chains),
        "nodes": [_node(n) for n in nodes],
        "edges": [{"chain": c, "from": p, "to": k} for c, p, k in edges],
    }


@router.get("/v1/topology/{node_id:path}", response_model=TopologyNodeOut)
def topology_node(
    twin: TwinDep,
    node_id: str,
    downstream_class: str | None = Query(
        None, description="list downstream ids of this class (e.g. gpu)"
    ),
    chain: str = Query("power", description="chain for downstream_class"),
    limit: int = Query(1000, ge=1, le=100_000),
) -> dict:
    topo = twin.topology
    node = topo.get(node_id)
    if node is None:
        raise HTTPException(404, f"unknown topology id {node_id!r}")
    if chain not in CHAINS:
        raise HTTPException(400, f"chain: unknown {chain!r} (known: {list(CHAINS)})")
    out: dict[str, Any] = {"node": _node(node)}
    for key, fn in (("parents", topo.parents), ("children", topo.children)):
        out[key] = {c: fn(node_id, c) for c in CHAINS}
    out["upstream"] = {c: topo.upstream(node_id, c) for c in ("power", "cooling")}
    down = {c: topo.downstream(node_id, c) for c in ("power", "cooling")}
    out["downstream_counts"] = {c: topo.counts(ids) for c, ids in down.items()}
    if downstream_class:
        ids = [i for i in topo.downstream(node_id, chain) if topo.nodes[i].cls == downstream_class]
        out["downstream"] = {
            "chain": chain,
            "class": downstream_class,
            "ids": ids[:limit],
            "total": len(ids),
            "truncated": len(ids) > limit,
        }
    out["state"] = _state(twin, node_id)
    return out


@router.get("/v1/twin/status", response_model=TwinStatusOut)
def status(twin: TwinDep) -> dict:
    tick = twin.current()
    hb = tick.heat_balance
    return {
        "time": _utc(tick.time),
        "tick_ms": tick.timings_ms,
        "rows_read": tick.refresh.rows,
        "rows_tracked": tick.refresh.tracked,
        "rows_untracked": twin.latest_readings.untracked_rows,
        "remaps": twin.latest_readings.rebuilds,
        "stale_after_s": twin.stale_after_s,
        "stale_slots": int(twin.latest_readings.stale(tick.time_ms, twin.stale_after_s).sum()),
        "heat_balance_over_threshold": [
            i for i, o in zip(hb.ids, hb.over_threshold, strict=True) if o
        ],
    }


def _node(n) -> dict:
    return {
        "id": n.id,
        "class": n.cls,
        "hall": n.hall,
        "row": n.row,
        "rack": n.rack,
        "attrs": n.attrs or {},
    }


def _state(twin: Twin, node_id: str) -> dict:
    """Live readings (with age and staleness) of a device, or a scope's latest rollup."""
    tick = twin.current()
    now = tick.time_ms
    readings = twin.latest_readings.device(node_id)
    if readings:
        return {
            "readings": [
                {
                    "metric": m,
                    "value": v,
                    "read_time": _utc(to_ts(t)),
                    "age_s": (now - t) / 1e3,
                    "stale": (now - t) / 1e3 > twin.stale_after_s,
                }
                for m, (v, t) in readings.items()
            ]
        }
    i = twin.scope_index.index.get(node_id)
    if i is not None:
        return {"rollup": {c: _fin(tick.rollups[c][i]) for c in COLUMNS}, "time": _utc(tick.time)}
    return {}


__all__ = ["router", "now_ms"]
