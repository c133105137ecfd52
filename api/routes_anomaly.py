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


# -- incidents (issue 20) ------------------------------------------------------------------


class IncidentAlarm(BaseModel):
    device_id: str
    device_class: str
    relation: Literal["root_cause", "child", "parent", "same_rack", "related"] = Field(
        description="how the device relates to the root cause in the topology"
    )
    first_alarm: datetime = Field(description="end of its first alarming interval (UTC)")
    last_alarm: datetime
    peak_score: float = Field(ge=0, le=1)
    p: float = Field(ge=0, le=1, description="smallest tail probability while alarming")
    metric: str | None = Field(description="top contributing metric at its strongest")
    component: str | None = Field(description="detector component (residual) at its strongest")
    alarm_intervals: int = Field(ge=1)


_ALARM_EXAMPLE: dict[str, Any] = {
    "device_id": "sv1/h1/cdu-row1",
    "device_class": "cdu",
    "relation": "root_cause",
    "first_alarm": "2026-11-22T03:00:00Z",
    "last_alarm": "2026-11-22T03:20:00Z",
    "peak_score": 1.0,
    "p": 1e-12,
    "metric": "pump_power_w",
    "component": "cdu_pump_power",
    "alarm_intervals": 40,
}
_INCIDENT_EXAMPLE: dict[str, Any] = {
    "id": "inc-2cbedaede4af",
    "state": "open",
    "severity": "critical",
    "score": 1.0,
    "opened": "2026-11-22T03:00:00Z",
    "last_alarm": "2026-11-22T03:20:00Z",
    "resolved": None,
    "root_cause": _ALARM_EXAMPLE,
    "suspects": [_ALARM_EXAMPLE],
    "root_cause_now": [{"metric": "pump_power_w", "component": "cdu_pump_power", "score": 1.0}],
    "devices": 16,
    "alarms": [_ALARM_EXAMPLE],
}


class IncidentOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_INCIDENT_EXAMPLE]})
    id: str
    state: Literal["open", "resolved"]
    severity: Literal["warning", "critical"]
    score: float = Field(ge=0, le=1, description="peak device score in the incident")
    opened: datetime
    last_alarm: datetime
    resolved: datetime | None = Field(description="after a quiet period without alarms")
    root_cause: IncidentAlarm | None = Field(description="the top suspected root cause")
    suspects: list[IncidentAlarm] = Field(description="ranked suspected root causes (top 3)")
    root_cause_now: list[Contributor] = Field(
        description="the root-cause device's top contributing metrics now"
    )
    devices: int = Field(ge=1, description="devices that alarmed in this incident")
    alarms: list[IncidentAlarm] = Field(description="the alarms grouped here, ranked")


class AnomaliesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "scored up to 2026-11-22T03:20:00Z",
                    "warming_up": False,
                    "history_s": 3600.0,
                    "history_needed_s": 3600.0,
                    "incidents": [_INCIDENT_EXAMPLE],
                    "items": [_EXAMPLE],
                }
            ]
        }
    )

    status: str = Field(description="warm-up progress or how far scoring has got")
    warming_up: bool = Field(False, description="no scores yet: not enough stored history")
    history_s: float = Field(0.0, description="stored history seen at the last warm-up check")
    history_needed_s: float = Field(0.0, description="history needed before the first scores")
    incidents: list[IncidentOut] = Field(
        default_factory=list, description="incidents (one per problem), open first"
    )
    items: list[AnomalyOut] = Field(description="device / rack / hall scores now, top-k")


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
    incidents: Literal["open", "resolved", "all", "none"] = Query(
        "open", description="which incidents to include"
    ),
    incident_limit: int = Query(20, ge=1, le=1000),
) -> AnomaliesOut:
    lv = _current(service)
    items = lv.top(scope, device_class, min_score, limit, prefix)
    incs = [] if incidents == "none" else lv.incident_list(incidents, incident_limit)
    return AnomaliesOut(
        status=lv.status,
        **lv.warmup(),
        incidents=[IncidentOut(**_incident_utc(i)) for i in incs],
        items=[AnomalyOut(**(i | {"time": _utc(i["time"])})) for i in items],
    )


def _incident_utc(doc: dict) -> dict:
    """Naive UTC times of an incident (and its alarms) made aware."""

    def alarm(a: dict | None) -> dict | None:
        if a is None:
            return None
        return a | {"first_alarm": _utc(a["first_alarm"]), "last_alarm": _utc(a["last_alarm"])}

    return doc | {
        "opened": _utc(doc["opened"]),
        "last_alarm": _utc(doc["last_alarm"]),
        "resolved": _utc(doc["resolved"]),
        "root_cause": alarm(doc["root_cause"]),
        "suspects": [alarm(a) for a in doc["suspects"]],
        "alarms": [alarm(a) for a in doc["alarms"]],
    }


# registered before the device route, whose {device_id:path} would take "incidents/..."
@router.get("/v1/anomalies/incidents/{incident_id}", response_model=IncidentOut)
def anomaly_incident(incident_id: str, service: AnomalyDep) -> IncidentOut:
    lv = _current(service)
    doc = lv.incident(incident_id)
    if doc is None:
        raise HTTPException(
            404, f"no anomaly incident {incident_id!r} (ids are listed by GET /v1/anomalies)"
        )
    return IncidentOut(**_incident_utc(doc))


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
