"""Offsets the broker no longer has, with a real broker: a topic re-created under ingest
(here: a memory-storage broker restarted, which creates its topics again with new topic
ids and offsets from 0) must not make ingest resume at the old offsets, which would skip
the new topic's first records without a trace. Everything the new topic holds is stored
and the event is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from dctwin.broker import DevBroker, free_port
from domain.topics import ensure_topics, make_producer
from ingest.consumer import Ingestor, resume_offset
from ingest.store import Store
from tests.helpers import ingest_until
from tests.ingest_messages import batch_doc, encode, now_ms


def produce(bootstrap: str, topic: str, docs: list[dict]) -> None:
    producer = make_producer(bootstrap, "zstd")
    try:
        for d in docs:
            producer.send(topic, key=d["rack"].encode(), value=encode(d)).get(timeout=30)
    finally:
        producer.close()


def stored(store: Store, docs: list[dict]) -> int:
    row = (
        store.cursor()
        .execute(
            "SELECT count(*) FROM ingested_batches WHERE list_contains(?, batch_id)",
            [[d["batch_id"] for d in docs]],
        )
        .fetchone()
    )
    assert row is not None
    return int(row[0])


def test_a_recreated_topic_is_read_from_its_start_and_the_event_recorded(
    tmp_path: Path, unique: str
):
    port = free_port()
    topic = f"recreated-{unique}"
    rack = f"rk-{unique}"
    t = now_ms() - 600_000
    before = [batch_doc(rack, t + k * 1000, collector=f"rc-{unique}") for k in range(5)]
    after = [batch_doc(rack, t + (100 + k) * 1000, collector=f"rc-{unique}") for k in range(8)]
    broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
    store = Store(tmp_path / "twin.duckdb")
    try:
        ensure_topics(broker.bootstrap, 1, topics=(topic,))
        produce(broker.bootstrap, topic, before)
        ingestor = Ingestor(store, broker.bootstrap, f"g-{unique}", topics=(topic,))
        try:
            ingest_until(ingestor, lambda: stored(store, before) == len(before))
        finally:
            ingestor.close()
        assert store.offsets()[(topic, 0)] == len(before)

        # the topic goes and comes back empty; more records than ingest had read arrive
        # before ingest restarts, so the saved offset (5) lies inside the new topic
        broker.stop()
        broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
        ensure_topics(broker.bootstrap, 1, topics=(topic,))
        produce(broker.bootstrap, topic, after)

        ingestor = Ingestor(store, broker.bootstrap, f"g-{unique}", topics=(topic,))
        try:
            ingest_until(ingestor, lambda: stored(store, after) == len(after))
            for _ in range(3):  # anything more (a duplicate) would show up now
                ingestor.poll_once(timeout_ms=200)
            snap = ingestor.stats.snapshot()
        finally:
            ingestor.close()
        assert stored(store, before) == len(before)  # nothing lost, nothing twice
        n = store.cursor().execute("SELECT count(*) FROM samples WHERE rack = ?", [rack]).fetchone()
        assert n is not None and n[0] == 12 * (len(before) + len(after))
        assert store.offsets()[(topic, 0)] == len(after)
        assert snap["data_loss_events"] == {"topic_recreated": 1}
        events = (
            store.cursor()
            .execute(
                "SELECT topic, partition, from_offset, to_offset, lost_records, reason "
                "FROM ingest_data_loss"
            )
            .fetchall()
        )
        assert events == [(topic, 0, len(before), 0, None, "topic_recreated")]
    finally:
        store.close()
        broker.stop()


@pytest.mark.parametrize(
    ("saved", "start", "end", "saved_id", "now_id", "resume", "reason", "lost"),
    [
        (5, 0, 9, "a", "a", 5, None, None),  # the usual case: resume where DuckDB is
        (5, 0, 3, "a", "b", 0, "topic_recreated", None),  # new id, fewer records
        (5, 0, 9, "a", "b", 0, "topic_recreated", None),  # new id, more records: the bug
        (5, 0, 3, None, None, 0, "topic_recreated", None),  # no ids: past the log end
        (5, 0, None, None, "b", 5, None, None),  # ids, none stored yet: trusted as before
        (5, 12, 20, "a", "a", 12, "retention", 7),  # deleted before they were read
        (12, 12, 20, "a", "a", 12, None, None),
    ],
)
def test_resume_policy(saved, start, end, saved_id, now_id, resume, reason, lost):
    """The policy for offsets the broker no longer has, case by case (the retention case
    cannot be made on the tansu test broker: it does not implement DeleteRecords)."""
    offset, event = resume_offset("t", 3, saved, start, end, saved_id, now_id)
    assert offset == resume
    if reason is None:
        assert event is None
    else:
        assert event is not None
        assert (event.reason, event.lost_records) == (reason, lost)
        assert (event.from_offset, event.to_offset) == (saved, resume)


def dead_letter_outcomes(store: Store, topic: str) -> list[str]:
    rows = (
        store.cursor()
        .execute("SELECT outcome FROM dead_letters WHERE topic = ? ORDER BY time", [topic])
        .fetchall()
    )
    return [r[0] for r in rows]


def test_dead_letters_reach_the_topic_after_a_broker_restart_under_a_running_ingestor(
    tmp_path: Path, unique: str
):
    """The dead-letter producer's idempotent session dies with the broker (a restarted
    memory broker answers OutOfOrderSequenceNumber / InitProducerId errors for ever): ingest
    renews the producer instead of quarantining every later dead letter."""
    port = free_port()
    topic = f"dlq-restart-{unique}"
    broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
    store = Store(tmp_path / "twin.duckdb")
    producer = None
    try:
        ensure_topics(broker.bootstrap, 1, topics=(topic, "deadletter"))
        producer = make_producer(broker.bootstrap, None)
        producer.send(topic, key=b"rk1", value=b"not json 1").get(timeout=30)
        ingestor = Ingestor(store, broker.bootstrap, f"g-{unique}", topics=(topic,))
        try:
            ingest_until(ingestor, lambda: len(dead_letter_outcomes(store, topic)) == 1)
            broker.stop()
            broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
            ensure_topics(broker.bootstrap, 1, topics=(topic, "deadletter"))
            producer.close()
            producer = make_producer(broker.bootstrap, None)
            producer.send(topic, key=b"rk1", value=b"not json 2").get(timeout=30)
            ingest_until(
                ingestor, lambda: len(dead_letter_outcomes(store, topic)) == 2, timeout_s=120
            )
        finally:
            ingestor.close()
        assert dead_letter_outcomes(store, topic) == ["dlq", "dlq"]  # none quarantined
        assert not ingestor.quarantine_path.exists()
    finally:
        if producer is not None:
            producer.close()
        store.close()
        broker.stop()
