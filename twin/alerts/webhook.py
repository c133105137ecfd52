"""Alertmanager webhook payload (version 4) and request signing.

Receivers built for Alertmanager's webhook (PagerDuty/Opsgenie/Slack bridges) accept
these payloads unchanged. Each request also carries:
  Idempotency-Key      one per notification, the same on every retry
  X-Dctwin-Timestamp   Unix seconds when this attempt was signed
  X-Dctwin-Signature   sha256=HEX(HMAC-SHA256(secret, timestamp + "." + body))
Signing the timestamp lets a receiver reject replays older than a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

IDEMPOTENCY_HEADER = "Idempotency-Key"
TIMESTAMP_HEADER = "X-Dctwin-Timestamp"
SIGNATURE_HEADER = "X-Dctwin-Signature"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert


def rfc3339(t: datetime | None) -> str:
    """Naive-UTC datetime -> RFC 3339 with Z; None -> Go's zero time as Alertmanager sends."""
    if t is None:
        return ZERO_TIME
    return t.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True)
class AlertView:
    """What a notification says about one alert."""

    alert_id: int
    fingerprint: str
    status: str  # firing | resolved
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None


def alert_doc(a: AlertView, external_url: str) -> dict:
    return {
        "status": a.status,
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "startsAt": rfc3339(a.starts_at),
        "endsAt": rfc3339(a.ends_at if a.status == "resolved" else None),
        "generatorURL": f"{external_url}/v1/alerts/{a.alert_id}",
        "fingerprint": a.fingerprint,
    }


def _common(dicts: list[Mapping[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def webhook_payload(
    receiver: str,
    group_key: str,
    group_labels: Mapping[str, str],
    alerts: list[AlertView],
    external_url: str,
    max_alerts: int = 0,
) -> dict:
    """The group's alerts, firing first. `status` is firing while any alert is."""
    ordered = sorted(alerts, key=lambda a: (a.status != "firing", a.starts_at, a.fingerprint))
    shown = ordered[:max_alerts] if max_alerts else ordered
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": len(ordered) - len(shown),
        "status": "firing" if any(a.status == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": dict(group_labels),
        "commonLabels": _common([a.labels for a in ordered]),
        "commonAnnotations": _common([a.annotations for a in ordered]),
        "externalURL": external_url,
        "alerts": [alert_doc(a, external_url) for a in shown],
    }


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(
    secret: bytes | None, body: bytes, idempotency_key: str, now_s: float | None = None
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: idempotency_key,
        "User-Agent": "dctwin-alerts/0.1",
    }
    if secret:
        ts = str(int(now_s if now_s is not None else time.time()))
        headers[TIMESTAMP_HEADER] = ts
        headers[SIGNATURE_HEADER] = sign(secret, ts, body)
    return headers


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = 300.0,
    now_s: float | None = None,
) -> bool:
    """For receivers: constant-time check of signature and timestamp freshness."""
    lower = {k.lower(): v for k, v in headers.items()}
    ts, sig = lower.get(TIMESTAMP_HEADER.lower()), lower.get(SIGNATURE_HEADER.lower())
    if not ts or not sig or not ts.isdigit():
        return False
    now = now_s if now_s is not None else time.time()
    if abs(now - int(ts)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), sig)
