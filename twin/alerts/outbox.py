"""Durable outbox: notifications are rows in DuckDB, written in the same transaction as
the alert transitions that caused them, and delivered by a worker with retries.

Guarantees (see docs/alerts.md): a state change is committed together with its
notifications, so a crash loses neither; the worker retries with exponential backoff
until the receiver accepts (2xx) or `give_up_after` passes; per (receiver, group) entries
go out in order, so a resolved never overtakes its firing. Each notification has one
Idempotency-Key for all its attempts. The one window for a duplicate is a crash after
the receiver accepted and before the row was marked delivered; the retry then carries
the same key, so the receiver can drop it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import httpx
import orjson
from kafka.errors import KafkaError

from twin.alerts import alertmanager
from twin.alerts.lifecycle import AlertDb
from twin.alerts.receivers import (
    AlertmanagerReceiver,
    KafkaReceiver,
    Receiver,
    WebhookReceiver,
    redact_url,
)
from twin.alerts.webhook import IDEMPOTENCY_HEADER, signed_headers

log = logging.getLogger(__name__)

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS alert_outbox_seq START 1;
CREATE TABLE IF NOT EXISTS alert_outbox (
    id BIGINT NOT NULL,
    receiver VARCHAR NOT NULL,
    group_key VARCHAR NOT NULL,
    idempotency_key VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,            -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_error VARCHAR,
    delivered_at TIMESTAMP
);
"""
KEEP_DELIVERED = timedelta(days=7)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# httpx logs every request at INFO with its full URL ("HTTP Request: POST https://hooks
# .example/T0/B1/<token>"), and webhook paths carry secret tokens. While the deliverer sends,
# this flag is set in its context and a filter on the "httpx" logger drops those lines; the
# deliverer logs each attempt itself with the URL masked as /v1/receivers shows it. Other
# httpx clients in the process keep their logging.
_delivering: contextvars.ContextVar[bool] = contextvars.ContextVar("_delivering", default=False)


class _QuietDeliveryRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _delivering.get()


_QUIET = _QuietDeliveryRequests()


@contextlib.contextmanager
def _quiet_httpx() -> Iterator[None]:
    token = _delivering.set(True)
    try:
        yield
    finally:
        _delivering.reset(token)


def _target(receiver: Receiver) -> str:
    """Where a receiver delivers, as logs may show it (no path tokens, no credentials)."""
    if isinstance(receiver, KafkaReceiver):
        return f"kafka topic {receiver.topic}"
    return redact_url(receiver.url)


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Entry:
    id: int
    receiver: str
    group_key: str
    idempotency_key: str
    payload: str
    created_at: datetime
    attempts: int


