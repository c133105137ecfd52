"""Response models with examples for the twin-core endpoints (api/routes_twin.py).

Kept apart from the routes so the OpenAPI document describes every response (issue 11)
without reshaping the twin's handlers: the models match what the handlers return, and
`extra="allow"` keeps any field a handler adds later instead of failing the response.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

T0 = "2025-06-01T12:00:00Z"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PueScopeOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "scope": "hall:h1",
                    "figure": "pPUE",
                    "category": None,
                    "it": "sv1/h1",
                    "terms": ["sv1/h1:cooling_kw"],
                    "reason": None,
                }
            ]
        },
    )

    scope: str
    figure: str = Field(description="PUE or pPUE")
    category: str | None
    it: str | None = Field(description="what the IT term is metered by")
    terms: list[str]
    reason: str | None


class HeatBalanceEntry(_Open):
    id: str
    level: str = Field(description="cdu, hall or site")
    liquid_kw: float | None
    air_kw: float | None
    it_kw: float | None
    residual_kw: float | None
    residual_pct: float | None
    trend_pct_per_h: float | None
    over_threshold: bool
    ticks_above_threshold: int
    stale_inputs: int
    reason: str | None
    status: str = Field(description="ok, flagged, out_of_balance or unknown")
    history: list[dict[str, Any]] | None = None


class HeatBalanceOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "time": T0,
                    "threshold_pct": 5.0,
                    "persist_ticks": 3,
                    "scopes": [
                        {
                            "id": "sv1/h1/cdu-row1",
                            "level": "cdu",
                            "liquid_kw": 310.2,
                            "air_kw": 0.0,
                            "it_kw": 312.0,
                            "residual_kw": -1.8,
                            "residual_pct": -0.58,
                            "trend_pct_per_h": 0.01,
                            "over_threshold": False,
                            "ticks_above_threshold": 0,
                            "stale_inputs": 0,
                            "reason": None,
                            "status": "ok",
                        }
                    ],
                }
            ]
        },
    )

    time: datetime
    threshold_pct: float
    persist_ticks: int
    scopes: list[HeatBalanceEntry]


class RollupsOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "time": T0,
                    "level": "rack",
                    "units": {"power_kw": "kW", "gpu_temp_max_c": "Cel"},
                    "rollups": [
                        {"id": "sv1/h1/row1/rk101", "power_kw": 48.1, "gpu_temp_max_c": 66.0}
                    ],
                }
            ]
        },
    )

    time: datetime
    level: str
    units: dict[str, str]
    rollups: list[dict[str, Any]] = Field(description="one row per scope: id and columns")


class SeriesPointOut(_Open):
    time: datetime = Field(description="bucket start (RFC 3339, UTC)")


class SeriesOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "sv1/h1/row1/rk101/n01/gpu0",
                    "metric": "gpu_temp_c",
                    "source": "samples",
                    "start": "2025-06-01T11:00:00Z",
                    "end": T0,
                    "step_s": 60.0,
                    "points": [
                        {
                            "time": "2025-06-01T11:00:00Z",
                            "min": 60.1,
                            "max": 62.3,
                            "mean": 61.0,
                            "last": 61.7,
                            "count": 60,
                        }
                    ],
                }
            ]
        },
    )

    id: str
    metric: str
    source: str = Field(description="samples, or the rollup table used")
    start: datetime
    end: datetime
    step_s: float
    points: list[SeriesPointOut] = Field(
        description="min, max, mean, last, count (and sum "
        "for rollups) per bucket; empty buckets "
        "are absent"
    )


class TopologyOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "site": "sv1",
                    "depth": "rack",
                    "chains": ["power", "cooling", "location"],
                    "nodes": [
                        {
                            "id": "sv1/h1/row1/rk101",
                            "class": "rack",
                            "hall": "h1",
                            "row": "row1",
                            "rack": "rk101",
                            "attrs": {},
                        }
                    ],
                    "edges": [
                        {"chain": "power", "from": "sv1/h1/pdu-row1", "to": "sv1/h1/row1/rk101"}
                    ],
                }
            ]
        },
    )

    site: str
    depth: str
    chains: list[str]
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


class TopologyNodeOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "node": {
                        "id": "sv1/h1/cdu-row1",
                        "class": "cdu",
                        "hall": "h1",
                        "row": None,
                        "rack": None,
                        "attrs": {},
                    },
                    "parents": {
                        "power": [],
                        "cooling": ["sv1/plant/chiller-plant"],
                        "location": ["sv1/h1"],
                    },
                    "children": {"power": [], "cooling": ["sv1/h1/row1/rk101"], "location": []},
                    "upstream": {"power": [], "cooling": ["sv1/plant/chiller-plant"]},
                    "downstream_counts": {"power": {}, "cooling": {"rack": 8, "gpu": 512}},
                    "state": {
                        "readings": [
                            {
                                "metric": "flow_lpm",
                                "value": 410.0,
                                "read_time": T0,
                                "age_s": 0.8,
                                "stale": False,
                            }
                        ]
                    },
                }
            ]
        },
    )

    node: dict[str, Any]
    parents: dict[str, Any]
    children: dict[str, Any]
    upstream: dict[str, Any]
    downstream_counts: dict[str, Any]
    state: dict[str, Any]


class TwinStatusOut(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "time": T0,
                    "tick_ms": {"refresh": 3.1, "rollups": 2.0},
                    "rows_read": 17215,
                    "rows_tracked": 17215,
                    "rows_untracked": 0,
                    "remaps": 1,
                    "stale_after_s": 30.0,
                    "stale_slots": 0,
                    "heat_balance_over_threshold": [],
                }
            ]
        },
    )

    time: datetime
    tick_ms: dict[str, float]
    rows_read: int
    rows_tracked: int
    rows_untracked: int
    remaps: int
    stale_after_s: float
    stale_slots: int
    heat_balance_over_threshold: list[str]


PUE_EXAMPLE = {
    "value": 1.2536,
    "dcie": 0.7977,
    "category": "PUE1",
    "time": T0,
    "inputs": [
        {
            "device_id": "sv1/facility/utility",
            "metric": "power_kw",
            "value": 1836.6,
            "read_time": T0,
            "age_s": 0.4,
            "stale": False,
        },
        {
            "device_id": "sv1/facility/ups-out",
            "metric": "power_kw",
            "value": 1465.1,
            "read_time": T0,
            "age_s": 0.4,
            "stale": False,
        },
    ],
    "stale_inputs": [],
    "reason": None,
    "scope": "site",
    "figure": "PUE",
    "method": "instantaneous",
    "unit": "kW",
    "total": 1836.6,
    "it": 1465.1,
    "start": None,
    "end": None,
    "step_s": None,
    "quality": {
        "status": "ok",
        "coverage": None,
        "missing_meters": [],
        "stale_inputs": [],
        "counter_resets": 0,
        "counter_wraps": 0,
        "gaps": 0,
        "methods": {"sv1/facility/utility": "power"},
        "input_coverage": {},
    },
    "series": None,
}
