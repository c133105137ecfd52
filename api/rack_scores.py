"""Rack scores for the live view (heat map, `/v1/racks`, `/metrics`, the `racks` stream).

Each is a `RackScorer` (api/live_view.py): a name and a callable returning `{rack: value}`,
called once per live tick, so it must read what a background job keeps current and never
score anything itself.
"""

from __future__ import annotations

from api.live_view import RackScorer
from twin.anomaly.service import AnomalyService
from twin.failure.service import FailureRiskService


def anomaly_rack_scorer(service: AnomalyService) -> RackScorer:
    """Calibrated anomaly score per rack (the same Bonferroni roll-up as `/v1/anomalies`)."""
    of: object = None
    cached: dict[str, float] = {}

    def scores() -> dict[str, float]:
        nonlocal of, cached
        if of is not service.latest:  # rolled up once per scoring round, not per tick
            # ids are site/hall/row/rack; the live view keys racks by name
            cached = {
                r["id"].rsplit("/", 1)[-1]: r["score"] for r in service.top("rack", limit=1_000_000)
            }
            of = service.latest
        return cached

    return ("anomaly_score", scores)


def failure_rack_scorer(service: FailureRiskService) -> RackScorer:
    """Highest failure risk among a rack's devices (FailureRiskService in
    twin/failure/service.py rolls it up once per rescore); empty while no model is approved."""
    return ("failure_risk", lambda: service.by_rack)
