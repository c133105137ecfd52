"""Live-stream feeds (`GET /v1/stream` event types `anomalies` and `recommendations`).

Each is a `Feed` (api/live_view.py): read once per live tick and published only when its value
changed, so a client sees the top anomalies and the recommendations as they change.
Both read what other parts keep current; neither scores nor queries much.
"""

from __future__ import annotations

from typing import Any

import duckdb

from api.live_view import Feed
from twin.anomaly.service import kept_current

TOP_ANOMALIES = 10
ALARM_SCORE = 0.5
RECENT_RECOMMENDATIONS = 20


def anomalies_feed(twin, limit: int = TOP_ANOMALIES, min_score: float = ALARM_SCORE) -> Feed:
    """Devices at or above `min_score`, top `limit`, with the metric that drives each."""

    def top() -> dict[str, Any]:
        lv = kept_current(twin.site, twin.store)
        items = [
            {
                "id": r["id"],
                "device_class": r["device_class"],
                "score": round(r["score"], 2),
                "top_metric": r["top_metrics"][0]["metric"] if r["top_metrics"] else None,
            }
            for r in lv.top("device", min_score=min_score, limit=limit)
        ]
        return {"min_score": min_score, "items": items}

    return ("anomalies", top)


def recommendations_feed(twin, limit: int = RECENT_RECOMMENDATIONS) -> Feed:
    """The newest recommendations' id, status and predicted savings (a proposal, an
    operator's decision and a measured outcome each change it)."""

    def recent() -> dict[str, Any]:
        try:
            rows = (
                twin.store.cursor()
                .execute(
                    "SELECT id, status, predicted_savings_kw, realised_savings_kw "
                    "FROM recommendations ORDER BY id DESC LIMIT ?",
                    [limit],
                )
                .fetchall()
            )
        except duckdb.CatalogException:  # no optimizer has written here yet
            rows = []
        return {
            "items": [
                {"id": i, "status": st, "predicted_savings_kw": p, "realised_savings_kw": r}
                for i, st, p, r in rows
            ]
        }

    return ("recommendations", recent)
