"""GET /v1/dead-letters over the real app on a real server: what the real ingest loop
dead-lettered from a real broker, counted per reason with recent examples, for viewers."""

from __future__ import annotations

import hashlib

import httpx

from api.app import create_app
from api.keys import Role
from domain.contract import Kind, telemetry_topic
from domain.topics import ensure_topics, make_producer
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role, serve
from tests.helpers import ingest_until
from tests.ingest_messages import batch_doc, encode, now_ms
from twin.state import Twin


def test_dead_letters_endpoint_counts_reasons_and_shows_recent_examples(
    settings, unique, site, tmp_path
):
    topic = f"{telemetry_topic(Kind.gpu)}-{unique}"
    ensure_topics(settings.kafka_bootstrap, 2, topics=(topic,))
    rack = f"rk-{unique}"
    truncated = encode(batch_doc(rack, now_ms()))[:150]
    version_7 = encode(batch_doc(rack, now_ms(), version=7))
    producer = make_producer(settings.kafka_bootstrap, "zstd")
    sent = {}
    for name, raw in [("t1", truncated), ("t2", truncated + b" "), ("v7", version_7)]:
        sent[name] = producer.send(topic, key=rack.encode(), value=raw).get(timeout=30).offset
    producer.close()

    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group, topics=(topic,))
    try:
        ingest_until(ingestor, lambda: sum(ingestor.stats.dead_letters.values()) == 3)
    finally:
        ingestor.close()
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    try:
        with serve(create_app(Twin(site, store), keys=keys)) as base:
            assert httpx.get(f"{base}/v1/dead-letters").status_code == 401
            res = httpx.get(
                f"{base}/v1/dead-letters", params={"limit": 2}, headers=bearer(tokens[Role.viewer])
            )
            assert res.status_code == 200, res.text
            body = res.json()
    finally:
        store.close()
    assert body["total"] == 3
    assert body["since"].endswith("Z") and body["recent"][0]["time"].endswith("Z")
    counts = {r["reason"]: r["count"] for r in body["by_reason"]}
    assert counts == {"invalid_json": 2, "unknown_version": 1}
    assert all(r["quarantined"] == 0 and r["truncated"] == 0 for r in body["by_reason"])
    assert len(body["recent"]) == 2  # newest first, as many as asked
    newest = max(body["recent"], key=lambda r: r["offset"])
    assert newest["offset"] == sent["v7"] and newest["reason"] == "unknown_version"
    assert newest["topic"] == topic and newest["outcome"] == "dlq"
    assert newest["size_bytes"] == len(version_7)
    assert newest["sha256"] == hashlib.sha256(version_7).hexdigest()
    assert newest["excerpt"] == version_7[:256].decode()
    assert "version" in newest["detail"]
