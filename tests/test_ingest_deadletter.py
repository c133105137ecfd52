"""Every kind of bad message, through the real broker: dead-lettered with its original
bytes, headers, source partition/offset and reason, while valid messages interleaved with
them keep being stored by the pipelined ingest loop."""

from __future__ import annotations

import threading
import time

from domain.contract import Kind, telemetry_topic
from domain.topics import MAX_MESSAGE_BYTES, ensure_topics, make_producer
from ingest.consumer import IngestConfig, Ingestor
from ingest.store import Store
from ingest.validate import IngestPolicy
from tests.helpers import dead_letter_consumer, wait_for
from tests.ingest_messages import batch_doc, encode, now_ms


def test_bad_messages_are_dead_lettered_and_ingest_keeps_consuming(settings, unique, site):
    gpus = [d for d in site.devices() if d.device_class == "gpu"]
    rack = gpus[0].rack  # devices travel under their own rack's key (bad_device_id otherwise)
    collector = f"dlq-{unique}"
    known = [d.id for d in gpus if d.rack == rack][:4]
    t = now_ms() - 600_000  # in the past: other tests' twins must not see these as latest

    def doc(k: int, **kw) -> dict:
        kw.setdefault("devices", known)
        return batch_doc(rack, t + k * 1000, collector=collector, **kw)

    big = doc(0, devices=[f"sv1/h1/row1/{rack}/n01/gpu{k}" for k in range(54_000)])
    bad: dict[str, tuple[bytes, str]] = {
        "truncated": (encode(doc(1))[:200], "invalid_json"),
        "value_strings": (
            encode(doc(2) | {"samples": doc(2)["samples"] | {"value": ["hot"] * 12}}),
            "schema",
        ),
        "seq_string": (encode(doc(3, seq="three")), "schema"),
        "samples_not_object": (encode(doc(4) | {"samples": "none"}), "schema"),
        "nan": (  # every value NaN (an unknown key such as "x" would be `schema`)
            encode(doc(5)).replace(
                encode(doc(5)["samples"]["value"]), b"[" + b",".join([b"NaN"] * 12) + b"]"
            ),
            "non_finite",
        ),
        "infinity": (encode(doc(6)).replace(b'"value":[1.0', b'"value":[Infinity'), "non_finite"),
        "year_ahead": (encode(doc(365 * 86400)), "timestamp_skew"),
        "unknown_metric": (
            encode(doc(7, metrics=("gpu_temp_c", "flux_capacitance_f", "power_w"))),
            "unknown_metric",
        ),
        "unknown_version": (encode(doc(8, version=2)), "unknown_version"),
        "empty_batch": (encode(doc(9, devices=[])), "empty_batch"),
        "ten_mb": (encode(big), "too_large"),
    }
    assert b"NaN" in bad["nan"][0] and len(bad["ten_mb"][0]) > 10 * 1024 * 1024 - 1
    assert len(bad["ten_mb"][0]) < MAX_MESSAGE_BYTES  # the broker takes it; ingest refuses
    valid = [doc(100 + k) for k in range(len(bad) + 1)]
    unknown_device = doc(200, devices=[*known[:2], f"sv1/h1/row1/{rack}/n99/gpu0"])

    # a topic of its own (same broker): real device ids must not reach other tests' twins
    topic = f"{telemetry_topic(Kind.gpu)}-{unique}"
    ensure_topics(settings.kafka_bootstrap, 4, topics=(topic,))
    producer = make_producer(settings.kafka_bootstrap, "zstd")
    sent: dict[str, tuple[int, int]] = {}
    for k, (name, (raw, _)) in enumerate(bad.items()):
        producer.send(topic, key=rack.encode(), value=encode(valid[k]))
        md = producer.send(
            topic, key=rack.encode(), value=raw, headers=[("origin", name.encode())]
        ).get(timeout=60)
        sent[name] = (md.partition, md.offset)
    producer.send(topic, key=rack.encode(), value=encode(valid[-1]))
    producer.send(topic, key=rack.encode(), value=encode(unknown_device))
    producer.flush()
    producer.close()

    store = Store(settings.db_path)
    ingestor = Ingestor(
        store,
        settings.kafka_bootstrap,
        settings.consumer_group,
        topics=(topic,),
        policy=IngestPolicy.for_site(site),
        config=IngestConfig(max_poll_records=4),
    )  # many small polls
    loop = threading.Thread(target=ingestor.run)
    loop.start()
    want_ids = [v["batch_id"] for v in valid] + [unknown_device["batch_id"]]

    def stored_batches() -> int:
        return (
            store.cursor()
            .execute(
                "SELECT count(*) FROM ingested_batches WHERE collector = ? AND list_contains(?, "
                "batch_id)",
                [collector, want_ids],
            )
            .fetchone()[0]
        )

    try:
        wait_for(lambda: stored_batches() == len(want_ids), what="valid batches stored")
        wait_for(
            lambda: sum(ingestor.stats.dead_letters.values()) >= len(bad) - 1, what="dead letters"
        )
        # lag, for /metrics: the high watermark minus the next offset stored
        part = sent["ten_mb"][0]
        wait_for(
            lambda: (
                ingestor.stats.lag.get((topic, part)) is not None
                and ingestor.stats.lag[(topic, part)].lag == 0
            ),
            what="lag 0",
        )
        snap = ingestor.stats.snapshot()
        samples = {
            (name, tuple(sorted(labels.items()))): v
            for name, labels, v in ingestor.stats.metric_samples()
        }
    finally:
        ingestor.stop_event.set()
        loop.join(60)
        ingestor.close()
    try:
        n = (
            store.cursor()
            .execute("SELECT count(*) FROM samples WHERE rack = ?", [rack])
            .fetchone()[0]
        )
        # every valid batch, the unknown-device batch whole (policy accept: 3 devices x 3
        # metrics), and (policy keep_valid) the 11 finite samples of the batch with one
        # Infinity and the 8 known-metric samples of the batch with an unknown metric
        assert n == 12 * len(valid) + 9 + 11 + 8
        assert ingestor.stats.unknown_device_samples >= 3
    finally:
        store.close()
    for name, (_, reason) in bad.items():
        assert ingestor.stats.dead_letters[reason] >= 1, name
    # the same counters as plain data and as metric samples for /metrics
    assert snap["dead_letters"]["too_large"] >= 1 and snap["samples_stored"] >= n
    assert {"topic": topic, "partition": part, "lag": 0} in [
        {k: p[k] for k in ("topic", "partition", "lag")} for p in snap["lag"]
    ]
    assert samples[("dctwin_ingest_dead_letters_total", (("reason", "non_finite"),))] >= 2
    assert samples[("dctwin_ingest_samples_rejected_total", (("reason", "non_finite"),))] >= 13
    assert (
        samples[
            ("dctwin_ingest_partition_lag_records", (("partition", str(part)), ("topic", topic)))
        ]
        == 0
    )

    consumer = dead_letter_consumer(settings.kafka_bootstrap, unique)
    by_value = {raw: name for name, (raw, _) in bad.items()}
    found: dict[str, dict[str, bytes]] = {}
    deadline = time.monotonic() + 60
    while len(found) < len(bad) and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            for m in msgs:
                if m.value in by_value:
                    found[by_value[m.value]] = dict(m.headers)
    consumer.close()
    assert set(found) == set(bad), "every original must be on the DLQ, byte for byte"
    for name, headers in found.items():
        partition, offset = sent[name]
        assert headers["dctwin-dlq-reason"].decode() == bad[name][1], name
        assert headers["origin"] == name.encode()  # original headers kept
        assert headers["dctwin-source-topic"] == topic.encode()
        assert int(headers["dctwin-source-partition"]) == partition
        assert int(headers["dctwin-source-offset"]) == offset
        assert headers["dctwin-dlq-detail"]
    assert found["infinity"]["dctwin-dlq-samples-kept"] == b"11"
    assert found["infinity"]["dctwin-dlq-samples-rejected"] == b"1"
    assert found["nan"]["dctwin-dlq-samples-kept"] == b"0"
    assert b"unknown_metric=4" in found["unknown_metric"]["dctwin-dlq-detail"]
    assert found["unknown_metric"]["dctwin-dlq-samples-kept"] == b"8"
