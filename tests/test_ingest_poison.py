"""No message can stop ingest, through the real broker: a 17 MiB message (larger than the
dead-letter producer may send) is dead-lettered as a prefix with its size, sha256 and
reason; a dead letter the topic refuses altogether is quarantined in a local file; a
message whose handling raises is dead-lettered `ingest_error`. Each time the next good
messages are stored and the offsets move on."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from typing import Any

import orjson

from domain.contract import Kind, telemetry_topic
from domain.topics import MAX_MESSAGE_BYTES, ensure_topics, make_producer
from ingest.consumer import IngestConfig, Ingestor
from ingest.deadletters import DeadLetterSink
from ingest.store import Store
from tests.helpers import dead_letter_consumer, wait_for
from tests.ingest_messages import batch_doc, encode, now_ms

BIG_BYTES = 17 << 20  # over MAX_MESSAGE_BYTES (16 MiB): the DLQ producer cannot send it


def produce(bootstrap: str, topic: str, rack: str, values: list[tuple[bytes, str]]) -> list[int]:
    """Send each (value, origin) to the partition of `rack`; returns their offsets."""
    producer = make_producer(bootstrap, "zstd", max_request_size=32 << 20)
    try:
        return [
            producer.send(topic, key=rack.encode(), value=v, headers=[("origin", o.encode())])
            .get(timeout=60)
            .offset
            for v, o in values
        ]
    finally:
        producer.close()


def stored_batches(store: Store, ids: list[str]) -> int:
    row = (
        store.cursor()
        .execute("SELECT count(*) FROM ingested_batches WHERE list_contains(?, batch_id)", [ids])
        .fetchone()
    )
    assert row is not None
    return int(row[0])


def dead_letter_rows(store: Store, topic: str) -> list[dict[str, Any]]:
    cur = store.cursor().execute(
        'SELECT reason, "offset", size_bytes, sha256, excerpt, outcome FROM dead_letters '
        'WHERE topic = ? ORDER BY "offset"',
        [topic],
    )
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def run_in_thread(ingestor: Ingestor) -> threading.Thread:
    loop = threading.Thread(target=ingestor.run)
    loop.start()
    return loop


def stop(ingestor: Ingestor, loop: threading.Thread) -> None:
    ingestor.stop_event.set()
    loop.join(60)
    ingestor.close()


def test_a_17_mib_message_is_dead_lettered_truncated_and_ingest_keeps_running(settings, unique):
    rack = f"rk-{unique}"
    topic = f"{telemetry_topic(Kind.gpu)}-{unique}"
    ensure_topics(settings.kafka_bootstrap, 2, topics=(topic,))
    t = now_ms() - 600_000
    good = [batch_doc(rack, t + k * 1000, collector=f"big-{unique}") for k in range(3)]
    big = b"Z" * BIG_BYTES
    assert BIG_BYTES > MAX_MESSAGE_BYTES
    offsets = produce(
        settings.kafka_bootstrap,
        topic,
        rack,
        [(encode(good[0]), "g0"), (big, "big"), (encode(good[1]), "g1"), (encode(good[2]), "g2")],
    )
    store = Store(settings.db_path)
    ingestor = Ingestor(
        store,
        settings.kafka_bootstrap,
        settings.consumer_group,
        topics=(topic,),
        config=IngestConfig(max_poll_records=2, max_partition_fetch_bytes=32 << 20),
    )
    loop = run_in_thread(ingestor)
    try:
        wait_for(lambda: stored_batches(store, [g["batch_id"] for g in good]) == 3, what="stored")
        assert loop.is_alive(), "ingest must keep running"
        snap = ingestor.stats.snapshot()
        metrics = {
            (n, tuple(sorted(lb.items()))): v for n, lb, v in ingestor.stats.metric_samples()
        }
    finally:
        stop(ingestor, loop)
    try:
        assert snap["dead_letters"] == {"too_large": 1}
        assert snap["dead_letters_truncated"] == 1
        assert metrics[("dctwin_ingest_dead_letters_truncated_total", ())] == 1
        (row,) = dead_letter_rows(store, topic)
        assert row["reason"] == "too_large" and row["offset"] == offsets[1]
        assert row["size_bytes"] == BIG_BYTES
        assert row["sha256"] == hashlib.sha256(big).hexdigest()
        assert row["outcome"] == "dlq_truncated" and row["excerpt"].startswith("ZZZ")
        assert store.offsets()[next(k for k in store.offsets() if k[0] == topic)] == offsets[-1] + 1
    finally:
        store.close()

    consumer = dead_letter_consumer(settings.kafka_bootstrap, unique)
    found: dict[str, bytes] | None = None
    value = b""
    deadline = time.monotonic() + 60
    while found is None and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            for m in msgs:
                h = dict(m.headers)
                if h.get("dctwin-source-topic") == topic.encode():
                    found, value = h, m.value
    consumer.close()
    assert found is not None, "the dead letter must be on the topic"
    assert found["origin"] == b"big"
    assert found["dctwin-dlq-reason"] == b"too_large"
    assert int(found["dctwin-original-size"]) == BIG_BYTES
    assert found["dctwin-original-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert int(found["dctwin-source-offset"]) == offsets[1]
    assert 0 < len(value) == int(found["dctwin-dlq-truncated"]) < 1 << 20
    assert big.startswith(value)


def test_a_dead_letter_the_topic_refuses_is_quarantined_and_ingest_moves_on(
    settings, unique, tmp_path
):
    rack = f"rk-{unique}"
    topic = f"{telemetry_topic(Kind.gpu)}-{unique}"
    ensure_topics(settings.kafka_bootstrap, 2, topics=(topic,))
    good = batch_doc(rack, now_ms() - 600_000, collector=f"q-{unique}")
    bad = b'{"version": 1, "type": "telemetry", "samples": {' + b"x" * 5000
    offsets = produce(settings.kafka_bootstrap, topic, rack, [(bad, "bad"), (encode(good), "good")])
    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group, topics=(topic,))
    assert ingestor.quarantine_path == settings.db_path.parent / "quarantine.jsonl"
    # a dead-letter producer the broker path refuses for size, even for the prefix
    ingestor.dead_letters = DeadLetterSink(
        make_producer(settings.kafka_bootstrap, "zstd", max_request_size=1024),
        ingestor.quarantine_path,
        max_value_bytes=512,
        truncated_bytes=2048,
    )
    loop = run_in_thread(ingestor)
    try:
        wait_for(lambda: stored_batches(store, [good["batch_id"]]) == 1, what="good stored")
        snap = ingestor.stats.snapshot()
    finally:
        ingestor.dead_letters.producer.close()
        stop(ingestor, loop)
    try:
        assert snap["poison_messages"] == {"quarantined": 1}
        (row,) = dead_letter_rows(store, topic)
        assert (row["reason"], row["offset"], row["outcome"]) == (
            "invalid_json",
            offsets[0],
            "quarantined",
        )
    finally:
        store.close()
    (line,) = ingestor.quarantine_path.read_bytes().splitlines()
    q = orjson.loads(line)
    assert (q["topic"], q["offset"], q["reason"]) == (topic, offsets[0], "invalid_json")
    assert base64.b64decode(q["value_b64"]) == bad  # the whole message, its only copy
    assert q["sha256"] == hashlib.sha256(bad).hexdigest() and q["size_bytes"] == len(bad)
    assert "MessageSizeTooLarge" in q["dlq_error"]


class FaultyStore(Store):
    """A store whose bulk path raises on one message (a stand-in for any bug a message
    can trigger in staging); everything else is the real store."""

    def ingest(self, records, *args, **kwargs):
        if any(dict(r.headers or []).get("origin") == b"boom" for r in records):
            raise ValueError("boom: this message breaks staging")
        return super().ingest(records, *args, **kwargs)


def test_a_message_whose_handling_raises_is_dead_lettered_and_the_rest_stored(settings, unique):
    rack = f"rk-{unique}"
    topic = f"{telemetry_topic(Kind.gpu)}-{unique}"
    ensure_topics(settings.kafka_bootstrap, 2, topics=(topic,))
    t = now_ms() - 600_000
    good = [batch_doc(rack, t + k * 1000, collector=f"boom-{unique}") for k in range(3)]
    offsets = produce(
        settings.kafka_bootstrap,
        topic,
        rack,
        [(encode(good[0]), "g0"), (encode(good[1]), "boom"), (encode(good[2]), "g2")],
    )
    store = FaultyStore(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group, topics=(topic,))
    loop = run_in_thread(ingestor)
    try:
        ids = [good[0]["batch_id"], good[2]["batch_id"]]
        wait_for(lambda: stored_batches(store, ids) == 2, what="the others stored")
        wait_for(lambda: ingestor.stats.poison_messages["ingest_error"] == 1, what="counted")
        assert loop.is_alive()
    finally:
        stop(ingestor, loop)
    try:
        (row,) = dead_letter_rows(store, topic)
        assert (row["reason"], row["offset"], row["outcome"]) == ("ingest_error", offsets[1], "dlq")
        assert stored_batches(store, [good[1]["batch_id"]]) == 0
        assert {o for (t_, _), o in store.offsets().items() if t_ == topic} == {offsets[-1] + 1}
    finally:
        store.close()
