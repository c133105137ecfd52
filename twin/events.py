"""In-process event bus: what the live stream (`GET /v1/stream`) carries.

Publishers (the live loop, the alert engine, the anomaly scorer, the optimizer) call
`bus.publish(type, data)` from any thread. Each event gets an id `<epoch>-<seq>`: `seq`
rises by one per event, `epoch` names this bus instance (a process start), so a client
that reconnects with an id from an earlier process is told to reload instead of being
handed a silent gap.

The bus keeps the last `capacity` events in a ring buffer for replay on reconnect
(`Last-Event-ID`). A client whose last id has already left the buffer gets a `reset`
event first: the events between its id and the oldest kept one are gone, so it must
refetch full state (the dashboard does so) and then continues from the buffer without
further gaps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_CAPACITY = 4096  # ~1 h of PUE + rack events at a 1 s tick, a few hundred kB


@dataclass(frozen=True, slots=True)
class BusEvent:
    seq: int
    type: str  # pue, racks, alert, anomalies, recommendations, ...
    data_json: str  # serialized once, sent to every subscriber as-is
    time_s: float  # Unix time of publication

    def event_id(self, epoch: str) -> str:
        return f"{epoch}-{self.seq}"


@dataclass(frozen=True, slots=True)
class Replay:
    events: list[BusEvent]
    gap: bool  # True: some events after the client's id were dropped (or another epoch)
    missed: int  # how many were dropped, when known (-1: unknown, e.g. another epoch)


class EventBus:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, epoch: str | None = None) -> None:
        self.capacity = capacity
        self.epoch = epoch or f"{int(time.time() * 1000):x}"
        self._buf: deque[BusEvent] = deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()
        self._latest_by_type: dict[str, BusEvent] = {}
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.published_total = 0

    # -- publishing (any thread) ---------------------------------------------------

    def publish(self, type_: str, data: Any) -> BusEvent:
        payload = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()
        with self._lock:
            self._seq += 1
            ev = BusEvent(self._seq, type_, payload, time.time())
            self._buf.append(ev)
            self._latest_by_type[type_] = ev
            self.published_total += 1
            waiters = list(self._waiters)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # that loop has closed; its subscriber is gone
                with self._lock:
                    self._waiters.discard((loop, flag))
        return ev

    # -- reading -------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self._seq

    def parse_id(self, event_id: str | None) -> int | None:
        """The sequence number in an id of this epoch; None for another epoch or junk."""
        if not event_id:
            return None
        epoch, _, seq = event_id.strip().rpartition("-")
        if epoch != self.epoch or not seq.isdigit():
            return None
        return int(seq)

    def since(self, seq: int) -> Replay:
        """Events after `seq`, oldest first, and whether some were lost."""
        with self._lock:
            if seq > self._seq:  # an id from the future: not ours
                return Replay(list(self._buf), True, -1)
            oldest = self._buf[0].seq if self._buf else self._seq + 1
            if seq + 1 >= oldest:
                start = seq + 1 - oldest
                return Replay([self._buf[i] for i in range(start, len(self._buf))], False, 0)
            return Replay(list(self._buf), True, oldest - seq - 1)

    def snapshot(self) -> tuple[int, list[BusEvent]]:
        """(head, newest event of each type) taken together: a new subscriber's state."""
        with self._lock:
            return self._seq, sorted(self._latest_by_type.values(), key=lambda e: e.seq)

    def latest_by_type(self) -> list[BusEvent]:
        """The newest event of each type, oldest first: a new subscriber's snapshot."""
        with self._lock:
            return sorted(self._latest_by_type.values(), key=lambda e: e.seq)

    def subscribe(self) -> asyncio.Event:
        """An asyncio flag set (thread-safely) whenever something is published."""
        flag = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), flag))
        return flag

    def unsubscribe(self, flag: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not flag}

    @property
    def subscribers(self) -> int:
        return len(self._waiters)
