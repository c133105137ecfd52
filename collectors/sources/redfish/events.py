"""Redfish events in the background: an SSE subscription, or polling the event logs.

One thread per source. It asks the service's EventService for `ServerSentEventUri`; if
offered (and `events` is `auto` or `sse`) it holds that stream open and turns each
`data:` payload (a Redfish `Event` with `Events[]` records) into contract Events. If not
(or `events = "poll"`), it polls the LogServices' `Entries` collections every
`event_poll_s`: entries present at the first poll are history, later ones become events.
Either way the events wait in a bounded queue until the source's next `read()`, whose
schedule never depends on this thread. A dropped stream, a refused connection, a bad
payload or a failed poll is a counted error with a warning line, reported again as one
`source_error` event by the next read; the thread reconnects with exponential backoff.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from collectors.base import now_ms
from collectors.sources.redfish import fields as rmap
from domain.contract import (
    CONTROL_CHARS,
    MAX_ATTR_CHARS,
    MAX_EVENT_MESSAGE_CHARS,
    Event,
    Severity,
)

if TYPE_CHECKING:
    from collectors.sources.redfish.source import RedfishSource

log = logging.getLogger(__name__)

ROOT = "/redfish/v1"
MAX_QUEUED = 10_000  # events waiting for read(); older ones are dropped (and counted) first
MAX_PAGES = 50  # @odata.nextLink pages followed per log per poll
_CONTROL = re.compile(CONTROL_CHARS)
_SEVERITY: dict[str, Severity] = {"OK": "info", "Warning": "warning", "Critical": "critical"}


class _ClosingError(Exception):
    """The source is closing."""


class EventError(RuntimeError):
    """Something the event thread counts as an error (and retries)."""


def _text(value: Any, limit: int = MAX_ATTR_CHARS) -> str:
    return _CONTROL.sub(" ", str(value))[:limit]


def _link(doc: dict[str, Any], name: str) -> str | None:
    target = doc.get(name)
    if isinstance(target, dict) and isinstance(target.get("@odata.id"), str):
        return str(target["@odata.id"]).rstrip("/")
    return None


@dataclass
class EventStats:
    received: int = 0  # contract events queued
    errors: int = 0  # drops, refused connections, bad payloads, failed polls
    connects: int = 0  # stream connections opened (the first and every reconnect)
    dropped: int = 0  # events lost to the queue bound
    polls: int = 0  # completed log polls
    mode: str = "starting"  # starting | sse | poll


class EventListener:
    def __init__(self, source: RedfishSource) -> None:
        self.source = source
        self.cfg = source.config
        self.stats = EventStats()
        self._queue: deque[Event] = deque()
        self._errors: list[str] = []  # since the last drain
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # own connection pool: a stream holds its connection for hours
        self.client = source.make_client(self.cfg.timeout_s)
        self._last_event_id: str | None = None
        self._seen: dict[str, set[str]] = {}  # log entries uri -> entry ids at last poll
        self._entry_uris: list[str] | None = None
        self._live_socket: socket.socket | None = None
        self._delay = self.cfg.event_retry_s
        self._thread = threading.Thread(
            target=self._run, name=f"redfish-events-{source.name}", daemon=True
        )

    # -- interface to the source ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def drain(self) -> tuple[list[Event], list[str]]:
        with self._lock:
            events = list(self._queue)
            self._queue.clear()
            errors, self._errors = self._errors, []
        return events, errors

    def close(self) -> None:
        self._stop.set()
        sock = self._live_socket
        if sock is not None:
            # wakes a read blocked on the stream (closing alone does not, on Linux)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.client.close()
        if self._thread.is_alive():
            self._thread.join(timeout=max(2.0, self.cfg.timeout_s))

    # -- thread --------------------------------------------------------------------------
    def _put(self, event: Event) -> None:
        full = False
        with self._lock:
            if len(self._queue) >= MAX_QUEUED:  # nobody has read for long: keep the newest
                self._queue.popleft()
                self.stats.dropped += 1
                full = not any("queue full" in e for e in self._errors)
            self._queue.append(event)
            self.stats.received += 1
        if full:
            self._error(f"event queue full ({MAX_QUEUED}): dropping the oldest events")

    def _error(self, message: str) -> None:
        with self._lock:
            self.stats.errors += 1
            self._errors.append(message)
        log.warning("redfish source %s: %s", self.source.name, message)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _ClosingError

    def _run(self) -> None:
        mode: str | None = None
        sse_uri: str | None = None
        while not self._stop.is_set():
            try:
                if mode is None:
                    mode, sse_uri = self._choose_mode()
                    self.stats.mode = mode
                if mode == "sse" and sse_uri:
                    self._stream(sse_uri)  # returns only by raising
                else:
                    self._poll_logs()
                    self._delay = self.cfg.event_retry_s
                    self._sleep(self.cfg.event_poll_s)
                    continue
            except _ClosingError:
                return
            except Exception as exc:  # whatever it is, count it and retry: never die
                if self._stop.is_set():
                    return
                what = "" if isinstance(exc, EventError) else "event listener: "
                if mode == "poll":
                    what = "event log polling failed: "
                self._error(f"{what}{_describe(exc)}; retrying in {self._delay:g} s")
                mode = None  # ask the service again: it may have rebooted or changed
                self._entry_uris = None
            try:
                self._sleep(self._delay)
            except _ClosingError:
                return
            self._delay = min(self._delay * 2, self.cfg.event_retry_max_s)

    def _get(self, uri: str) -> dict[str, Any]:
        doc, _ = self.source.get(uri, self.client)
        if doc is None:
            raise EventError(f"GET {uri}: HTTP 404")
        return doc

    def _choose_mode(self) -> tuple[str, str | None]:
        mode = self.cfg.events
        if mode == "poll":
            return "poll", None
        root = self._get(ROOT)
        svc_uri = _link(root, "EventService")
        svc = self._get(svc_uri) if svc_uri else {}
        sse = svc.get("ServerSentEventUri")
        if isinstance(sse, str) and sse and svc.get("ServiceEnabled", True) is not False:
            return "sse", sse
        if mode == "sse":
            raise EventError(f"{self.cfg.base_url} offers no EventService.ServerSentEventUri")
        return "poll", None

    # -- SSE -----------------------------------------------------------------------------
    def _stream(self, uri: str) -> None:
        """Hold the stream open until it drops (raises EventError) or the source closes."""
        headers = {"Accept": "text/event-stream"}
        if self._last_event_id is not None:
            headers["Last-Event-ID"] = self._last_event_id  # the service may replay
        try:
            # a stream may be quiet for long: only its read waits up to the idle timeout
            timeout = httpx.Timeout(self.cfg.timeout_s, read=self.cfg.event_idle_timeout_s)
            with self.source.stream(uri, self.client, headers, timeout) as resp:
                if resp.status_code != 200:
                    raise EventError(f"event stream {uri}: HTTP {resp.status_code}")
                ctype = resp.headers.get("Content-Type", "")
                if not ctype.startswith("text/event-stream"):
                    raise EventError(f"event stream {uri}: Content-Type {ctype!r}")
                stream = resp.extensions.get("network_stream")
                self._live_socket = stream.get_extra_info("socket") if stream else None
                log.info("redfish source %s: event stream %s open", self.source.name, uri)
                self.stats.connects += 1
                self._delay = self.cfg.event_retry_s  # connected: the next drop backs off afresh
                try:
                    for event_id, data in _sse_messages(resp.iter_lines(), self._stop):
                        if event_id is not None:
                            self._last_event_id = event_id
                        self._handle_payload(data)
                except httpx.HTTPError as exc:
                    if self._stop.is_set():
                        raise _ClosingError from exc
                    raise EventError(f"event stream {uri} dropped: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            if self._stop.is_set():
                raise _ClosingError from exc
            raise EventError(f"event stream {uri}: cannot connect: {_describe(exc)}") from exc
        finally:
            self._live_socket = None
        if self._stop.is_set():
            raise _ClosingError
        raise EventError(f"event stream {uri} ended by the service")

    def _handle_payload(self, data: str) -> None:
        try:
            payload = json.loads(data)
        except ValueError as exc:
            self._error(f"event stream: payload is not JSON ({exc}): {data[:120]!r}")
            return
        if not isinstance(payload, dict):
            self._error(f"event stream: payload is not a JSON object: {data[:120]!r}")
            return
        if "MetricReport" in str(payload.get("@odata.type", "")):
            return  # telemetry-service reports share the stream; not events
        records = payload.get("Events")
        if not isinstance(records, list):
            self._error(f"event stream: payload without Events[]: {data[:120]!r}")
            return
        for rec in records:
            if isinstance(rec, dict):
                self._emit(rec, None)

    # -- log polling ---------------------------------------------------------------------
    def _log_entry_uris(self) -> list[str]:
        if self.cfg.event_log_services:
            services = [f"{ROOT}/{p}" for p in self.cfg.event_log_services]
        else:
            services = []
            root = self._get(ROOT)
            for coll in ("Managers", "Systems", "Chassis"):
                coll_uri = _link(root, coll)
                if not coll_uri:
                    continue
                for member in self._get(coll_uri).get("Members") or []:
                    uri = _link({"m": member}, "m")
                    if not uri:
                        continue
                    ls = _link(self._get(uri), "LogServices")
                    if not ls:
                        continue
                    for svc in self._get(ls).get("Members") or []:
                        svc_uri = _link({"m": svc}, "m")
                        if svc_uri:
                            services.append(svc_uri)
        out = []
        for svc_uri in dict.fromkeys(services):
            entries = _link(self._get(svc_uri), "Entries")
            if entries:
                out.append(entries)
        return out

    def _poll_logs(self) -> None:
        if self._entry_uris is None or self.stats.polls % 100 == 99:
            self._entry_uris = self._log_entry_uris()  # rediscovered now and then
        for uri in self._entry_uris:
            entries = self._entries(uri)
            ids = {eid for eid, _ in entries}
            baseline = uri not in self._seen
            seen = self._seen.get(uri, set())
            for eid, entry in entries:
                if baseline or eid in seen:
                    continue
                if "MessageId" not in entry and "Message" not in entry:
                    entry = self._get(eid)  # the collection lists links only
                self._emit(entry, eid)
            self._seen[uri] = ids
        self.stats.polls += 1

    def _entries(self, uri: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        page: str | None = uri
        pages: set[str] = set()
        while page and page not in pages and len(pages) < MAX_PAGES:
            pages.add(page)
            doc = self._get(page)
            for m in doc.get("Members") or []:
                if isinstance(m, dict):
                    eid = str(m.get("@odata.id") or f"{uri}/{m.get('Id')}").rstrip("/")
                    out.append((eid, m))
            nxt = doc.get("Members@odata.nextLink") or doc.get("@odata.nextLink")
            page = str(nxt) if nxt else None
        return out

    # -- records -> contract events ------------------------------------------------------
    def _emit(self, rec: dict[str, Any], log_entry: str | None) -> None:
        """One EventRecord (SSE) or LogEntry (poll) as a contract Event."""
        links = rec.get("Links")
        if not isinstance(links, dict):
            links = {}
        origin = _link(rec, "OriginOfCondition") or _link(links, "OriginOfCondition")
        mid = str(rec.get("MessageId") or "")
        sev_text = str(rec.get("MessageSeverity") or rec.get("Severity") or "")
        message = str(rec.get("Message") or mid or "Redfish event")
        attrs: dict[str, str | int | float | bool | None] = {
            "source": self.name,
            "message_id": _text(mid),
            "message": _text(message),
            "origin": _text(origin or ""),
        }
        for key, attr in (
            ("EventType", "event_type"),
            ("EventId", "event_id"),
            ("EventTimestamp", "event_timestamp"),
            ("Created", "event_timestamp"),
            ("EntryType", "entry_type"),
        ):
            if rec.get(key) is not None:
                attrs[attr] = _text(rec[key])
        if log_entry:
            attrs["log_entry"] = _text(log_entry)
        device = self.source.device_id(origin.replace("#", "")) if origin else None
        try:
            event = Event(
                device_id=device or self.cfg.device_prefix,
                kind=rmap.record_event_kind(origin or "", mid),
                severity=_SEVERITY.get(sev_text, "info" if not sev_text else "warning"),
                read_time_ms=now_ms(),
                message=message[:MAX_EVENT_MESSAGE_CHARS],
                attrs=attrs,
            )
        except ValidationError as exc:
            self._error(f"event {mid or '?'} from {origin or '?'} refused by the contract: {exc}")
            return
        self._put(event)

    @property
    def name(self) -> str:
        return self.source.name


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EventError) else f"{type(exc).__name__}: {exc}"


def _sse_messages(lines: Iterator[str], stop: threading.Event) -> Iterator[tuple[str | None, str]]:
    """(id, data) per server-sent event (WHATWG `text/event-stream`): `data:` lines joined
    with newlines, dispatched at a blank line; comments (`:` keep-alives) ignored."""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if stop.is_set():
            return
        if not line:
            if data:
                yield event_id, "\n".join(data)
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id = value
