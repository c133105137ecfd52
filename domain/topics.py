"""Kafka plumbing of the wire contract, shared by collectors and ingest: topics and producers.

Imports only kafka-python, so collectors may use it.
"""

from __future__ import annotations

import contextlib
import logging
import time

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from domain.contract import ALL_TELEMETRY_TOPICS, DEAD_LETTER_TOPIC, EVENTS_TOPIC

log = logging.getLogger(__name__)

ALL_TOPICS = (*ALL_TELEMETRY_TOPICS, EVENTS_TOPIC, DEAD_LETTER_TOPIC)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# issue 26 (demo-story): scenario fault specs for a simulated site (dctwin/scenario.py ->
# the simulated collector source); never created on a real site's cluster
SIM_CONTROL_TOPIC = "sim.control"


def ensure_topics(
    bootstrap: str, partitions: int, topics: tuple[str, ...] = ALL_TOPICS, timeout_s: float = 30.0
) -> None:
    """Create the platform's topics if missing. Idempotent; retries until the broker answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            log.info("created topics %s", missing)
    finally:
        admin.close()


def make_producer(
    bootstrap: str, compression: str | None = "zstd", **overrides: object
) -> KafkaProducer:
    """Producer for batches: acks=all so that a send is only done once the broker has it."""
    config: dict[str, object] = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type=compression,
        linger_ms=5,
        max_request_size=MAX_MESSAGE_BYTES,
        retries=3,
        request_timeout_ms=10_000,
        max_block_ms=10_000,
    )
    config.update(overrides)
    return KafkaProducer(**config)