class Outbox:
    def __init__(self, db: AlertDb) -> None:
        self.db = db
        db.cur().execute(SCHEMA)

    def enqueue(
        self,
        cur: duckdb.DuckDBPyConnection,
        receiver: str,
        group_key: str,
        payload: dict,
        now: datetime,
    ) -> str:
        """Call inside the transaction that stores the state change."""
        key = uuid.uuid4().hex
        cur.execute(
            "INSERT INTO alert_outbox (id, receiver, group_key, idempotency_key, "
            "payload, created_at, status, next_attempt_at) VALUES "
            "(nextval('alert_outbox_seq'), ?, ?, ?, ?, ?, 'pending', ?)",
            [receiver, group_key, key, orjson.dumps(payload).decode(), now, now],
        )
        return key

    def due(self, now: datetime, limit: int = 100) -> list[Entry]:
        """The oldest pending entry of each (receiver, group) chain, if its time has come."""
        rows = (
            self.db.cur()
            .execute(
                """
            SELECT id, receiver, group_key, idempotency_key, payload, created_at, attempts
            FROM (SELECT *, row_number() OVER (PARTITION BY receiver, group_key ORDER BY id)
                  AS rn FROM alert_outbox WHERE status = 'pending')
            WHERE rn = 1 AND next_attempt_at <= ? ORDER BY id LIMIT ?""",
                [now, limit],
            )
            .fetchall()
        )
        return [Entry(*r) for r in rows]

    def next_due_at(self) -> datetime | None:
        row = (
            self.db.cur()
            .execute("SELECT min(next_attempt_at) FROM alert_outbox WHERE status = 'pending'")
            .fetchone()
        )
        return row[0] if row else None

    def has_pending(self, receiver: str) -> bool:
        row = (
            self.db.cur()
            .execute(
                "SELECT count(*) FROM alert_outbox WHERE receiver = ? AND status = 'pending'",
                [receiver],
            )
            .fetchone()
        )
        return bool(row and row[0])

    def _update(self, sql: str, params: list) -> None:
        with self.db.transaction() as cur:
            cur.execute(sql, params)

    def mark_delivered(self, entry: Entry, now: datetime) -> None:
        self._update(
            "UPDATE alert_outbox SET status = 'delivered', delivered_at = ?, "
            "attempts = attempts + 1, last_error = NULL WHERE id = ?",
            [now, entry.id],
        )

    def mark_retry(self, entry: Entry, next_at: datetime, error: str) -> None:
        self._update(
            "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
            "last_error = ? WHERE id = ?",
            [next_at, error[:1000], entry.id],
        )

    def mark_failed(self, entry: Entry, error: str) -> None:
        self._update(
            "UPDATE alert_outbox SET status = 'failed', attempts = attempts + 1, "
            "last_error = ? WHERE id = ?",
            [error[:1000], entry.id],
        )

    def prune(self, now: datetime) -> None:
        self._update(
            "DELETE FROM alert_outbox WHERE status = 'delivered' AND delivered_at < ?",
            [now - KEEP_DELIVERED],
        )

    def stats(self) -> dict[str, dict[str, Any]]:
        rows = (
            self.db.cur()
            .execute(
                "SELECT receiver, count(*) FILTER (status = 'pending'), count(*) FILTER "
                "(status = 'delivered'), count(*) FILTER (status = 'failed'), max(delivered_at), "
                "arg_max(last_error, id) FILTER (last_error IS NOT NULL) FROM alert_outbox "
                "GROUP BY 1"
            )
            .fetchall()
        )
        return {
            r: {"pending": p, "delivered": d, "failed": f, "last_delivered_at": t, "last_error": e}
            for r, p, d, f, t, e in rows
        }


def backoff_s(receiver: Receiver, attempts: int) -> float:
    """attempts already made (>= 1) -> delay before the next, with +-10% jitter."""
    base = min(receiver.retry_max, receiver.retry_initial * 2 ** (attempts - 1))
    return base * random.uniform(0.9, 1.1)


