"""The collector daemon: read every source each interval, batch, and produce to Kafka."""

from __future__ import annotations

import logging
import threading
import time

from collectors.base import Readings, Source, now_ms
from collectors.batching import Batcher
from collectors.config import CollectorConfig
from collectors.sources import build_source
from ingest.contract import (
    EVENTS_TOPIC,
    Event,
    EventBatch,
    EventKind,
    TelemetryBatch,
    encode,
    headers_for,
    telemetry_topic,
)
from ingest.kafka import make_producer

log = logging.getLogger(__name__)


def topic_for(batch: TelemetryBatch | EventBatch) -> str:
    return EVENTS_TOPIC if isinstance(batch, EventBatch) else telemetry_topic(batch.kind)


class Publisher:
    """Sends batches with acks=all and waits for every acknowledgement."""

    def __init__(self, bootstrap: str, compression: str) -> None:
        self.producer = make_producer(bootstrap, None if compression == "none" else compression)

    def publish(self, batches: list[TelemetryBatch | EventBatch]) -> None:
        futures = [
            self.producer.send(topic_for(b), key=b.rack.encode(), value=encode(b),
                               headers=headers_for(b))
            for b in batches
        ]
        self.producer.flush()
        for f in futures:
            f.get(timeout=30)  # raises the send error, if any

    def close(self) -> None:
        self.producer.close(timeout=10)


class CollectorDaemon:
    def __init__(self, config: CollectorConfig, sources: list[Source] | None = None,
                 publisher: Publisher | None = None) -> None:
        self.config = config
        self.sources = sources if sources is not None else [
            build_source(raw, i) for i, raw in enumerate(config.sources)]
        self.batcher = Batcher(config.name, config.site, config.interval_s)
        self.publisher = publisher or Publisher(config.bootstrap(), config.kafka.compression)
        self.stop_event = threading.Event()
        self.samples_sent = 0
        self.batches_sent = 0

    def read_all(self) -> Readings:
        out = Readings()
        for source in self.sources:
            try:
                out.extend(source.read())
            except Exception as exc:  # a failing device must not stop the others
                log.warning("source %s failed: %s", source.name, exc)
                out.events.append(Event(
                    device_id=f"{self.config.site}/collector/{self.config.name}",
                    kind=EventKind.source_error, severity="warning", read_time_ms=now_ms(),
                    message=f"source {source.name} failed: {exc}",
                    attrs={"source": source.name}))
        return out

    def run_once(self) -> int:
        readings = self.read_all()
        batches = self.batcher.batches(readings)
        self.publisher.publish(batches)
        self.samples_sent += len(readings)
        self.batches_sent += len(batches)
        return len(readings)

    def run(self, max_intervals: int | None = None) -> None:
        """Tick on a fixed grid (start + k * interval) so the schedule never drifts."""
        interval = self.config.interval_s
        start = time.monotonic()
        k = runs = 0
        while not self.stop_event.is_set():
            self.run_once()
            k += 1
            runs += 1
            if max_intervals is not None and runs >= max_intervals:
                break
            next_tick = start + k * interval
            delay = next_tick - time.monotonic()
            if delay < 0:  # overran: skip missed ticks rather than burst
                k += int(-delay // interval) + 1
                delay = start + k * interval - time.monotonic()
            self.stop_event.wait(max(delay, 0))

    def close(self) -> None:
        for s in self.sources:
            s.close()
        self.publisher.close()
