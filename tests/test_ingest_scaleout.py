"""Two ingest processes in one consumer group split the partitions; each writes its own
shard files, and every sample is stored exactly once across them."""

from __future__ import annotations

import pytest

from domain.topics import ensure_topics, make_producer
from ingest.shards import open_shards
from tests.ingest_messages import batch_doc, encode, now_ms
from tests.ingest_workers import Worker, caught_up

PARTITIONS = 8


@pytest.mark.slow
def test_two_workers_split_partitions_and_store_each_sample_once(tmp_path, kafka_bootstrap, unique):
    topic = f"so-{unique}"
    ensure_topics(kafka_bootstrap, PARTITIONS, topics=(topic,))
    shards = tmp_path / "shards"
    group = f"so-{unique}"
    a = Worker(tmp_path, "a", kafka_bootstrap, group, topic, "--shard-dir", str(shards))
    b = Worker(tmp_path, "b", kafka_bootstrap, group, topic, "--shard-dir", str(shards))
    try:

        def split(_s: dict) -> bool:
            sa, sb = a.stats().get("assigned", []), b.stats().get("assigned", [])
            return (
                len(sa) + len(sb) == PARTITIONS
                and bool(sa)
                and bool(sb)
                and not {p for _, p in sa} & {p for _, p in sb}
            )

        a.wait(split, what="a two-way split of the partitions")
        producer = make_producer(kafka_bootstrap, "zstd")
        t = now_ms()
        docs = []
        for k in range(200):  # 25 racks: keys spread over all partitions
            rack = f"rk{k % 25:02d}-{unique}"
            doc = batch_doc(rack, t + (k // 25) * 1000, collector=f"so-{unique}")
            docs.append(doc)
            producer.send(topic, key=rack.encode(), value=encode(doc))
            if k % 10 == 0:  # a producer retry: the same batch twice
                producer.send(topic, key=rack.encode(), value=encode(doc))
        producer.flush()
        producer.close()
        expected = sum(len(d["samples"]["value"]) for d in docs)
        # (lag alone could read 0 before the first fetch of the new data comes back)
        a.wait(
            lambda _s: sum(w.stats().get("samples_stored", 0) for w in (a, b)) >= expected,
            what="all samples stored",
        )
        for w in (a, b):
            w.wait(lambda s: caught_up(s, PARTITIONS // 2), what="catching up")
        assigned = {w: {p for _, p in w.stats()["assigned"]} for w in (a, b)}
    finally:
        stats = [w.stop() for w in (a, b)]
    assert all(s["samples_stored"] > 0 for s in stats)  # both did their share
    assert sum(s["samples_stored"] for s in stats) == expected
    assert sorted(p.name for p in shards.glob("p*.duckdb")) == [
        f"p{p:03d}.duckdb" for p in range(PARTITIONS)
    ]

    con = open_shards(shards)
    try:
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (device_id, metric, read_time)) FROM samples "
            "WHERE rack LIKE ?",
            [f"%-{unique}"],
        ).fetchone()
        assert n == distinct == expected
        # each shard holds the offsets of its own partition number only
        for k in range(PARTITIONS):
            parts = {
                p
                for (p,) in con.execute(
                    f"SELECT partition FROM s{k}.kafka_offsets WHERE topic = ?", [topic]
                ).fetchall()
            }
            assert parts <= {k}
    finally:
        con.close()
    assert assigned[a] | assigned[b] == set(range(PARTITIONS))
