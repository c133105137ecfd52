"""FastAPI application for NOC tools: composes every router under one auth and error shape.

`create_app(twin, keys=...)` puts the services routes read (api/deps.py `Services`) on
`app.state.services` and includes every router of `ROUTERS` (plus any extra `routers=[...]`)
with `require_role(viewer)`, so every `/v1` endpoint needs a key. A route module has one
module-level `router = APIRouter(...)` whose endpoints take services with `Depends(...)`:
a new endpoint goes into a route module, a new route module into `ROUTERS`.
A router raises the bar per endpoint with
`dependencies=[Depends(require_role(Role.operator))]` (acknowledge, accept, reject) or
`Role.admin` (configuration). Errors from any router leave as RFC 9457 problem details,
and the OpenAPI document is post-processed so every operation lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from api import (
    dashboard,
    problems,
    routes_alerts,
    routes_anomaly,
    routes_capacity,
    routes_core,
    routes_deadletters,
    routes_demo,
    routes_failure,
    routes_health,
    routes_keys,
    routes_optimizer,
    routes_parts,
    routes_sustainability,
    routes_twin,
    routes_whatif,
    stream,
)
from api.auth import SCHEME_NAME, AuthGate, api_routes, require_role
from api.deps import Services
from api.keys import KeyStore, KeyStoreError, Role
from api.live_view import LiveView
from api.metrics import (
    CONTENT_TYPE_LATEST,
    MetricsRegistry,
    alerts_provider,
    capacity_provider,
    platform_provider,
    twin_provider,
)
from api.problems import FieldError, Problem, problem_content, problem_example, problem_response
from api.scenarios import PageLogLike, ScenarioRunnerLike
from ingest.stats import IngestStats
from twin.alerts.service import AlertService
from twin.anomaly.service import AnomalyService
from twin.capacity.service import CapacityService
from twin.events import EventBus
from twin.failure.service import FailureRiskService
from twin.health import HealthRegistry
from twin.optimizer.live import LiveOptimizer
from twin.parts import PartHistory
from twin.state import Twin
from twin.sustainability import SustainabilityService
from twin.whatif.service import WhatIfService

DEFAULT_HORIZON_S = 3600.0  # failure-risk horizon of an app built without a server

# every route module's router, in the order the OpenAPI document lists them
ROUTERS: tuple[APIRouter, ...] = (
    routes_twin.router,
    routes_parts.router,  # before routes_core: /v1/devices/{id:path} would take .../parts
    routes_core.router,
    stream.router,
    routes_keys.router,
    routes_alerts.router,
    routes_failure.router,
    routes_optimizer.router,
    routes_anomaly.router,
    routes_deadletters.router,
    routes_whatif.router,  # issue 27 (whatif)
    routes_sustainability.router,
    routes_capacity.router,  # issue 27 (capacity)
    routes_demo.router,  # issue 26 (demo-story): scenarios, runbooks, on-call inbox
)


def create_app(
    twin: Twin,
    health: Callable[[], dict] | None = None,
    *,
    health_registry: HealthRegistry | None = None,
    keys: KeyStore,
    bus: EventBus | None = None,
    live: LiveView | None = None,
    anomaly: AnomalyService | None = None,
    failure_risk: FailureRiskService | None = None,
    alerts: AlertService | None = None,
    parts: PartHistory | None = None,
    optimizer: LiveOptimizer | None = None,  # issue 19 (opt-live)
    capacity: CapacityService | None = None,
    routers: Sequence[APIRouter] = (),
    metrics: MetricsRegistry | None = None,
    open_healthz: bool = True,
    open_metrics: bool = False,
    ingest_stats: Callable[[], IngestStats | None] | None = None,
    kafka_lag: Callable[[], float | None] | None = None,
    whatif: WhatIfService | None = None,  # issue 27 (whatif)
    sustainability: SustainabilityService | None = None,
    scenarios: ScenarioRunnerLike | None = None,  # issue 26 (demo-story)
    oncall: PageLogLike | None = None,  # issue 26 (demo-story)
) -> FastAPI:
    """The API over `twin`. Services not given are built here without background threads
    (an anomaly scorer and a failure-risk service at the default horizon and registry,
    refreshed by the routes on demand); `alerts` absent: the alert routes answer 503."""
    app = FastAPI(
        title="dctwin",
        version="1.0.0",
        description="Digital-twin monitoring API for AI data centers. Every `/v1` "
        "endpoint needs an API key (`Authorization: Bearer <key>`); "
        "errors are RFC 9457 problem details; times are RFC 3339 "
        "UTC. See docs/api.md.",
    )
    problems.install(app)

    @app.exception_handler(KeyStoreError)
    async def _key_store(request: Request, exc: KeyStoreError) -> JSONResponse:
        # the key file stayed locked by another process (`dctwin apikey ...`, a backup)
        return problem_response(
            503,
            f"{exc}; retry shortly",
            request.url.path,
            "/problems/key-store-unavailable",
            headers={"Retry-After": "1"},
        )

    bus = bus if bus is not None else EventBus()

    viewer = [Depends(require_role(Role.viewer))]

    # liveness and readiness: open unless configured otherwise (DCTWIN_API_OPEN_HEALTHZ)
    app.include_router(routes_health.router, dependencies=[] if open_healthz else viewer)

    if metrics is None:
        metrics = MetricsRegistry()
        metrics.register(
            "platform", platform_provider(ingest_stats or (lambda: None), live, bus, kafka_lag)
        )
        metrics.register("twin", twin_provider(live or LiveView(twin, EventBus())))
    if alerts is not None:
        metrics.register("alerts", alerts_provider(alerts))
    # issue 27 (capacity): headroom and forecast, computed on request without a server job
    capacity = capacity if capacity is not None else CapacityService(twin)
    metrics.register("capacity", capacity_provider(capacity))
    services = Services(
        twin=twin,
        keys=keys,
        bus=bus,
        metrics=metrics,
        live=live,
        anomaly=anomaly if anomaly is not None else AnomalyService(twin.site, twin.store),
        failure_risk=failure_risk
        if failure_risk is not None
        else FailureRiskService(twin.store, DEFAULT_HORIZON_S),
        alerts=alerts,
        parts=parts if parts is not None else PartHistory(twin.store),
        health=health,
        health_registry=health_registry,
        optimizer=optimizer,
        whatif=whatif,
        sustainability=sustainability,
        capacity=capacity,
        scenarios=scenarios,
        oncall=oncall,
    )
    app.state.services = services
    app.add_middleware(AuthGate, keys_of=lambda: services.keys)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        dependencies=[] if open_metrics else viewer,
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format 0.0.4",
                "content": {
                    "text/plain": {
                        "schema": {"type": "string"},
                        "example": "# TYPE dctwin_pue gauge\n"
                        'dctwin_pue{scope="site",category="PUE1"} 1.28\n',
                    }
                },
            }
        },
    )
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    for r in (*ROUTERS, *routers):
        include(app, r)
    app.include_router(routes_demo.open_router)  # issue 26: runbook pages, open like /healthz
    dashboard.mount(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def include(app: FastAPI, router: APIRouter) -> None:
    """Include a feature router: every endpoint needs at least a viewer key."""
    app.include_router(router, dependencies=[Depends(require_role(Role.viewer))])


# -- OpenAPI post-processing ---------------------------------------------------------------


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["FieldError"] = FieldError.model_json_schema()
    prob = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    prob.pop("$defs", None)
    schemas["Problem"] = prob
    roles = {(r.path, m.lower()): r.role for r in api_routes(app) for m in r.methods}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            role = roles.get((path, method))
            _document_errors(op, role)
    app.openapi_schema = doc
    return doc


def _document_errors(op: dict[str, Any], role: Role | None) -> None:
    responses = op.setdefault("responses", {})
    params = op.get("parameters", [])
    if role is not None:
        op["security"] = [{SCHEME_NAME: []}]
        op["x-required-role"] = role.value
        op["description"] = (
            op.get("description", "")
            + f"\n\nRequires an API key with role **{role.value}** or above."
        ).strip()
        responses["401"] = {
            "description": "missing, invalid or revoked API key",
            "headers": {
                "WWW-Authenticate": {
                    "schema": {"type": "string"},
                    "description": 'Bearer realm="dctwin"',
                }
            },
            "content": problem_content(
                problem_example(401, "missing API key: send `Authorization: Bearer <key>`")
            ),
        }
        if role is not Role.viewer:
            responses["403"] = {
                "description": f"the key's role is below {role.value}",
                "content": problem_content(
                    problem_example(
                        403, f"this needs the {role.value} role; key 3f9a1c0b7d2e has viewer"
                    )
                ),
            }
    else:
        op["security"] = []
    if params or "requestBody" in op:
        responses["422"] = {
            "description": "invalid parameters, one entry per parameter",
            "content": problem_content(
                {
                    "type": "/problems/validation",
                    "title": "Request validation failed",
                    "status": 422,
                    "detail": "1 invalid parameter(s): query.start: Input should "
                    "have timezone info",
                    "instance": "/v1/series",
                    "errors": [
                        {
                            "location": "query",
                            "parameter": "start",
                            "message": "Input should have timezone info",
                            "type": "timezone_aware",
                        }
                    ],
                }
            ),
        }
    if params or "requestBody" in op:
        responses.setdefault(
            "400",
            {
                "description": "a parameter value the endpoint cannot use (unknown scope, "
                "a cursor from another list, ...)",
                "content": problem_content(
                    problem_example(
                        400,
                        "cursor is not valid: pass `next_cursor` from the previous page unchanged",
                    )
                ),
            },
        )
    if params:  # a path or query parameter can name something that does not exist
        responses.setdefault(
            "404",
            {
                "description": "no such resource",
                "content": problem_content(problem_example(404, "unknown rack 'rk999'")),
            },
        )
    if op.get("x-required-role") in ("operator", "admin") and "requestBody" in op:
        responses.setdefault(
            "409",
            {
                "description": "the resource is not in a state that "
                "allows this (e.g. already acknowledged)",
                "content": problem_content(problem_example(409, "alert 7 is resolved")),
            },
        )
    if role is not None:
        responses.setdefault(
            "503",
            {
                "description": "the feature behind this endpoint (e.g. the alert engine) is not "
                "running in this process",
                "content": problem_content(
                    problem_example(503, "the alert engine is not running in this process")
                ),
            },
        )
    responses["500"] = {
        "description": "unexpected server error (logged with a reference)",
        "content": problem_content(
            problem_example(500, "unexpected server error; logged with reference 3f2a9c1d0b7e")
        ),
    }
