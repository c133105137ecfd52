"""Anomaly endpoints: the top anomalies now (devices, racks, halls) and one device's score.

Included by api/app.py with ``app.include_router(anomaly_router(twin))``. Each request
brings the store's live scorer up to date first (twin/anomaly/service.py), so scores are
at most one interval (plus the late-sample lag) old.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from twin.anomaly.service import kept_current, live_for


class Contributor(BaseModel):
    metric: str = Field(description="metric that drives the score (or 'no_data')")
    component: str = Field(
        description="detector component: the metric itself, a physics "
        "residual (e.g. gpu_thermal), multivariate, no_data"
    )
    score: float = Field(ge=0, le=1)


_EXAMPLE = {
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


def anomaly_router(twin) -> APIRouter:
    router = APIRouter(tags=["anomalies"])

    def live():
        lv = live_for(twin.site, twin.store)
        lv.refresh()
        return lv

    @router.get("/v1/anomalies", response_model=AnomaliesOut)
    def anomalies(
        scope: Literal["device", "rack", "hall"] = Query("device"),
        device_class: str | None = Query(
            None, alias="class", description="gpu, psu, cdu, crah, pdu, ..."
        ),
        min_score: float = Query(0.0, ge=0.0, le=1.0),
        limit: int = Query(20, ge=1, le=10_000, description="top-k"),
        prefix: str | None = Query(None, description="only ids under this path, e.g. a rack"),
    ) -> AnomaliesOut:
        lv = live()
        items = lv.top(scope, device_class, min_score, limit, prefix)
        return AnomaliesOut(
            status=lv.status, items=[AnomalyOut(**(i | {"time": _utc(i["time"])})) for i in items]
        )

    @router.get("/v1/anomalies/{device_id:path}", response_model=AnomalyOut)
    def device_anomaly(device_id: str) -> AnomalyOut:
        lv = live()
        row = lv.device(device_id)
        if row is None:
            raise HTTPException(
                404,
                f"no anomaly score for {device_id!r}: unknown device, "
                f"or not scored yet ({lv.status})",
            )
        return AnomalyOut(**(row | {"scope": "device", "time": _utc(row["time"])}))

    return router


def device_anomaly_state(twin, device_id: str) -> dict | None:
    """The anomaly part of a device's state (for /v1/devices/{id}); None if not scored.

    Reads the scores a background refresh keeps current: a device lookup must not wait
    for a scoring round or a refit.
    """
    row = kept_current(twin.site, twin.store).device(device_id)
    if row is None:
        return None
    return {
        "score": row["score"],
        "p": row["p"],
        "time": _utc(row["time"]),
        "top_metrics": row["top_metrics"],
    }
