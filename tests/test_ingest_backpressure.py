"""When storage falls behind, the consumer pauses fetching instead of buffering."""

from __future__ import annotations

import threading
import time

from domain.topics import ensure_topics, make_producer
from ingest.consumer import IngestConfig, Ingestor
from ingest.store import Store
from tests.ingest_messages import batch_doc, encode, now_ms


class SlowStore(Store):
    """A real Store whose every write takes a while longer: a disk that cannot keep up."""

    def __init__(self, *args, delay_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    def ingest(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return super().ingest(*args, **kwargs)


def test_slow_storage_pauses_the_consumer_and_bounds_what_is_buffered(settings, unique):
    topic = f"bp-{unique}"
    ensure_topics(settings.kafka_bootstrap, 2, topics=(topic,))
    producer = make_producer(settings.kafka_bootstrap, "lz4")
    t = now_ms()
    n_messages = 40
    for k in range(n_messages):
        rack = f"rk{k % 4}-{unique}"  # the key is the rack: four keys, both partitions
        producer.send(topic, key=rack.encode(), value=encode(batch_doc(rack, t + k * 1000)))
    producer.flush()
    producer.close()

    store = SlowStore(settings.db_path, delay_s=0.25)
    config = IngestConfig(max_poll_records=3, max_inflight=1, fetch_max_bytes=64 * 1024)
    ingestor = Ingestor(
        store, settings.kafka_bootstrap, settings.consumer_group, topics=(topic,), config=config
    )
    loop = threading.Thread(target=ingestor.run)
    loop.start()
    try:
        deadline = time.monotonic() + 120
        while ingestor.stats.messages < n_messages:
            assert time.monotonic() < deadline, f"not all stored: {ingestor.stats.snapshot()}"
            time.sleep(0.05)
    finally:
        ingestor.stop_event.set()
        loop.join(60)
        ingestor.close()
    s = ingestor.stats
    try:
        assert (
            store.cursor()
            .execute("SELECT count(*) FROM samples WHERE rack LIKE ?", [f"rk_-{unique}"])
            .fetchone()[0]
            == n_messages * 12
        )
    finally:
        store.close()
    # The writer was always behind: fetching was paused and resumed, again and again...
    assert s.pauses >= 3 and s.resumes >= 3, s.snapshot()
    # ...and never more than one poll (at most max_poll_records records) was waiting on it,
    # although the topic held many times that.
    assert s.max_inflight_polls == 1
    assert s.max_inflight_records <= 3
    assert s.polls >= n_messages // 3
    assert not s.paused and s.inflight_polls == 0  # drained on stop
