"""The collector daemon: read every source on a fixed grid, batch, and hand the batches to
the shipper (Kafka, or the on-disk spool while Kafka cannot take them).

Threads: the caller's (the read loop: ticks, batching, encoding), one reader per source
(collectors/reader.py), the shipper (collectors/shipper.py) and, when enabled, the metrics
HTTP server (collectors/metrics_server.py). See docs/collector-daemon.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from pydantic import ValidationError

from collectors.base import Readings, Source, now_ms
from collectors.batching import Batcher
from collectors.daemon_config import CollectorConfig, CollectorConfigError
from collectors.publish import topic_for
from collectors.reader import SourceReader
from collectors.shipper import Shipper
from collectors.sources import build_source
from collectors.spool import Dropped, Record, Spool
from collectors.stats import DaemonStats
from domain.contract import (
    Event,
    EventBatch,
    EventKind,
    TelemetryBatch,
    encode,
    headers_for,
)
from domain.site import format_validation_error
from domain.topics import make_producer

log = logging.getLogger(__name__)


def to_record(batch: TelemetryBatch | EventBatch) -> Record:
    n = len(batch.samples) if isinstance(batch, TelemetryBatch) else 0
    return Record(topic_for(batch), batch.rack.encode(), headers_for(batch), encode(batch), n)


def build_sources(config: CollectorConfig) -> list[Source]:
    """Construct each [[sources]] table's source; an invalid table names its index."""
    out = []
    for i, raw in enumerate(config.sources):
        try:
            out.append(build_source(config.source_table(raw), i))
        except ValidationError as exc:
            raise CollectorConfigError(f"sources[{i}]: {format_validation_error(exc)}") from exc
    return out


