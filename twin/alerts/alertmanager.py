"""Push to a real Alertmanager over its v2 API (POST /api/v2/alerts).

Alertmanager resolves an alert whose endsAt has passed, so firing alerts are sent with
endsAt = send time + 4 x resend interval and re-sent every interval (what Prometheus
does). endsAt is filled in at send time: an outbox entry that waited out an outage must
not arrive already expired.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from twin.alerts.webhook import AlertView, rfc3339


def queued_alerts(alerts: list[AlertView], external_url: str) -> dict:
    """Outbox form: firing alerts carry endsAt null until sent."""
    return {
        "alerts": [
            {
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(a.ends_at) if a.status == "resolved" else None,
                "generatorURL": f"{external_url}/v1/alerts/{a.alert_id}",
            }
            for a in alerts
        ]
    }


def postable(doc: dict, now: datetime, resend_interval_s: float) -> list[dict]:
    valid_until = rfc3339(now + timedelta(seconds=4 * resend_interval_s))
    return [{**a, "endsAt": a["endsAt"] or valid_until} for a in doc["alerts"]]


def push(
    client: httpx.Client, base_url: str, alerts: list[dict], timeout_s: float
) -> httpx.Response:
    return client.post(f"{base_url}/api/v2/alerts", json=alerts, timeout=timeout_s)
