"""`GET /v1/stream`: the event bus as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import BusDep
from twin.events import BusEvent, EventBus

KEEPALIVE_S = 15.0
RETRY_MS = 2000

STREAM_DOC = """
Server-Sent Events (`text/event-stream`). Event types (`event:` field), each with a JSON
`data:` object:

- `pue`: site PUE, DCiE, category, facility / IT / cooling power, on every change;
- `racks`: per-rack GPU max temperature and power (plus anomaly score and failure risk
  once those features run), on every change;
- `device_event`: a discrete device event (XID, leak, pump or PSU failure) as it lands;
- `alert`: an alert transition (firing, resolved, acknowledged, silenced);
- `anomalies`, `recommendations`: the top anomalies / new recommendations when they change;
- `incidents`: anomaly incidents (open, latest resolved) with their root cause, when one
  opens, grows, changes root cause or resolves;
- `reset`: the client's `Last-Event-ID` is older than the replay buffer (or from before a
  server restart): refetch full state, then carry on with the events that follow.

Every event has an `id` (`<epoch>-<seq>`). On reconnect, send the last id you saw as the
`Last-Event-ID` header (browsers' EventSource do this themselves) or the `last_event_id`
query parameter: the stream replays every event after it from a ring buffer of the last
4096 events (about an hour at a 1 s tick), so nothing is missed. A new connection without
an id starts with the newest event of each type (a snapshot), then live events.
A `: ping` comment every 15 s keeps proxies from closing an idle stream.
"""


router = APIRouter(prefix="/v1", tags=["stream"])


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    summary="Live event stream (SSE)",
    description=STREAM_DOC,
    responses={
        200: {
            "description": "an endless text/event-stream",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: pue\ndata: {"value":1.28,"category":'
                    '"PUE1"}\nid: 18c2f1a9b40-42\n\n',
                }
            },
        }
    },
)
async def stream(
    request: Request,
    bus: BusDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=100, description="resume after this event id"),
    ] = None,
    last_event_id_q: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=100,
            description="same as the Last-Event-ID header, for clients that cannot set headers",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    resume = last_event_id or last_event_id_q
    flag = bus.subscribe()
    try:
        # decided before the first byte goes out: nothing published after this is lost
        head, snapshot = bus.snapshot()
        reset = None
        seq = bus.parse_id(resume) if resume else None
        if resume:
            replay = bus.since(seq if seq is not None else -1)
            if seq is None or replay.gap:
                reset = _reset(bus, resume, replay.missed)
        if resume and reset is None and seq is not None:
            pending, last = replay.events, seq
        else:  # a new client, or one that must refetch: current state, then live
            pending, last = snapshot, head
        yield ServerSentEvent(retry=RETRY_MS, comment="dctwin stream")
        if reset is not None:
            yield reset
        while True:
            for ev in pending:
                last = max(last, ev.seq)
                yield _sse(bus, ev)
            pending = []
            if await request.is_disconnected():
                return
            flag.clear()
            replay = bus.since(last)
            if replay.gap:  # this client fell behind the ring buffer
                yield _reset(bus, f"{bus.epoch}-{last}", replay.missed)
                pending = bus.latest_by_type()
                continue
            pending = replay.events
            if pending:
                continue
            try:
                await asyncio.wait_for(flag.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield ServerSentEvent(comment="ping")
            pending = bus.since(last).events
    finally:
        bus.unsubscribe(flag)


def _sse(bus: EventBus, ev: BusEvent) -> ServerSentEvent:
    return ServerSentEvent(raw_data=ev.data_json, event=ev.type, id=ev.event_id(bus.epoch))


def _reset(bus: EventBus, resume: str, missed: int) -> ServerSentEvent:
    import orjson

    data = {
        "reason": "last event id is older than the replay buffer or from another "
        "server run; refetch state",
        "last_event_id": resume,
        "missed": missed,
        "buffer_size": bus.capacity,
    }
    return ServerSentEvent(
        raw_data=orjson.dumps(data).decode(), event="reset", id=f"{bus.epoch}-{bus.head}"
    )
