"""Malformed messages go to the dead-letter topic with original bytes, headers and the
reason, and ingest keeps consuming valid messages."""

from __future__ import annotations

import time

from collectors.base import Readings, now_ms
from collectors.batching import Batcher
from domain.contract import Kind, encode, headers_for, telemetry_topic
from domain.topics import make_producer
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.helpers import dead_letter_consumer, ingest_until


def test_malformed_messages_are_dead_lettered_and_ingest_continues(settings, unique):
    producer = make_producer(settings.kafka_bootstrap, "lz4")
    topic = telemetry_topic(Kind.gpu)
    bad_json = b'{"version": 1, "type": "telemetry", "samples": {' + unique.encode()
    bad_version = b'{"version": 7, "type": "telemetry", "tag": "' + unique.encode() + b'"}'
    producer.send(topic, key=b"rk101", value=bad_json, headers=[("origin", b"test-a")])
    producer.send(topic, key=b"rk101", value=bad_version, headers=[("origin", b"test-b")])
    # a valid batch after the bad ones must still be stored
    r = Readings()
    r.add(Kind.gpu, "rk101", "sv1/h1/row1/rk101/n01/gpu0", "power_w", 512.0, now_ms())
    (good,) = Batcher(f"dlq-{unique}", "sv1", 1.0).batches(r)
    producer.send(topic, key=b"rk101", value=encode(good), headers=headers_for(good))
    producer.flush()
    producer.close()

    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)
    try:
        ingest_until(
            ingestor,
            lambda: (
                store.cursor()
                .execute(
                    "SELECT count(*) FROM ingested_batches WHERE batch_id = ?", [good.batch_id]
                )
                .fetchone()[0]
                == 1
            ),
        )
        assert ingestor.stats.dead_letters["invalid_json"] >= 1
        assert ingestor.stats.dead_letters["unknown_version"] >= 1
    finally:
        ingestor.close()
        store.close()

    consumer = dead_letter_consumer(settings.kafka_bootstrap, unique)
    found = {}
    deadline = time.monotonic() + 30
    while len(found) < 2 and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            for m in msgs:
                if m.value in (bad_json, bad_version):
                    found[m.value] = dict(m.headers)
    consumer.close()
    assert set(found) == {bad_json, bad_version}, "both originals must be on the DLQ, unchanged"
    a, b = found[bad_json], found[bad_version]
    assert a["dctwin-dlq-reason"] == b"invalid_json"
    assert a["origin"] == b"test-a"  # original headers kept
    assert a["dctwin-source-topic"] == topic.encode()
    assert int(a["dctwin-source-offset"]) >= 0
    assert b["dctwin-dlq-reason"] == b"unknown_version"
    assert b"contract version 7" in b["dctwin-dlq-detail"]
