"""Test helpers for alerts: write constructed samples/events through the store's real write
path, and a real HTTP receiver on loopback that records (and can refuse) requests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from domain.contract import Event, EventBatch, SampleColumns, TelemetryBatch
from ingest.store import Store

_seq = iter(range(1, 10**9))


def ms(t: datetime) -> int:
    return int(t.replace(tzinfo=UTC).timestamp() * 1000)


def utc(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


def write_samples(store: Store, kind: str, rows: list[tuple[str, str, float, datetime]]) -> None:
    """rows: (device_id, metric, value, read_time naive UTC), one batch."""
    b = TelemetryBatch(
        collector="test",
        kind=kind,
        site="sv1",
        rack="rk101",
        seq=next(_seq),
        interval_s=1.0,
        sent_time_ms=ms(rows[0][3]),
        samples=SampleColumns(
            device_id=[r[0] for r in rows],
            metric=[r[1] for r in rows],
            value=[float(r[2]) for r in rows],
            read_time_ms=[ms(r[3]) for r in rows],
        ),
    )
    store.write([b], [], {})


def write_events(store: Store, events: list[tuple[str, str, datetime, str, dict]]) -> None:
    """events: (device_id, kind, read_time, message, attrs)."""
    b = EventBatch(
        collector="test",
        site="sv1",
        rack="rk101",
        seq=next(_seq),
        sent_time_ms=ms(events[0][2]),
        events=[
            Event(device_id=d, kind=k, severity="critical", read_time_ms=ms(t), message=m, attrs=a)
            for d, k, t, m, a in events
        ],
    )
    store.write([], [b], {})


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what we answered
    at: float = field(default_factory=time.time)


class HttpReceiver:
    """A real HTTP server on 127.0.0.1. The first `fail_first` requests get `fail_status`;
    every request is recorded with the status it got."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, port: int = 0) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    failing = len(outer.requests) < outer.fail_first
                    status = outer.fail_status if failing else 200
                    outer.requests.append(Request(self.path, dict(self.headers), body, status))
                    outer.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def accepted(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.status == 200]

    def wait_for(self, n_accepted: int, timeout_s: float = 30.0) -> list[Request]:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while sum(r.status == 200 for r in self.requests) < n_accepted:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{n_accepted} notifications not received within "
                        f"{timeout_s}s; got {len(self.requests)} requests"
                    )
                self.arrived.wait(left)
            return [r for r in self.requests if r.status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- Alertmanager webhook payload, version 4 ---------------------------------------------
# Written from Alertmanager's documentation of webhook_config (the JSON it POSTs), kept
# independent of twin/alerts/webhook.py so that it checks it; test_alertmanager.py also
# validates a payload the real Alertmanager sends against it.

from typing import Literal  # noqa: E402

from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"


class AmWebhookAlert(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str = Field(alias="startsAt", pattern=_TIME)
    ends_at: str = Field(alias="endsAt", pattern=_TIME)
    generator_url: str = Field(alias="generatorURL")
    fingerprint: str = Field(pattern=r"^[0-9a-f]{16}$")


class AmWebhookV4(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal["4"]
    group_key: str = Field(alias="groupKey", min_length=1)
    truncated_alerts: int = Field(alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = Field(min_length=1)
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")
    alerts: list[AmWebhookAlert] = Field(min_length=1)