class CollectorDaemon:
    def __init__(self, config: CollectorConfig, sources: list[Source] | None = None) -> None:
        self.config = config
        self.stats = DaemonStats(started_unix_s=time.time())
        self.stop_event = threading.Event()
        self.sources = sources if sources is not None else build_sources(config)
        deadlines = [
            config.source_deadline_s(config.sources[i] if i < len(config.sources) else {})
            for i in range(len(self.sources))
        ]
        names = [src.name for src in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:  # metrics and events name sources: each needs its own name
            raise CollectorConfigError(
                f"sources: duplicate source names {dupes}; give each "
                "[[sources]] table its own `name`"
            )
        self.device_id = f"{config.site}/collector/{config.name}"
        self._events: deque[Event] = deque()  # from other threads, sent with the next tick
        # seq keeps increasing across restarts: it starts from the clock, not from zero
        self.batcher = Batcher(
            config.name, config.site, config.interval_s, start_seq=now_ms() * 1000
        )
        k, sp = config.kafka, config.spool
        self.send_timeout_s = (k.max_block_ms + k.delivery_timeout_ms) / 1000 + 1.0
        # the parts that can fail to start (spool locked, port taken) come before any thread
        self.spool = Spool(
            config.spool_dir(), sp.max_bytes, sp.segment_bytes, sp.fsync, sp.compress
        )
        self.metrics_server = None
        if config.metrics.port:
            from collectors.metrics_server import MetricsServer

            try:
                self.metrics_server = MetricsServer(self, config.metrics.host, config.metrics.port)
            except OSError as exc:
                self.spool.close()
                raise CollectorConfigError(
                    f"metrics.port: cannot listen on "
                    f"{config.metrics.host}:{config.metrics.port}: "
                    f"{exc}"
                ) from exc
        every_ticks = [
            config.source_every_ticks(config.sources[i] if i < len(config.sources) else {})
            for i in range(len(self.sources))
        ]
        self.reader = SourceReader(
            self.sources,
            deadlines,
            self.stats,
            self.device_id,
            config.error_event_interval_s,
            every_ticks,
        )
        self.shipper = Shipper(
            self.spool,
            self.stats,
            self._make_producer,
            self._on_dropped,
            sp.replay_backoff_initial_s,
            sp.replay_backoff_max_s,
            sp.replay_chunk_records,
            self.send_timeout_s,
        )
        self.shipper.start()
        self._closed = False

    def _make_producer(self):
        k = self.config.kafka
        return make_producer(
            self.config.bootstrap(),
            None if k.compression == "none" else k.compression,
            max_block_ms=k.max_block_ms,
            bootstrap_timeout_ms=k.max_block_ms,
            request_timeout_ms=k.request_timeout_ms,
            delivery_timeout_ms=k.delivery_timeout_ms,
            linger_ms=k.linger_ms,
            allow_auto_create_topics=False,
            client_id=f"dctwin-collector-{self.config.name}",
        )

    def _on_dropped(self, d: Dropped) -> None:
        self._events.append(
            Event(
                device_id=self.device_id,
                kind=EventKind.spool_dropped,
                severity="critical",
                read_time_ms=now_ms(),
                message=f"spool dropped {d.records} batches ({d.samples} samples, "
                f"{d.bytes} bytes): {', '.join(sorted(d.reasons))}",
                # Running totals as well as this drop: a later drop can discard the event that
                # reported an earlier one, but the newest event always carries the whole count.
                attrs={
                    "batches": d.records,
                    "samples": d.samples,
                    "bytes": d.bytes,
                    "batches_total": self.stats.batches_dropped,
                    "samples_total": self.stats.samples_dropped,
                    "reasons": ",".join(sorted(d.reasons)),
                    "spool_max_bytes": self.config.spool.max_bytes,
                },
            )
        )

    # -- the read loop ---------------------------------------------------------------------------
    def run_once(self) -> int:
        """One tick: read all sources (concurrently, under their deadlines), hand over."""
        readings = self.reader.read_tick()
        self.stats.ticks += 1
        self.stats.last_tick_unix_s = time.time()
        self._emit(readings)
        return len(readings)

    def _emit(self, readings: Readings) -> list[Record]:
        while self._events:
            readings.events.append(self._events.popleft())
        batches = self.batcher.batches(readings)
        records = [to_record(b) for b in batches]
        if log.isEnabledFor(logging.DEBUG):
            for b, r in zip(batches, records, strict=True):
                if isinstance(b, TelemetryBatch):
                    t = b.samples.read_time_ms
                    log.debug(
                        "read batch %s seq=%d topic=%s rack=%s samples=%d read_ms=%d..%d",
                        b.batch_id,
                        b.seq,
                        r.topic,
                        b.rack,
                        r.n_samples,
                        min(t),
                        max(t),
                    )
                else:
                    log.debug(
                        "read batch %s seq=%d topic=%s rack=%s events=%d",
                        b.batch_id,
                        b.seq,
                        r.topic,
                        b.rack,
                        len(b.events),
                    )
        self.stats.batches_read += len(records)
        self.stats.samples_read += len(readings)
        self.stats.events_read += len(readings.events)
        self.shipper.submit(records)
        return records

    def run(self, max_intervals: int | None = None) -> None:
        """Tick on a fixed grid (start + k * interval) so the schedule never drifts; a tick
        that overruns skips the grid points it missed rather than bursting."""
        interval = self.config.interval_s
        start = time.monotonic()
        k = runs = 0
        while not self.stop_event.is_set():
            self.run_once()
            runs += 1
            if max_intervals is not None and runs >= max_intervals:
                break
            k += 1
            delay = start + k * interval - time.monotonic()
            if delay < 0:
                missed = int(-delay // interval) + 1
                k += missed
                self.stats.ticks_skipped += missed
                log.warning("tick overran by %.3f s; skipping %d tick(s)", -delay, missed)
                delay = start + k * interval - time.monotonic()
            self.stop_event.wait(max(delay, 0.0))
        # reads still running when the loop ends: keep what they return within the deadline
        late = self.reader.finish_pending(
            min(max(self.reader.deadlines_s, default=0.0), self.config.shutdown_timeout_s / 3)
        )
        if len(late) or late.events or self._events:
            self._emit(late)
        if not self.stop_event.is_set():  # finished its intervals: wait for the sends
            self.shipper.drain(self.config.shutdown_timeout_s)

    def stop(self) -> None:
        self.stop_event.set()

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        """(healthy, details). Unhealthy only when the read loop is stalled or stopping:
        a broker outage or a failing device is `degraded`, which a restart would not fix."""
        now = time.time()
        s = self.stats
        last = s.last_tick_unix_s
        max_age = 3 * self.config.interval_s + 5.0
        age = now - (last if last is not None else s.started_unix_s)
        failing = sorted(n for n, st in s.sources.items() if st.failing)
        if self.stop_event.is_set():
            status = "stopping"
        elif age > max_age:
            status = "stalled"
        elif (s.send_errors and not s.broker_up) or s.spool_batches or failing:
            status = "degraded"
        else:
            status = "ok"
        return status in ("ok", "degraded"), {
            "status": status,
            "collector": self.config.name,
            "last_tick_age_s": round(age, 3),
            "broker_up": s.broker_up,
            "spool_batches": s.spool_batches,
            "spool_bytes": s.spool_bytes,
            "failing_sources": failing,
        }

    # -- shutdown ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush: queued batches go to Kafka (if it answers and the spool is empty) or to the
        spool; then release sources, producer and spool."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        stopped = self.shipper.stop(self.config.shutdown_timeout_s)
        if not stopped:
            log.error("shutdown timed out: batches still queued may be lost")
        elif self._events:  # e.g. a spool_dropped from the final flush: keep it in the spool
            events = list(self._events)
            self._events.clear()
            records = [to_record(b) for b in self.batcher.batches(Readings(events=events))]
            self.stats.events_read += len(events)
            self.stats.batches_read += len(records)
            self.stats.batches_spooled += len(records)
            self.spool.append(records)
        s = self.stats
        log.info(
            "stopped: read %d batches (%d samples); sent %d, spooled %d, replayed %d, "
            "dropped %d; samples_acked=%d (sent + replayed); spool holds %d batches "
            "(%d samples)",
            s.batches_read,
            s.samples_read,
            s.batches_sent,
            s.batches_spooled,
            s.batches_replayed,
            s.batches_dropped,
            s.samples_sent + s.samples_replayed,
            self.spool.records,
            self.spool.samples,
        )
        self.reader.close()
        if stopped:  # else the shipper thread may still be using it; the exit releases it
            self.spool.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
