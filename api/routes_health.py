"""`/healthz` (liveness) and `/readyz` (readiness), from the process's health registry.

- `/healthz`: is every background job this process runs alive and making progress? 200
  when none is stale or down, else 503 as a problem document (`/problems/unhealthy`)
  whose extension members are the same report: the body names each component either way. It reads
  only in-memory heartbeats (no key file, no DuckDB), on the event loop, so it answers
  while the rest of the API is stuck.
- `/readyz`: should traffic be sent here? 200 once the store answers, the twin has ticked
  and ingest has partitions and is caught up (DCTWIN_READY_MAX_LAG_RECORDS), and liveness
  holds; else 503 (`/problems/not-ready`) with the reasons.

An app built without a registry (tests, tools: `create_app` without a server) runs no
background jobs: both answer 200 with no components.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Services, ServicesDep
from api.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE, problem_content
from twin.health import ComponentHealth

router = APIRouter(tags=["ops"])

T0 = "2025-06-01T12:00:00Z"


class ComponentOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "starting", "stale", "down", "not_running"] = Field(
        description="stale and down fail /healthz; not_running: this process does not run it"
    )
    last_success: datetime | None = Field(
        None, description="end of its last successful round (ingest: last stored poll)"
    )
    age_s: float | None = Field(None, description="seconds since last_success")
    stale_after_s: float | None = Field(None, description="threshold for stale")
    detail: str | None = None

    @classmethod
    def of(cls, h: ComponentHealth, now: float) -> ComponentOut:
        return cls(
            status=h.status,
            last_success=None
            if h.last_success is None
            else datetime.fromtimestamp(h.last_success, UTC),
            age_s=None if h.last_success is None else round(now - h.last_success, 3),
            stale_after_s=h.stale_after_s,
            detail=h.detail,
            **h.extra,
        )


class HealthOut(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "failing": [],
                    "components": {
                        "ingest": {
                            "status": "ok",
                            "last_success": T0,
                            "age_s": 0.4,
                            "stale_after_s": 120.0,
                            "detail": None,
                            "lag_records": 12,
                            "assigned_partitions": 8,
                            "samples_stored": 1203456,
                        },
                        "twin": {
                            "status": "ok",
                            "last_success": T0,
                            "age_s": 3.1,
                            "stale_after_s": 60.0,
                            "detail": None,
                        },
                        "anomaly": {"status": "not_running"},
                    },
                    "ingest_running": True,
                    "samples_stored": 1203456,
                    "dead_letters": 0,
                    "uptime_s": 3600.2,
                }
            ]
        },
    )

    status: Literal["ok", "failing"]
    failing: list[str] = Field(description="components that are stale or down")
    components: dict[str, ComponentOut] = Field(
        description="every component: those this process runs, and the others as not_running"
    )


class ReadyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "not_ready",
                    "checks": {
                        "store": None,
                        "twin": None,
                        "ingest": "ingest is catching up: 52000 records behind (ready at <= 1000)",
                    },
                    "failing": [],
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    checks: dict[str, str | None] = Field(description="null: passed; else why not ready")
    failing: list[str] = Field(description="components failing liveness (see /healthz)")


def _unavailable(slug: str, detail: str, instance: str, report: dict[str, Any]) -> JSONResponse:
    """503 as a problem document (every 4xx/5xx of the API is one), the report's members
    kept as extensions; `status` is the problem's (503), the verdict is in `failing`."""
    body = {
        "type": PROBLEM_BASE + slug,
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
        "instance": instance,
        **{k: v for k, v in report.items() if k != "status"},
    }
    return JSONResponse(body, status_code=503, media_type=PROBLEM_MEDIA_TYPE)


def _health_doc(services: Services) -> tuple[bool, dict[str, Any]]:
    registry = services.health_registry
    now = time.time()
    report = registry.check() if registry is not None else {}
    failing = [name for name, h in report.items() if h.failing]
    doc = HealthOut(
        status="failing" if failing else "ok",
        failing=failing,
        components={name: ComponentOut.of(h, now) for name, h in report.items()},
        **(services.health() if services.health else {}),
    )
    return not failing, doc.model_dump(mode="json")


@router.get(
    "/healthz",
    response_model=HealthOut,
    summary="Liveness: every background job this process runs",
    responses={
        503: {
            "description": "a component is stale or down: a problem document with the same "
            "`failing` and `components` members",
            "content": problem_content(
                {
                    "type": "/problems/unhealthy",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": "ingest down: the ingest thread is not running (see the log)",
                    "instance": "/healthz",
                    "failing": ["ingest"],
                    "components": {"ingest": {"status": "down", "last_success": T0}},
                }
            ),
        }
    },
)
async def healthz(services: ServicesDep) -> JSONResponse:
    # async on purpose: in-memory heartbeats only, and no thread-pool hop that a pool busy
    # with slow requests could delay
    ok, doc = _health_doc(services)
    if ok:
        return JSONResponse(doc)
    detail = "; ".join(
        f"{name} {doc['components'][name]['status']}: {doc['components'][name]['detail']}"
        for name in doc["failing"]
    )
    return _unavailable("unhealthy", detail, "/healthz", doc)


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: store open, twin loaded, ingest assigned and caught up",
    responses={
        503: {
            "description": "not ready: a problem document with the same `checks` and "
            "`failing` members",
            "content": problem_content(
                {
                    "type": "/problems/not-ready",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": "ingest: ingest has no partitions assigned yet",
                    "instance": "/readyz",
                    "checks": {"store": None, "twin": None, "ingest": "no partitions yet"},
                    "failing": [],
                }
            ),
        }
    },
)
def readyz(services: ServicesDep) -> JSONResponse:
    # a plain def: the store check runs a query, so it belongs in the thread pool
    ok, health = _health_doc(services)
    registry = services.health_registry
    checks = registry.readiness() if registry is not None else {}
    ready = ok and all(v is None for v in checks.values())
    doc = ReadyOut(
        status="ready" if ready else "not_ready", checks=checks, failing=health["failing"]
    ).model_dump(mode="json")
    if ready:
        return JSONResponse(doc)
    reasons = [f"{name}: {why}" for name, why in checks.items() if why is not None]
    reasons += [f"{name} is failing liveness" for name in health["failing"]]
    return _unavailable("not-ready", "; ".join(reasons), "/readyz", doc)
