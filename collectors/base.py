"""The `Source` protocol every collector plugin implements, and the readings it returns.

A source is one device protocol (NVML, Redfish, Modbus TCP, simulated). It knows how to
read its devices and name them; it knows nothing about Kafka, batching or spooling,
which the daemon owns. Adding a device type means adding one module under `sources/`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from domain.contract import AttrValue, Event, EventKind, Kind


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Readings:
    """Columnar buffer of samples read in one pass, plus discrete events.

    Plain lists rather than pydantic models: this is the collector's hot path.
    `rack` is the partition key the sample travels under.
    """

    device_id: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    read_time_ms: list[int] = field(default_factory=list)
    kind: list[Kind] = field(default_factory=list)
    rack: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # parts of this read that failed while the rest was read (a Modbus register block):
    # counted by the daemon as `partial` errors; the source reports the cause as an event
    failed_parts: int = 0

    def add(
        self, kind: Kind, rack: str, device_id: str, metric: str, value: float, read_time_ms: int
    ) -> None:
        self.device_id.append(device_id)
        self.metric.append(metric)
        self.value.append(float(value))
        self.read_time_ms.append(read_time_ms)
        self.kind.append(kind)
        self.rack.append(rack)

    def add_columns(
        self,
        kind: Kind,
        rack: str | Sequence[str],
        device_id: Sequence[str],
        metric: Sequence[str],
        value: Iterable[float],
        read_time_ms: int,
    ) -> None:
        """Append many samples taken at one read time (vectorized sources)."""
        n = len(device_id)
        self.device_id.extend(device_id)
        self.metric.extend(metric)
        self.value.extend(value)
        self.read_time_ms.extend([read_time_ms] * n)
        self.kind.extend([kind] * n)
        self.rack.extend([rack] * n if isinstance(rack, str) else rack)

    def extend(self, other: Readings) -> None:
        self.device_id += other.device_id
        self.metric += other.metric
        self.value += other.value
        self.read_time_ms += other.read_time_ms
        self.kind += other.kind
        self.rack += other.rack
        self.events += other.events
        self.failed_parts += other.failed_parts

    def __len__(self) -> int:
        return len(self.device_id)


def source_error_event(device_id: str, message: str, attrs: dict[str, AttrValue]) -> Event:
    """A source's problem (a failed read, failing points, a dropped event stream), as the
    one event kind that reports collector trouble."""
    return Event(
        device_id=device_id,
        kind=EventKind.source_error,
        severity="warning",
        read_time_ms=now_ms(),
        message=message,
        attrs=attrs,
    )


@runtime_checkable
class Source(Protocol):
    """One protocol's reader. `read` must return within the daemon's per-source timeout;
    raising is allowed and is reported as a source error, not hidden."""

    name: str

    def read(self) -> Readings: ...

    def close(self) -> None: ...
