"""Ingest counters as plain data, for the API's /metrics and for operators.

`IngestStats` is updated by the ingest threads (simple increments under the GIL);
`snapshot()` copies it into plain dicts/numbers any thread may read or serialize, and
`metric_samples()` flattens that into (name, labels, value) triples with Prometheus-style
names, so a renderer needs no knowledge of ingest internals.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    next_offset: int | None  # next offset ingest will store (None: nothing read yet)
    highwater: int | None  # broker's end offset as of the last fetch
    lag: int | None  # highwater - next_offset: records not yet stored


@dataclass
class IngestStats:
    messages: int = 0
    samples_stored: int = 0
    events_stored: int = 0
    batches_skipped: int = 0
    duplicate_samples: int = 0  # same (device, metric, read time) already stored
    dead_letters: Counter[str] = field(default_factory=Counter)  # messages, by reason
    samples_rejected: Counter[str] = field(default_factory=Counter)  # samples, by reason
    # messages that broke ingest ("ingest_error") or that even the dead-letter topic
    # refused ("quarantined"): docs/ingest.md, "Poison messages"
    poison_messages: Counter[str] = field(default_factory=Counter)
    dead_letters_truncated: int = 0  # sent to the dead-letter topic as a prefix only
    data_loss_events: Counter[str] = field(default_factory=Counter)  # by reason
    lost_records: int = 0  # offsets skipped for good (known counts only)
    unknown_device_samples: int = 0  # stored (policy accept) or rejected, counted either way
    polls: int = 0
    bytes_consumed: int = 0
    pauses: int = 0
    resumes: int = 0
    paused: bool = False
    inflight_polls: int = 0
    max_inflight_polls: int = 0
    inflight_records: int = 0
    max_inflight_records: int = 0
    stage_seconds: float = 0.0
    commit_seconds: float = 0.0
    maintenance_runs: int = 0
    maintenance_seconds: float = 0.0  # rollups + retention, in the writer thread
    late_rollup_buckets: int = 0  # (device, metric, minute) rollups recomputed for late data
    started_at: float = field(default_factory=time.time)
    lag: dict[tuple[str, int], PartitionLag] = field(default_factory=dict)
    _rate: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def note_stored(self, now: float | None = None) -> None:
        self._rate.append((now if now is not None else time.monotonic(), self.samples_stored))

    def samples_per_s(self, window_s: float = 10.0) -> float:
        """Stored samples per second over roughly the last `window_s` seconds."""
        if len(self._rate) < 2:
            return 0.0
        t1, n1 = self._rate[-1]
        older = [(t, n) for t, n in self._rate if t1 - t <= window_s] or [self._rate[0]]
        t0, n0 = older[0]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        lag = list(self.lag.values())
        known = [p.lag for p in lag if p.lag is not None]
        return {
            "messages": self.messages,
            "samples_stored": self.samples_stored,
            "events_stored": self.events_stored,
            "batches_skipped": self.batches_skipped,
            "duplicate_samples": self.duplicate_samples,
            "dead_letters": dict(self.dead_letters),
            "dead_letters_total": sum(self.dead_letters.values()),
            "samples_rejected": dict(self.samples_rejected),
            "poison_messages": dict(self.poison_messages),
            "dead_letters_truncated": self.dead_letters_truncated,
            "data_loss_events": dict(self.data_loss_events),
            "lost_records": self.lost_records,
            "unknown_device_samples": self.unknown_device_samples,
            "polls": self.polls,
            "bytes_consumed": self.bytes_consumed,
            "samples_per_s": self.samples_per_s(),
            "pauses": self.pauses,
            "resumes": self.resumes,
            "paused": self.paused,
            "inflight_polls": self.inflight_polls,
            "max_inflight_polls": self.max_inflight_polls,
            "max_inflight_records": self.max_inflight_records,
            "stage_seconds": self.stage_seconds,
            "commit_seconds": self.commit_seconds,
            "maintenance_runs": self.maintenance_runs,
            "maintenance_seconds": self.maintenance_seconds,
            "late_rollup_buckets": self.late_rollup_buckets,
            "uptime_s": time.time() - self.started_at,
            "lag_total": sum(known),
            "lag": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "next_offset": p.next_offset,
                    "highwater": p.highwater,
                    "lag": p.lag,
                }
                for p in lag
            ],
        }

    def metric_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) triples, Prometheus naming (counters end in _total)."""
        s = self.snapshot()
        out: list[tuple[str, dict[str, str], float]] = [
            ("dctwin_ingest_messages_total", {}, s["messages"]),
            ("dctwin_ingest_samples_stored_total", {}, s["samples_stored"]),
            ("dctwin_ingest_events_stored_total", {}, s["events_stored"]),
            ("dctwin_ingest_batches_skipped_total", {}, s["batches_skipped"]),
            ("dctwin_ingest_duplicate_samples_total", {}, s["duplicate_samples"]),
            ("dctwin_ingest_unknown_device_samples_total", {}, s["unknown_device_samples"]),
            ("dctwin_ingest_bytes_total", {}, s["bytes_consumed"]),
            ("dctwin_ingest_samples_per_second", {}, s["samples_per_s"]),
            ("dctwin_ingest_paused", {}, float(s["paused"])),
            ("dctwin_ingest_pauses_total", {}, s["pauses"]),
            ("dctwin_ingest_inflight_polls", {}, s["inflight_polls"]),
            ("dctwin_ingest_lag_records", {}, s["lag_total"]),
            ("dctwin_ingest_dead_letters_truncated_total", {}, s["dead_letters_truncated"]),
            ("dctwin_ingest_lost_records_total", {}, s["lost_records"]),
        ]
        out += [
            ("dctwin_ingest_poison_messages_total", {"kind": k}, n)
            for k, n in sorted(s["poison_messages"].items())
        ]
        out += [
            ("dctwin_ingest_data_loss_events_total", {"reason": r}, n)
            for r, n in sorted(s["data_loss_events"].items())
        ]
        out += [
            ("dctwin_ingest_dead_letters_total", {"reason": r}, n)
            for r, n in sorted(s["dead_letters"].items())
        ]
        out += [
            ("dctwin_ingest_samples_rejected_total", {"reason": r}, n)
            for r, n in sorted(s["samples_rejected"].items())
        ]
        out += [
            (
                "dctwin_ingest_partition_lag_records",
                {"topic": p["topic"], "partition": str(p["partition"])},
                p["lag"],
            )
            for p in s["lag"]
            if p["lag"] is not None
        ]
        return out
