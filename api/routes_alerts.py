"""Alert API: alerts (filters, cursor pagination), acknowledgements, silences, rules and
receivers. The alert service comes from the app's services (api/deps.py, set by
dctwin.server); without it these routes answer 503."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.auth import Principal, require_role
from api.deps import AlertsDep, BusDep
from api.keys import Role
from api.shape import UtcDatetime
from twin.alerts.lifecycle import AlertFilter, ConflictError, NotFoundError
from twin.alerts.outbox import utcnow
from twin.alerts.yaml_files import LABEL_NAME, Matcher, parse_duration

router = APIRouter(prefix="/v1", tags=["alerts"])


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


def _naive(t: datetime | None) -> datetime | None:
    """API times are RFC 3339; naive ones are taken as UTC. Stored naive UTC."""
    if t is None or t.tzinfo is None:
        return t
    return t.astimezone(UTC).replace(tzinfo=None)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Acknowledgement(BaseModel):
    by: str
    at: datetime
    comment: str


ALERT_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "fingerprint": "9f2c4e1a7b3d5e60",
    "alertname": "GpuTemperatureCritical",
    "status": "firing",
    "severity": "critical",
    "labels": {
        "alertname": "GpuTemperatureCritical",
        "device_id": "sv1/h1/row1/rk104/n01/gpu0",
        "rack": "rk104",
        "severity": "critical",
    },
    "annotations": {"summary": "GPU sv1/h1/row1/rk104/n01/gpu0 at 96.5 C: thermal slowdown"},
    "value": 96.5,
    "starts_at": "2025-06-01T11:59:20Z",
    "fired_at": "2025-06-01T11:59:50Z",
    "ends_at": None,
    "updated_at": "2025-06-01T11:59:50Z",
    "silenced_by": [],
    "inhibited_by": None,
    "flapping": False,
    "notified": True,
    "acknowledged": None,
}


class AlertOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ALERT_EXAMPLE]})

    id: int
    fingerprint: str = Field(description="Alertmanager label-set fingerprint")
    alertname: str
    status: Literal["firing", "resolved"]
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None = Field(description="value when the alert last changed state")
    starts_at: datetime = Field(description="when the condition began")
    fired_at: datetime
    ends_at: datetime | None
    updated_at: datetime
    silenced_by: list[str]
    inhibited_by: str | None = Field(description="fingerprint of the inhibiting alert")
    flapping: bool
    notified: bool = Field(description="a firing notification was queued for delivery")
    acknowledged: Acknowledgement | None

    @classmethod
    def of(cls, a: dict[str, Any]) -> AlertOut:
        ack = (
            None
            if a["acked_by"] is None
            else Acknowledgement(
                by=a["acked_by"], at=_utc(a["acked_at"]), comment=a["ack_comment"] or ""
            )
        )
        return cls(
            id=a["id"],
            fingerprint=a["fingerprint"],
            alertname=a["rule"],
            status=a["status"],
            severity=a["severity"],
            labels=a["labels"],
            annotations=a["annotations"],
            value=a["value"],
            starts_at=_utc(a["starts_at"]),
            fired_at=_utc(a["fired_at"]),
            ends_at=_utc(a["ends_at"]),
            updated_at=_utc(a["updated_at"]),
            silenced_by=a["silenced_by"],
            inhibited_by=a["inhibited_by"],
            flapping=a["flapping"],
            notified=a["notified"],
            acknowledged=ack,
        )


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class Transition(BaseModel):
    occurred_at: datetime
    transition: str
    actor: str | None
    comment: str | None
    value: float | None


class AlertDetail(AlertOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **ALERT_EXAMPLE,
                    "transitions": [
                        {
                            "occurred_at": "2025-06-01T11:59:50Z",
                            "transition": "firing",
                            "actor": "engine",
                            "comment": None,
                            "value": 96.5,
                        }
                    ],
                }
            ]
        }
    )

    transitions: list[Transition]


class AckIn(_In):
    by: str | None = Field(
        None,
        max_length=200,
        deprecated=True,
        description="ignored: the acknowledgement is recorded under the API key's name",
    )
    comment: str = Field("", max_length=2000)


class SilenceIn(_In):
    matchers: list[str | dict[str, Any]] = Field(
        min_length=1,
        description='e.g. ["rack=\\"rk101\\"", "alertname=~\\"Gpu.*\\""] or '
        "Alertmanager v2 objects {name, value, isRegex, isEqual}",
    )
    starts_at: UtcDatetime | None = Field(None, description="default: now")
    ends_at: UtcDatetime | None = None
    duration: str | None = Field(None, description="instead of ends_at, e.g. 2h")
    created_by: str | None = Field(
        None,
        max_length=200,
        deprecated=True,
        description="ignored: the silence is recorded under the API key's name",
    )
    comment: str = Field(min_length=1, max_length=2000, description="why (maintenance...)")

    @field_validator("matchers")
    @classmethod
    def _parse(cls, v: list) -> list:
        parsed = [Matcher.parse(m) for m in v]
        if all(m.matches({}) for m in parsed):
            raise ValueError(
                "at least one matcher must not match the empty label set; "
                "a silence must not mute everything"
            )
        return v

    @model_validator(mode="after")
    def _window(self) -> SilenceIn:
        if (self.ends_at is None) == (self.duration is None):
            raise ValueError("give exactly one of ends_at and duration")
        if self.duration is not None and parse_duration(self.duration) <= 0:
            raise ValueError("duration must be positive")
        return self


class SilenceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f5c1e-3d0a-4a36-9a53-1f2e0f4f8c11",
                    "matchers": [
                        {"name": "rack", "value": "rk101", "isRegex": False, "isEqual": True}
                    ],
                    "starts_at": "2025-06-01T12:00:00Z",
                    "ends_at": "2025-06-01T14:00:00Z",
                    "created_by": "alice",
                    "comment": "CDU maintenance",
                    "created_at": "2025-06-01T11:58:00Z",
                    "state": "active",
                }
            ]
        }
    )

    id: str
    matchers: list[dict[str, Any]]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    state: Literal["active", "pending", "expired"]

    @classmethod
    def of(cls, s: dict[str, Any]) -> SilenceOut:
        return cls(
            **{
                **s,
                "starts_at": _utc(s["starts_at"]),
                "ends_at": _utc(s["ends_at"]),
                "created_at": _utc(s["created_at"]),
            }
        )


@router.get("/alerts", response_model=AlertPage)
def list_alerts(
    svc: AlertsDep,
    status: Literal["firing", "resolved"] | None = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    alertname: str | None = None,
    acknowledged: bool | None = None,
    silenced: bool | None = None,
    inhibited: bool | None = None,
    label: Annotated[list[str], Query(description="name=value, repeatable")] = (),  # type: ignore[assignment]
    since: UtcDatetime | None = Query(None, description="startsAt >= since"),
    until: UtcDatetime | None = Query(None, description="startsAt < until"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> AlertPage:
    labels = []
    for item in label:
        name, sep, value = item.partition("=")
        if not sep or not LABEL_NAME.match(name):
            raise HTTPException(
                400, f"label filter {item!r}: use name=value with a valid label name"
            )
        labels.append((name, value))
    f = AlertFilter(
        status,
        severity,
        alertname,
        acknowledged,
        silenced,
        inhibited,
        tuple(labels),
        _naive(since),
        _naive(until),
    )
    try:
        items, nxt = svc.db.list_alerts(f, limit, cursor)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return AlertPage(items=[AlertOut.of(a) for a in items], next_cursor=nxt)


@router.get("/alerts/{alert_id}", response_model=AlertDetail)
def get_alert(svc: AlertsDep, alert_id: int) -> AlertDetail:
    db = svc.db
    try:
        alert = db.get_alert(alert_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    return AlertDetail(
        **AlertOut.of(alert).model_dump(),
        transitions=[
            Transition(**{**t, "occurred_at": _utc(t["occurred_at"])})
            for t in db.transitions(alert_id)
        ],
    )


@router.post(
    "/alerts/{alert_id}/ack", response_model=AlertOut, summary="Acknowledge an alert (operator)"
)
def ack_alert(
    who: Annotated[Principal, Depends(require_role(Role.operator))],
    svc: AlertsDep,
    alert_id: int,
    body: AckIn,
    bus: BusDep,
) -> AlertOut:
    by = who.name  # the audit trail names the key; a body `by` is ignored
    try:
        alert = svc.db.ack(alert_id, by, body.comment, utcnow())
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    # the live stream shows the acknowledgement at once
    bus.publish(
        "alert",
        {
            "id": alert_id,
            "fingerprint": alert["fingerprint"],
            "transition": "acknowledged",
            "actor": by,
            "comment": body.comment,
        },
    )
    return AlertOut.of(alert)


@router.get("/silences", response_model=list[SilenceOut])
def list_silences(
    svc: AlertsDep, state: Literal["active", "pending", "expired"] | None = None
) -> list[SilenceOut]:
    return [SilenceOut.of(s) for s in svc.db.list_silences(utcnow(), state)]


@router.post(
    "/silences",
    response_model=SilenceOut,
    status_code=201,
    summary="Silence alerts matching label matchers for a window (operator)",
)
def create_silence(
    who: Annotated[Principal, Depends(require_role(Role.operator))],
    svc: AlertsDep,
    body: SilenceIn,
) -> SilenceOut:
    now = utcnow()
    starts = _naive(body.starts_at) or now
    ends_at = _naive(body.ends_at)
    ends = (
        ends_at
        if ends_at is not None
        else starts + timedelta(seconds=parse_duration(body.duration))
    )
    if ends <= starts:
        raise HTTPException(422, "ends_at must be after starts_at")
    if ends <= now:
        raise HTTPException(422, "the silence would already have ended")
    silence = svc.db.create_silence(
        [Matcher.parse(m) for m in body.matchers], starts, ends, who.name, body.comment, now
    )
    svc.wake()  # apply it at the next evaluation, not a tick later
    return SilenceOut.of(silence)


@router.get("/silences/{silence_id}", response_model=SilenceOut)
def get_silence(svc: AlertsDep, silence_id: str) -> SilenceOut:
    try:
        return SilenceOut.of(svc.db.get_silence(silence_id, utcnow()))
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.delete(
    "/silences/{silence_id}",
    response_model=SilenceOut,
    dependencies=[Depends(require_role(Role.operator))],
    summary="Expire a silence now (operator)",
)
def expire_silence(svc: AlertsDep, silence_id: str) -> SilenceOut:
    try:
        silence = svc.db.expire_silence(silence_id, utcnow())
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    svc.wake()
    return SilenceOut.of(silence)


@router.get(
    "/rules",
    summary="Alert rules with their evaluation state",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": [
                        {
                            "name": "GpuTemperatureCritical",
                            "kind": "threshold",
                            "severity": "critical",
                            "metric": "gpu_temp_c",
                            "op": ">",
                            "value": 87.0,
                            "for": 30.0,
                            "annotations": {"summary": "GPU {device_id} at {value:.1f} °C"},
                            "state": {
                                "health": "ok",
                                "reason": None,
                                "firing": 0,
                                "pending": 0,
                                "last_evaluated": "2025-06-01T12:00:00",
                                "duration_ms": 1.2,
                            },
                        }
                    ]
                }
            }
        }
    },
)
def list_rules(svc: AlertsDep) -> list[dict[str, Any]]:
    """Every rule as configured, with its evaluation state (health, firing, pending)."""
    return svc.rules_view()


@router.get(
    "/receivers",
    dependencies=[Depends(require_role(Role.admin))],
    summary="Receivers configuration, secrets redacted (admin)",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": [
                        {
                            "name": "oncall",
                            "type": "webhook",
                            "url": "https://hooks.example/…",
                            "has_secret": True,
                            "outbox": {
                                "pending": 0,
                                "delivered": 12,
                                "failed": 0,
                                "last_delivered_at": "2025-06-01T11:59:51",
                                "last_error": None,
                            },
                        }
                    ]
                }
            }
        }
    },
)
def list_receivers(svc: AlertsDep) -> list[dict[str, Any]]:
    """Receivers without secrets (has_secret only; URL paths redacted), with outbox counts."""
    return svc.receivers_view()
