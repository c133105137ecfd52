"""Anomaly endpoints: the top anomalies now (devices, racks, halls) and one device's score.

The scorer is the app's `AnomalyService` (api/deps.py). In a server its background refresh
keeps it current; without one (tests, tools) a request brings it up to date first, so
scores are at most one interval (plus the late-sample lag) old.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AnomalyDep
from twin.anomaly.service import AnomalyService


class Contributor(BaseModel):
    metric: str = Field(description="metric that drives the score (or 'no_data')")
    component: str = Field(
        description="detector component: the metric itself, a physics "
        "residual (e.g. gpu_thermal), multivariate, no_data"
    )
    score: float = Field(ge=0, le=1)


_EXAMPLE: dict[str, Any] = {
    "id": "sv1/h1/row1/rk101/n01/gpu3",
    "scope": "device",
    "device_class": "gpu",
    "score": 0.91,
    "p": 5.2e-08,
    "time": "2026-11-22T03:00:00Z",
    "top_metrics": [{"metric": "gpu_temp_c", "component": "gpu_thermal", "score": 0.91}],
    "devices": None,
    "devices_alarming": None,
    "top_device": None,
}


class AnomalyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})
    id: str = Field(description="device id, rack id (site/hall/row/rack) or hall id")
    scope: Literal["device", "rack", "hall"]
    device_class: str | None = None
    score: float = Field(
        ge=0,
        le=1,
        description="calibrated: -log10(p)/8, where p is the "
        "per-interval false-alarm rate of this score",
    )
    p: float = Field(ge=0, le=1, description="tail probability behind the score")
    time: datetime | None = Field(description="end of the interval scored (UTC)")
    top_metrics: list[Contributor] = Field(description="top contributing metrics")
    devices: int | None = Field(None, description="rollups: devices scored in the scope")
    devices_alarming: int | None = Field(None, description="rollups: devices >= 0.5")
    top_device: str | None = Field(None, description="rollups: the device with the top score")


class AnomaliesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "scoring", "items": [_EXAMPLE]}]}
    )

    status: str = Field(description="warm-up progress or how far scoring has got")
    items: list[AnomalyOut]


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


router = APIRouter(tags=["anomalies"])


def _current(lv: AnomalyService) -> AnomalyService:
    if not lv.running:  # no background refresh: score what closed since the last request
        lv.refresh()
    return lv


@router.get("/v1/anomalies", response_model=AnomaliesOut)
def anomalies(
    service: AnomalyDep,
    scope: Literal["device", "rack", "hall"] = Query("device"),
    device_class: str | None = Query(
        None, alias="class", description="gpu, psu, cdu, crah, pdu, ..."
    ),
    min_score: float = Query(0.0, ge=0.0, le=1.0),
    limit: int = Query(20, ge=1, le=10_000, description="top-k"),
    prefix: str | None = Query(None, description="only ids under this path, e.g. a rack"),
) -> AnomaliesOut:
    lv = _current(service)
    items = lv.top(scope, device_class, min_score, limit, prefix)
    return AnomaliesOut(
        status=lv.status, items=[AnomalyOut(**(i | {"time": _utc(i["time"])})) for i in items]
    )


@router.get("/v1/anomalies/{device_id:path}", response_model=AnomalyOut)
def device_anomaly(device_id: str, service: AnomalyDep) -> AnomalyOut:
    lv = _current(service)
    row = lv.device(device_id)
    if row is None:
        raise HTTPException(
            404,
            f"no anomaly score for {device_id!r}: unknown device, or not scored yet ({lv.status})",
        )
    return AnomalyOut(**(row | {"scope": "device", "time": _utc(row["time"])}))


def device_anomaly_state(service: AnomalyService | None, device_id: str) -> dict | None:
    """The anomaly part of a device's state (for /v1/devices/{id}); None if not scored.

    Reads the latest scores only: a device lookup must not wait for a scoring round or a
    refit (the server's background refresh keeps them current).
    """
    row = service.device(device_id) if service is not None else None
    if row is None:
        return None
    return {
        "score": row["score"],
        "p": row["p"],
        "time": _utc(row["time"]),
        "top_metrics": row["top_metrics"],
    }
