"""The daemon's counters: plain numbers the metrics endpoint exports at scrape time.

Each field is written by one thread only (source fields by the read loop, send and spool
fields by the shipper), so plain integer updates need no lock; scrapes read them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SourceStats:
    readings: int = 0
    reads_ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # reason -> count
    late_reads: int = 0  # timed out, then finished: its readings went out a tick later
    last_success_unix_s: float | None = None
    last_duration_s: float | None = None
    failing: bool = False


@dataclass
class DaemonStats:
    started_unix_s: float = 0.0
    ticks: int = 0
    ticks_skipped: int = 0  # grid ticks missed because a tick overran
    last_tick_unix_s: float | None = None
    batches_read: int = 0  # batches built from readings (telemetry and events)
    samples_read: int = 0
    events_read: int = 0
    batches_sent: int = 0  # acknowledged by Kafka on the direct path
    samples_sent: int = 0
    batches_spooled: int = 0
    samples_spooled: int = 0
    batches_replayed: int = 0  # acknowledged by Kafka from the spool
    samples_replayed: int = 0
    batches_dropped: int = 0  # discarded by the spool (bound hit, corrupt data)
    samples_dropped: int = 0
    bytes_dropped: int = 0
    send_errors: int = 0
    broker_up: bool = False
    spool_bytes: int = 0
    spool_batches: int = 0
    spool_samples: int = 0
    queue_batches: int = 0  # handed to the shipper, not yet sent or spooled
    sources: dict[str, SourceStats] = field(default_factory=dict)

    @property
    def samples_delivered(self) -> int:
        return self.samples_sent + self.samples_replayed

    @property
    def batches_delivered(self) -> int:
        return self.batches_sent + self.batches_replayed
