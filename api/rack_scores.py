"""Rack scores for the live view (heat map, `/v1/racks`, `/metrics`, the `racks` stream).

Each is a `RackScorer` (api/live_view.py): a name and a callable returning `{rack: value}`,
called once per live tick, so it must read what a background job keeps current and never
score anything itself.
"""

from __future__ import annotations

from api.live_view import RackScorer
from twin.anomaly.service import kept_current


def anomaly_rack_scorer(twin) -> RackScorer:
    """Calibrated anomaly score per rack (the same Bonferroni roll-up as `/v1/anomalies`)."""
    memo: dict[str, object] = {"of": None, "scores": {}}

    def scores() -> dict[str, float]:
        lv = kept_current(twin.site, twin.store)  # scoring runs there; this reads it
        if memo["of"] is not lv.latest:  # rolled up once per scoring round, not per tick
            # ids are site/hall/row/rack; the live view keys racks by name
            memo["scores"] = {
                r["id"].rsplit("/", 1)[-1]: r["score"] for r in lv.top("rack", limit=1_000_000)
            }
            memo["of"] = lv.latest
        return memo["scores"]

    return ("anomaly_score", scores)


def failure_rack_scorer(live_risk) -> RackScorer:
    """Highest failure risk among a rack's devices (FailureRiskService in
    twin/failure/service.py rolls it up once per rescore); empty while no model is approved."""
    return ("failure_risk", lambda: live_risk.by_rack)
