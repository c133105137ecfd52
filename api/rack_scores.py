"""Rack scores for the live view (heat map, `/v1/racks`, `/metrics`, the `racks` stream).

Each is a `RackScorer` (api/live.py): a name and a callable returning `{rack: value}`,
called once per live tick, so it must read what a background job keeps current and never
score anything itself.
"""

from __future__ import annotations

from api.live import RackScorer
from twin.anomaly.live import live_for


def anomaly_rack_scorer(twin) -> RackScorer:
    """Calibrated anomaly score per rack (the same Bonferroni roll-up as `/v1/anomalies`)."""
    def scores() -> dict[str, float]:
        lv = live_for(twin.site, twin.store)
        lv.start_background()  # scoring runs there; this reads its latest table
        # ids are site/hall/row/rack; the live view keys racks by name
        return {r["id"].rsplit("/", 1)[-1]: r["score"]
                for r in lv.top("rack", limit=1_000_000)}
    return ("anomaly_score", scores)


def failure_rack_scorer(live_risk) -> RackScorer:
    """Highest failure risk among a rack's devices (twin.failure.live.LiveRisk's table,
    rescored by its own thread once per tick); empty while no model is approved."""
    def scores() -> dict[str, float]:
        out: dict[str, float] = {}
        for row in list(live_risk.by_device.values()):
            rack = row.get("rack")
            if rack:
                out[rack] = max(out.get(rack, 0.0), float(row["risk"]))
        return out
    return ("failure_risk", scores)
