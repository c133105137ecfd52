"""Synchronous batch publishing, for bulk producers such as `dctwin simulate --out kafka:`.

The collector daemon does not use this: it ships through its spool (collectors/shipper.py)
so that an outage loses nothing. Here a failed send raises, and the caller decides.
"""

from __future__ import annotations

from domain.contract import (
    EVENTS_TOPIC,
    EventBatch,
    TelemetryBatch,
    encode,
    headers_for,
    telemetry_topic,
)
from domain.topics import make_producer


def topic_for(batch: TelemetryBatch | EventBatch) -> str:
    return EVENTS_TOPIC if isinstance(batch, EventBatch) else telemetry_topic(batch.kind)


class Publisher:
    """Sends batches with acks=all and waits for every acknowledgement."""

    def __init__(self, bootstrap: str, compression: str) -> None:
        self.producer = make_producer(bootstrap, None if compression == "none" else compression)

    def publish(self, batches: list[TelemetryBatch | EventBatch]) -> None:
        futures = [
            self.producer.send(
                topic_for(b), key=b.rack.encode(), value=encode(b), headers=headers_for(b)
            )
            for b in batches
        ]
        self.producer.flush()
        for f in futures:
            f.get(timeout=30)  # raises the send error, if any

    def close(self) -> None:
        self.producer.close(timeout=10)
