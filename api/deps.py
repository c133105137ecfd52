"""The services the API's routes read, and the FastAPI dependencies that hand them out.

`create_app` stores one `Services` on `app.state.services`; an endpoint asks for what it
needs with `Depends(twin_of)`, `Depends(anomaly_of)`, ... and never reaches into
`app.state` itself. A feature whose service is absent answers 503 (problem details).

Who builds the services: `dctwin.server.Server` (one per process, with their background
jobs), or `create_app` for what it is not given (no background threads: readers then
refresh on demand).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from api.keys import KeyStore
from api.live_view import LiveView
from api.metrics import MetricsRegistry
from api.scenarios import PageLogLike, ScenarioRunnerLike
from twin.alerts.service import AlertService
from twin.anomaly.service import AnomalyService
from twin.capacity.service import CapacityService
from twin.events import EventBus
from twin.failure.service import FailureRiskService
from twin.health import HealthRegistry
from twin.optimizer.live import LiveOptimizer
from twin.optimizer.recommendations import RecommendationStore, store_opener
from twin.parts import PartHistory
from twin.state import Twin
from twin.sustainability import SustainabilityService
from twin.whatif.service import WhatIfService


@dataclass
class Services:
    """Everything a route may read; one per app."""

    twin: Twin
    keys: KeyStore
    bus: EventBus
    metrics: MetricsRegistry
    live: LiveView | None = None  # None: routes compute a snapshot per request
    anomaly: AnomalyService | None = None
    failure_risk: FailureRiskService | None = None  # at the serving horizon
    alerts: AlertService | None = None
    parts: PartHistory | None = None  # slot -> part (GPU/PSU identity) history
    health: Callable[[], dict[str, Any]] | None = None  # extra /healthz fields (counters)
    # the process's component heartbeats (/healthz, /readyz); None: no background jobs
    health_registry: HealthRegistry | None = None
    optimizer: LiveOptimizer | None = None  # issue 19: live proposals and the write path
    # issue 27 (whatif): None: what-if runs answer 503; sustainability is built if absent
    whatif: WhatIfService | None = None
    sustainability: SustainabilityService | None = None
    capacity: CapacityService | None = None  # issue 27 (capacity): headroom and forecast
    # issue 26 (demo-story): scenario runner on a simulated site, the demo's on-call inbox
    scenarios: ScenarioRunnerLike | None = None
    oncall: PageLogLike | None = None
    _risk_by_horizon: dict[float, FailureRiskService] = field(default_factory=dict)
    _risk_lock: threading.Lock = field(default_factory=threading.Lock)
    # opens the optimizer's recommendation store over the twin's database
    recommendations: Callable[[], RecommendationStore] = field(init=False)

    def risk_for(self, horizon_s: float) -> FailureRiskService | None:
        """The failure-risk service of a horizon: the serving one, or one made on first use
        for another horizon (same model registry, refreshed by the route on demand)."""
        base = self.failure_risk
        if base is None:
            return None
        if float(horizon_s) == base.horizon_s:
            return base
        with self._risk_lock:
            svc = self._risk_by_horizon.get(float(horizon_s))
            if svc is None:
                svc = self._risk_by_horizon[float(horizon_s)] = FailureRiskService(
                    base.store, horizon_s, base.root, base.tick_s
                )
            return svc

    def __post_init__(self) -> None:
        self.recommendations = store_opener(self.twin.store.cursor)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# The getters below are `async def` on purpose: FastAPI runs a plain `def` dependency in
# its thread pool, a hop per dependency per request (measured: /v1/devices p99 3 ms ->
# 7-10 ms at 500 req/s with four of them); they only read app.state and never block.


async def all_services(request: Request) -> Services:
    return services_of(request)


def _absent(feature: str) -> HTTPException:
    return HTTPException(503, f"the {feature} is not running in this process")


async def twin_of(request: Request) -> Twin:
    return services_of(request).twin


async def keys_of(request: Request) -> KeyStore:
    return services_of(request).keys


async def bus_of(request: Request) -> EventBus:
    return services_of(request).bus


async def live_of(request: Request) -> LiveView | None:
    """The live view, or None (a route then reads the store per request)."""
    return services_of(request).live


async def anomaly_of(request: Request) -> AnomalyService:
    svc = services_of(request).anomaly
    if svc is None:
        raise _absent("anomaly scorer")
    return svc


async def optional_anomaly_of(request: Request) -> AnomalyService | None:
    return services_of(request).anomaly


async def optional_failure_risk_of(request: Request) -> FailureRiskService | None:
    return services_of(request).failure_risk


async def parts_of(request: Request) -> PartHistory:
    svc = services_of(request).parts
    if svc is None:
        raise _absent("part history")
    return svc


async def optional_parts_of(request: Request) -> PartHistory | None:
    return services_of(request).parts


async def alerts_of(request: Request) -> AlertService:
    svc = services_of(request).alerts
    if svc is None:
        raise _absent("alert engine")
    return svc


async def capacity_of(request: Request) -> CapacityService:  # issue 27 (capacity)
    svc = services_of(request).capacity
    if svc is None:
        raise _absent("capacity service")
    return svc


async def recommendations_of(request: Request) -> RecommendationStore:
    return services_of(request).recommendations()


async def optimizer_of(request: Request) -> LiveOptimizer | None:
    """The live optimizer (issue 19), or None: accept then only records the decision."""
    return services_of(request).optimizer


# issue 27 (whatif)
async def whatif_of(request: Request) -> WhatIfService:
    svc = services_of(request).whatif
    if svc is None:
        raise _absent("what-if runner")
    return svc


async def sustainability_of(request: Request) -> SustainabilityService:
    services = services_of(request)
    if services.sustainability is None:
        services.sustainability = SustainabilityService(services.twin)
    return services.sustainability


# `name: TwinDep` in an endpoint's signature is `name: Twin = Depends(twin_of)`
TwinDep = Annotated[Twin, Depends(twin_of)]
KeysDep = Annotated[KeyStore, Depends(keys_of)]
BusDep = Annotated[EventBus, Depends(bus_of)]
LiveDep = Annotated[LiveView | None, Depends(live_of)]
AnomalyDep = Annotated[AnomalyService, Depends(anomaly_of)]
OptionalAnomalyDep = Annotated[AnomalyService | None, Depends(optional_anomaly_of)]
OptionalFailureRiskDep = Annotated[FailureRiskService | None, Depends(optional_failure_risk_of)]
PartsDep = Annotated[PartHistory, Depends(parts_of)]
OptionalPartsDep = Annotated[PartHistory | None, Depends(optional_parts_of)]
AlertsDep = Annotated[AlertService, Depends(alerts_of)]
CapacityDep = Annotated[CapacityService, Depends(capacity_of)]  # issue 27 (capacity)
RecommendationsDep = Annotated[RecommendationStore, Depends(recommendations_of)]
ServicesDep = Annotated[Services, Depends(all_services)]
OptimizerDep = Annotated[LiveOptimizer | None, Depends(optimizer_of)]
WhatIfDep = Annotated[WhatIfService, Depends(whatif_of)]  # issue 27 (whatif)
SustainabilityDep = Annotated[SustainabilityService, Depends(sustainability_of)]