class Deliverer:
    """Sends due outbox entries. One pass: `deliver_due`; forever: `run`."""

    def __init__(
        self, outbox: Outbox, receivers: list[Receiver], kafka_bootstrap: str | None = None
    ) -> None:
        self.outbox = outbox
        self.receivers = {r.name: r for r in receivers}
        self.kafka_bootstrap = kafka_bootstrap
        self.client = httpx.Client()
        # httpcore's DEBUG lines name host and port only; httpx's INFO line has the path
        logging.getLogger("httpx").addFilter(_QUIET)  # idempotent: one filter however many
        self._producers: dict[str, Any] = {}
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.delivered = 0
        self.last_pass_at: float | None = None  # heartbeat for /healthz (wall clock)
        self.last_error: str | None = None

    def deliver_due(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        down: set[str] = set()  # receivers that failed this pass: skip their other groups
        sent = 0
        for entry in self.outbox.due(now):
            receiver = self.receivers.get(entry.receiver)
            if receiver is None:
                self.outbox.mark_failed(entry, "receiver no longer configured")
                continue
            if entry.receiver in down:
                continue
            attempt = entry.attempts + 1
            try:
                outcome = self._send(receiver, entry)
            except DeliveryError as exc:
                age_s = (utcnow() - entry.created_at).total_seconds()
                if not exc.retryable or age_s > receiver.give_up_after:
                    log.error(
                        "notification %s to %s (%s) failed for good on attempt %d: %s",
                        entry.idempotency_key,
                        entry.receiver,
                        _target(receiver),
                        attempt,
                        exc,
                    )
                    self.outbox.mark_failed(entry, str(exc))
                else:
                    delay = backoff_s(receiver, attempt)
                    log.warning(
                        "notification %s to %s (%s) attempt %d failed: %s; retrying in %.1f s",
                        entry.idempotency_key,
                        entry.receiver,
                        _target(receiver),
                        attempt,
                        exc,
                        delay,
                    )
                    self.outbox.mark_retry(entry, utcnow() + timedelta(seconds=delay), str(exc))
                    down.add(entry.receiver)
                continue
            log.info(
                "notification %s to %s (%s) delivered on attempt %d: %s",
                entry.idempotency_key,
                entry.receiver,
                _target(receiver),
                attempt,
                outcome,
            )
            self.outbox.mark_delivered(entry, utcnow())
            sent += 1
        self.delivered += sent
        return sent

    def _send(self, receiver: Receiver, entry: Entry) -> str:
        """Send one entry; what the receiver answered ("HTTP 200"), or DeliveryError."""
        body = entry.payload.encode()
        if isinstance(receiver, KafkaReceiver):
            self._send_kafka(receiver, entry, body)
            return "stored"
        try:
            with _quiet_httpx():
                if isinstance(receiver, AlertmanagerReceiver):
                    alerts = alertmanager.postable(
                        orjson.loads(body), utcnow(), receiver.resend_interval
                    )
                    resp = alertmanager.push(self.client, receiver.url, alerts, receiver.timeout)
                else:
                    assert isinstance(receiver, WebhookReceiver)
                    secret = (
                        receiver.secret.get_secret_value().encode() if receiver.secret else None
                    )
                    resp = self.client.post(
                        receiver.url,
                        content=body,
                        timeout=receiver.timeout,
                        headers=signed_headers(secret, body, entry.idempotency_key),
                    )
        except httpx.HTTPError as exc:  # refused, timed out, reset: the receiver is down
            # some httpx errors quote the URL; the message is logged and shown by the API
            detail = str(exc).replace(receiver.url, redact_url(receiver.url))
            raise DeliveryError(f"{type(exc).__name__}: {detail}", retryable=True) from exc
        if resp.is_success:
            return f"HTTP {resp.status_code}"
        retryable = resp.status_code >= 500 or resp.status_code in (408, 429)
        raise DeliveryError(f"HTTP {resp.status_code}: {resp.text[:200]}", retryable)

    def _send_kafka(self, receiver: KafkaReceiver, entry: Entry, body: bytes) -> None:
        from domain.topics import make_producer

        bootstrap = receiver.bootstrap or self.kafka_bootstrap
        if not bootstrap:
            raise DeliveryError("no Kafka bootstrap configured", retryable=False)
        try:
            producer = self._producers.get(bootstrap)
            if producer is None:
                producer = self._producers[bootstrap] = make_producer(
                    bootstrap, "zstd", linger_ms=0
                )
            producer.send(
                receiver.topic,
                key=entry.group_key.encode(),
                value=body,
                headers=[(IDEMPOTENCY_HEADER, entry.idempotency_key.encode())],
            ).get(timeout=receiver.timeout)
        except KafkaError as exc:
            raise DeliveryError(f"Kafka: {exc}", retryable=True) from exc

    def run(self) -> None:
        last_prune = utcnow()
        while not self.stop_event.is_set():
            self.wake.clear()  # before the pass, so a wake during it is not lost
            try:
                self.deliver_due()
                if utcnow() - last_prune > timedelta(hours=1):
                    self.outbox.prune(utcnow())
                    last_prune = utcnow()
                nxt = self.outbox.next_due_at()
                self.last_pass_at, self.last_error = time.time(), None
            except Exception as exc:  # never let the worker die: log and retry shortly
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("outbox delivery pass failed")
                nxt = None
            wait = 1.0 if nxt is None else min(1.0, max(0.0, (nxt - utcnow()).total_seconds()))
            self.wake.wait(wait)

    def close(self) -> None:
        self.stop_event.set()
        self.wake.set()
        self.client.close()
        for p in self._producers.values():
            p.close(timeout=5)
