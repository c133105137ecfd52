"""Kafka -> DuckDB ingest loop with dead-lettering.

Order of effects per poll, which is what makes storage exactly-once:
1. invalid messages are produced to the dead-letter topic and flushed;
2. valid batches and the next offsets are committed to DuckDB in one transaction;
3. offsets are committed to Kafka (for lag monitoring; DuckDB is the source of truth).
A crash between any two steps replays messages that step 2 then recognises or re-stores.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from ingest.contract import (
    ALL_TELEMETRY_TOPICS,
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    ContractError,
    EventBatch,
    TelemetryBatch,
    decode,
)
from ingest.kafka import MAX_MESSAGE_BYTES, make_producer
from ingest.store import Store

log = logging.getLogger(__name__)

INGEST_TOPICS = (*ALL_TELEMETRY_TOPICS, EVENTS_TOPIC)


@dataclass
class IngestStats:
    messages: int = 0
    samples_stored: int = 0
    events_stored: int = 0
    batches_skipped: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)


class _SeekToStoredOffsets(ConsumerRebalanceListener):
    """On assignment, resume from the offsets DuckDB committed, not Kafka's."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def on_partitions_revoked(self, revoked):  # noqa: D401 - kafka-python API
        pass

    def on_partitions_assigned(self, assigned):
        stored = self.ingestor.store.offsets()
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self.ingestor.consumer.seek(tp, offset)


class Ingestor:
    def __init__(self, store: Store, bootstrap: str, group_id: str,
                 topics: tuple[str, ...] = INGEST_TOPICS, client_id: str = "dctwin-ingest",
                 on_stored=None) -> None:
        self.store = store
        self.stats = IngestStats()
        self.stop_event = threading.Event()
        self.on_stored = on_stored  # callback(telemetry batches) for the twin
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=64 * 1024 * 1024,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=60_000,
        )
        self.consumer.subscribe(topics=list(topics), listener=_SeekToStoredOffsets(self))
        self.dlq = make_producer(bootstrap, "zstd")

    def poll_once(self, timeout_ms: int = 500, max_records: int = 2000) -> int:
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if not records:
            return 0
        telemetry: list[TelemetryBatch] = []
        events: list[EventBatch] = []
        next_offsets: dict[tuple[str, int], int] = {}
        dead = []
        for tp, messages in records.items():
            for msg in messages:
                next_offsets[(tp.topic, tp.partition)] = msg.offset + 1
                try:
                    batch = decode(msg.value)
                except ContractError as err:
                    dead.append((msg, err))
                    continue
                if isinstance(batch, TelemetryBatch):
                    telemetry.append(batch)
                else:
                    events.append(batch)
        for msg, err in dead:
            self._dead_letter(msg, err.reason, err.detail)
        if dead:
            self.dlq.flush()
        result = self.store.write(telemetry, events, next_offsets)
        self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                              for (t, p), o in next_offsets.items()})
        s = self.stats
        s.messages += sum(len(m) for m in records.values())
        s.samples_stored += result.samples_stored
        s.events_stored += result.events_stored
        s.batches_skipped += result.batches_skipped
        if self.on_stored is not None and telemetry:
            self.on_stored(telemetry)
        return result.samples_stored

    def _dead_letter(self, msg, reason: str, detail: str) -> None:
        """Forward the original bytes and headers, plus where they came from and why."""
        headers = list(msg.headers or []) + [
            ("dctwin-dlq-reason", reason.encode()),
            ("dctwin-dlq-detail", detail[:2000].encode()),
            ("dctwin-source-topic", msg.topic.encode()),
            ("dctwin-source-partition", str(msg.partition).encode()),
            ("dctwin-source-offset", str(msg.offset).encode()),
        ]
        self.dlq.send(DEAD_LETTER_TOPIC, key=msg.key, value=msg.value, headers=headers)
        self.stats.dead_letters[reason] += 1
        log.warning("dead-lettered %s[%d]@%d: %s: %s", msg.topic, msg.partition, msg.offset,
                    reason, detail[:200])

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll_once()

    def close(self) -> None:
        self.consumer.close()
        self.dlq.close(timeout=10)
