"""Capacity endpoints (issue 27): headroom per element and the 30-day demand forecast.

`GET /v1/capacity` lists power and cooling headroom (N and N-1) per rack, row, PDU, UPS,
hall, CDU, CRAH and plant; `GET /v1/capacity/forecast` the per-hall and site demand
forecast with its prediction interval and the dates headroom runs out (docs/capacity.md).
Bad filters are 422 problem details naming the parameter; an unknown id is 404.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

import polars as pl
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CapacityDep
from api.problems import problem_responses
from twin.capacity.forecast import Runout
from twin.capacity.service import SeriesForecast

router = APIRouter(tags=["capacity"])

Kind = Literal["rack", "row", "pdu", "ups", "hall", "cdu", "crah", "plant"]
Resource = Literal["power", "cooling", "cooling_liquid", "cooling_air"]
Basis = Literal["peak", "latest"]


class CapacityElement(BaseModel):
    kind: str
    id: str
    parent: str | None
    resource: str = Field(description="power, cooling, or a hall's cooling_liquid / cooling_air")
    weather: str | None = Field(
        description="plant only: capacity at the `current` or `design_day` outdoor wet-bulb"
    )
    used_kw: float | None = Field(description="null: a reading it depends on is missing")
    capacity_n_kw: float | None = Field(description="every unit healthy")
    capacity_n1_kw: float | None = Field(
        description="with the element's largest redundant unit lost"
    )
    headroom_n_kw: float | None
    headroom_n1_kw: float | None
    limiting: str = Field(description="what sets the N capacity (rack_breaker, psus, pdu, ...)")


class CapacityOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "time": "2026-11-22T03:00:00Z",
                    "basis": "peak",
                    "peak_window_h": 24.0,
                    "elements": [
                        {
                            "kind": "rack",
                            "id": "sv1/h1/r1/rk01",
                            "parent": "sv1/h1/r1/pdu1",
                            "resource": "power",
                            "weather": None,
                            "used_kw": 38.2,
                            "capacity_n_kw": 46.0,
                            "capacity_n1_kw": 41.4,
                            "headroom_n_kw": 7.8,
                            "headroom_n1_kw": 3.2,
                            "limiting": "rack_breaker",
                        }
                    ],
                }
            ]
        }
    )

    time: datetime = Field(description="the twin tick the figures read")
    basis: str = Field(description="peak: the higher of now and the last peak_window_h; latest")
    peak_window_h: float
    elements: list[CapacityElement]


def _clean(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v


@router.get(
    "/v1/capacity",
    response_model=CapacityOut,
    summary="Power and cooling headroom per element, N and N-1",
    responses=problem_responses(404, e404="id: 'sv1/h1/rk999' is not a capacity element"),
)
def get_capacity(
    svc: CapacityDep,
    kind: Annotated[list[Kind] | None, Query(description="element kinds (repeatable)")] = None,
    resource: Annotated[list[Resource] | None, Query(description="resources (repeatable)")] = None,
    id: Annotated[str | None, Query(max_length=512, description="one element's id")] = None,
    basis: Basis = "peak",
) -> CapacityOut:
    res = svc.headroom(basis)
    df = res.frame
    if id is not None:
        df = df.filter(pl.col("id") == id)
        if df.height == 0:
            raise HTTPException(404, f"id: {id!r} is not a capacity element of this site")
    if kind:
        df = df.filter(pl.col("kind").is_in(kind))
    if resource:
        df = df.filter(pl.col("resource").is_in(resource))
    rows = [{k: _clean(v) for k, v in r.items()} for r in df.iter_rows(named=True)]
    return CapacityOut(
        time=res.time.replace(tzinfo=UTC),
        basis=res.basis,
        peak_window_h=svc.config.peak_window_h,
        elements=[CapacityElement.model_validate(r) for r in rows],
    )


class RunoutOut(BaseModel):
    expected: datetime | None = Field(description="first day the forecast peak exceeds it")
    earliest: datetime | None = Field(description="... the interval's upper bound")
    latest: datetime | None = Field(description="... the interval's lower bound")


class ForecastPoint(BaseModel):
    day: datetime = Field(description="the day (UTC midnight)")
    peak_kw: float = Field(description="forecast peak demand of the day (highest hourly mean)")
    lower_kw: float
    upper_kw: float


class ForecastSeriesOut(BaseModel):
    scope: str = Field(description="a hall id or the site id")
    resource: str = Field(description="power (IT input) or cooling (heat to remove)")
    status: str = Field(description="ok, or insufficient_history")
    detail: str | None
    level: float | None = Field(description="central probability of the interval")
    weather_kw_per_k: float | None = Field(description="fitted sensitivity to outdoor dry-bulb")
    trend_kw_per_day: float | None
    capacity_n_kw: float | None
    capacity_n1_kw: float | None
    runout_n: RunoutOut | None
    runout_n1: RunoutOut | None
    points: list[ForecastPoint] = Field(description="one per day of the horizon")


class ForecastOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "time": "2026-11-22T03:00:00Z",
                    "history_start": "2026-10-23T03:00:00Z",
                    "horizon_days": 30,
                    "series": [
                        {
                            "scope": "h1",
                            "resource": "power",
                            "status": "ok",
                            "detail": None,
                            "level": 0.9,
                            "weather_kw_per_k": 1.8,
                            "trend_kw_per_day": 2.4,
                            "capacity_n_kw": 1200.0,
                            "capacity_n1_kw": 900.0,
                            "runout_n": None,
                            "runout_n1": {
                                "expected": "2026-12-10T00:00:00Z",
                                "earliest": "2026-12-04T00:00:00Z",
                                "latest": "2026-12-19T00:00:00Z",
                            },
                            "points": [
                                {
                                    "day": "2026-11-23T00:00:00Z",
                                    "peak_kw": 842.0,
                                    "lower_kw": 815.0,
                                    "upper_kw": 870.0,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )

    time: datetime = Field(description="forecast origin (the last whole hour)")
    history_start: datetime
    horizon_days: int
    series: list[ForecastSeriesOut]


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _runout(r: Runout | None) -> RunoutOut | None:
    if r is None:
        return None
    return RunoutOut(expected=_ts(r.expected_s), earliest=_ts(r.earliest_s), latest=_ts(r.latest_s))


def _series(s: SeriesForecast) -> ForecastSeriesOut:
    fc = s.forecast
    points = (
        []
        if fc is None
        else [
            ForecastPoint(
                day=datetime.fromtimestamp(float(d), UTC),
                peak_kw=float(p),
                lower_kw=float(lo),
                upper_kw=float(hi),
            )
            for d, p, lo, hi in zip(fc.day_s, fc.peak_kw, fc.lower_kw, fc.upper_kw, strict=True)
        ]
    )
    return ForecastSeriesOut(
        scope=s.scope,
        resource=s.resource,
        status="ok" if fc is not None else "insufficient_history",
        detail=s.error,
        level=None if fc is None else fc.level,
        weather_kw_per_k=None if fc is None else fc.weather_kw_per_k,
        trend_kw_per_day=None if fc is None else fc.trend_kw_per_day,
        capacity_n_kw=s.capacity_n_kw,
        capacity_n1_kw=s.capacity_n1_kw,
        runout_n=_runout(s.runout_n),
        runout_n1=_runout(s.runout_n1),
        points=points,
    )


@router.get(
    "/v1/capacity/forecast",
    response_model=ForecastOut,
    summary="30-day power and cooling demand forecast per hall and site, and run-out dates",
    responses=problem_responses(404, e404="scope: 'h9' is not a hall or the site"),
)
def get_capacity_forecast(
    svc: CapacityDep,
    scope: Annotated[
        str | None, Query(max_length=512, description="a hall id or the site id")
    ] = None,
    resource: Literal["power", "cooling"] | None = None,
) -> ForecastOut:
    lay = svc.twin.layout
    if scope is not None and scope not in (*lay.hall_ids, lay.site_id):
        raise HTTPException(
            404,
            f"scope: {scope!r} is not a hall or the site (one of {[*lay.hall_ids, lay.site_id]})",
        )
    res = svc.forecast()
    series = [
        _series(s)
        for s in res.series
        if (scope is None or s.scope == scope) and (resource is None or s.resource == resource)
    ]
    return ForecastOut(
        time=res.time.replace(tzinfo=UTC),
        history_start=res.history_start.replace(tzinfo=UTC),
        horizon_days=svc.config.forecast.horizon_days,
        series=series,
    )
