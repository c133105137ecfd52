"""Live-stream feeds (`GET /v1/stream` event types `anomalies`, `incidents` and
`recommendations`).

Each is a `Feed` (api/live_view.py): read once per live tick and published only when its value
changed, so a client sees the top anomalies and the recommendations as they change.
Both read what other parts keep current; neither scores nor queries much.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb

from api.live_view import Feed
from twin.anomaly.service import AnomalyService
from twin.optimizer.recommendations import RecommendationStore

TOP_ANOMALIES = 10
ALARM_SCORE = 0.5
RECENT_RECOMMENDATIONS = 20


def anomalies_feed(
    service: AnomalyService, limit: int = TOP_ANOMALIES, min_score: float = ALARM_SCORE
) -> Feed:
    """Devices at or above `min_score`, top `limit`, with the metric that drives each
    (the scores the service's background refresh keeps current)."""

    def top() -> dict[str, Any]:
        items = [
            {
                "id": r["id"],
                "device_class": r["device_class"],
                "score": round(r["score"], 2),
                "top_metric": r["top_metrics"][0]["metric"] if r["top_metrics"] else None,
            }
            for r in service.top("device", min_score=min_score, limit=limit)
        ]
        return {"min_score": min_score, "items": items}

    return ("anomalies", top)


# -- issue 20: anomaly incidents ------------------------------------------------------------
RECENT_INCIDENTS = 20


def incidents_feed(service: AnomalyService, limit: int = RECENT_INCIDENTS) -> Feed:
    """Event type `incidents`: open incidents (and the latest resolved) with their root
    cause; published when one opens, grows, changes root cause or resolves (not on every
    alarming interval: the last alarm time is left out)."""

    def recent() -> dict[str, Any]:
        items = []
        for i in service.incident_list("all", limit):
            root = i["root_cause"] or {}
            items.append(
                {
                    "id": i["id"],
                    "state": i["state"],
                    "severity": i["severity"],
                    "opened": i["opened"].isoformat() + "Z",
                    "root_device": root.get("device_id"),
                    "root_metric": root.get("metric"),
                    "devices": i["devices"],
                }
            )
        return {"warming_up": service.warming_up, "items": items}

    return ("incidents", recent)


def recommendations_feed(
    store: Callable[[], RecommendationStore], limit: int = RECENT_RECOMMENDATIONS
) -> Feed:
    """The newest recommendations' id, status and predicted savings (a proposal, an
    operator's decision and a measured outcome each change it). `store` opens the
    optimizer's recommendation store (api/deps.py `Services.recommendations`)."""

    def recent() -> dict[str, Any]:
        try:
            rows = store().list(None, limit)
        except duckdb.Error:  # a read-only store no optimizer has written to
            rows = []
        return {
            "items": [
                {
                    "id": r["id"],
                    "status": r["status"],
                    "predicted_savings_kw": r["predicted_savings_kw"],
                    "realised_savings_kw": r["realised_savings_kw"],
                }
                for r in rows
            ]
        }

    return ("recommendations", recent)
