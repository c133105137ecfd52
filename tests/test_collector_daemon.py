"""The collector daemon against real parts: a real broker (the session's, or a dedicated
one that the test stops, hangs and restarts), a real spool directory, real DuckDB via the
real ingest consumer, and the metrics endpoint over real HTTP."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collectors.daemon import CollectorDaemon
from dctwin.broker import DevBroker, free_port
from domain.topics import ensure_topics
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.collector_helpers import (
    RACKS,
    BrokenSource,
    RecordingSource,
    StuckSource,
    assert_in_read_order,
    config,
    stored_rows,
    wait_for,
)
from tests.helpers import ingest_until


@pytest.mark.slow
def test_broker_outage_loses_nothing_and_stores_each_reading_once_in_order(tmp_path, unique):
    port = free_port()
    broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
    ensure_topics(broker.bootstrap, 2)
    source = RecordingSource()
    daemon = CollectorDaemon(
        config(f"outage-{unique}", broker.bootstrap, tmp_path / "spool"), sources=[source]
    )
    loop = threading.Thread(target=daemon.run)
    store = Store(tmp_path / "twin.duckdb")
    try:
        loop.start()
        # 1. live: batches go straight to Kafka and into DuckDB
        ingestor = Ingestor(store, broker.bootstrap, f"g1-{unique}")
        wait_for(lambda: daemon.stats.batches_sent >= 8, what="live sends")
        source.quiet.set()  # no new readings: nothing is in flight when the broker stops
        ticks = daemon.stats.ticks
        wait_for(lambda: daemon.stats.ticks >= ticks + 2, what="a quiet tick")
        assert daemon.shipper.drain(10)
        sent_live = daemon.stats.samples_sent
        ingest_until(ingestor, lambda: len(stored_rows(store, RACKS)) >= sent_live)
        ingestor.close()
        assert daemon.stats.batches_spooled == 0

        # 2. the broker goes away; the daemon keeps reading for several intervals
        broker.stop()
        outage_start_ms = int(time.time() * 1000)
        reads_before = source.reads
        source.quiet.clear()
        wait_for(
            lambda: source.reads >= reads_before + 6 and daemon.stats.spool_batches > 0,
            what="reads during the outage",
        )
        assert not daemon.stats.broker_up
        assert list((tmp_path / "spool").glob("*.seg")), "spooled batches must be on disk"
        assert daemon.stats.samples_spooled > 0

        # 3. the broker comes back on the same port. tansu keeps topics in memory only, so
        #    they are created again, as an operator's Kafka would already have them.
        broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
        outage_end_ms = int(time.time() * 1000)
        ensure_topics(broker.bootstrap, 2)
        wait_for(
            lambda: daemon.stats.spool_batches == 0 and daemon.stats.samples_replayed > 0,
            what="spool replay",
        )
        reads_after = source.reads
        wait_for(lambda: source.reads >= reads_after + 3, what="live reads after the outage")
    finally:
        daemon.stop()
        loop.join(30)
        daemon.close()
    try:
        s = daemon.stats
        assert s.batches_replayed == s.batches_spooled > 0
        assert s.samples_replayed == s.samples_spooled
        assert s.batches_dropped == 0
        taken = source.rows()
        assert s.samples_read == len(taken)
        # The restarted broker's partitions start again at offset 0 (memory storage): the
        # topics were re-created, which ingest recognises by their new topic ids and reads
        # from their start (tests/test_ingest_offsets.py), with DuckDB's offsets as they are.
        ingestor = Ingestor(store, broker.bootstrap, f"g2-{unique}")
        ingest_until(ingestor, lambda: len(stored_rows(store, RACKS)) >= len(taken))
        for _ in range(5):  # anything more (a duplicate) would show up now
            ingestor.poll_once(timeout_ms=200)
        ingestor.close()

        rows = stored_rows(store, RACKS)
        assert len(rows) == len(taken)  # every reading, once
        assert rows == taken  # same devices, metrics, original read times and values
        during = [r for r in taken if outage_start_ms <= r[2] <= outage_end_ms]
        assert during, "readings taken during the outage keep their read times"
        assert_in_read_order(store, RACKS)
        assert not (tmp_path / "spool").exists()  # replayed and cleaned up
    finally:
        store.close()
        broker.stop()


def test_stuck_and_failing_sources_do_not_delay_the_others_and_are_reported(
    tmp_path, kafka_bootstrap, unique
):
    fast, stuck, broken = RecordingSource(["rk103"], name="fast"), StuckSource(), BrokenSource()
    port = free_port()
    cfg = config(
        f"slow-{unique}",
        kafka_bootstrap,
        tmp_path / "spool",
        interval_s=0.5,
        deadline_s=0.45,
        metrics={"port": port},
        sources=[
            {"type": "simulated", "name": "fast", "racks": ["rk103"]},
            {"type": "simulated", "name": "stuck", "deadline_s": 0.1},
            {"type": "simulated", "name": "broken"},
        ],
    )
    daemon = CollectorDaemon(cfg, sources=[fast, stuck, broken])
    store = Store(tmp_path / "twin.duckdb")
    ingestor = Ingestor(store, kafka_bootstrap, f"slow-{unique}")
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.run(max_intervals=4)  # would never return if the stuck read held the loop
        s = daemon.stats
        assert fast.reads == s.ticks == 4  # read every tick, stuck neighbour or not
        assert s.sources["fast"].readings == len(fast.rows()) > 0
        assert s.sources["stuck"].errors == {"timeout": 1, "busy": 3}
        assert s.sources["broken"].errors == {"exception": 4}
        assert sum(t.name == "read-stuck" for t in threading.enumerate()) == 1  # no pile-up

        body = httpx.get(f"{base}/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(body)}

        def value(family: str, **labels) -> float:
            for sample in fams[family].samples:
                if sample.name.endswith(("_created",)):
                    continue
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
            raise AssertionError(f"{family}{labels} not exported")

        errs = "dctwin_collector_source_errors"
        assert value(errs, source="stuck", reason="timeout") == 1
        assert value(errs, source="stuck", reason="busy") == 3
        assert value(errs, source="broken", reason="exception") == 4
        assert value(errs, source="fast", reason="timeout") == 0
        assert value("dctwin_collector_source_readings", source="fast") == len(fast.rows())
        assert value("dctwin_collector_readings") == s.samples_read
        assert value("dctwin_collector_batches_sent") == s.batches_sent > 0
        last_ok = value("dctwin_collector_source_last_success_time_seconds", source="fast")
        assert abs(last_ok - time.time()) < 60
        success = {
            smp.labels["source"]
            for smp in fams["dctwin_collector_source_last_success_time_seconds"].samples
        }
        assert success == {"fast"}  # never a success time for a source that never answered
        assert value("dctwin_collector_source_up", source="broken") == 0

        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["failing_sources"] == ["broken", "stuck"]
        assert httpx.get(f"{base}/nothing").status_code == 404

        def errors_stored() -> dict[str, str]:
            rows = (
                store.cursor()
                .execute(
                    "SELECT attrs FROM events WHERE kind = 'source_error' AND device_id = ?",
                    [daemon.device_id],
                )
                .fetchall()
            )
            return {orjson.loads(a)["source"]: orjson.loads(a)["reason"] for (a,) in rows}

        ingest_until(ingestor, lambda: len(errors_stored()) >= 2)
        assert errors_stored() == {"stuck": "timeout", "broken": "exception"}

        daemon.stop()
        assert httpx.get(f"{base}/healthz").status_code == 503  # stopping
    finally:
        stuck.release.set()
        daemon.close()
        ingestor.close()
        store.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz")


@pytest.mark.slow
def test_spool_bound_drops_oldest_counts_it_and_reports_spool_dropped(tmp_path, unique):
    port = free_port()  # nothing listens here yet: the broker is down from the start
    source = RecordingSource()
    cfg = config(
        f"bound-{unique}",
        f"127.0.0.1:{port}",
        tmp_path / "spool",
        spool={"max_bytes": 200_000, "compress": False},
    )
    daemon = CollectorDaemon(cfg, sources=[source])
    broker = None
    store = Store(tmp_path / "twin.duckdb")
    try:
        daemon.run(max_intervals=6)  # ~470 kB read, 200 kB of spool
        s = daemon.stats
        assert s.batches_dropped > 0 and s.samples_dropped > 0
        assert s.spool_bytes <= 200_000
        assert s.batches_spooled == s.batches_read  # everything was offered to the spool

        broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
        ensure_topics(broker.bootstrap, 2)
        wait_for(lambda: daemon.stats.spool_batches == 0, what="spool replay")
        dropped_samples = daemon.stats.samples_dropped
        daemon.run(max_intervals=1)  # carries the spool_dropped events raised so far
        assert daemon.stats.samples_dropped == dropped_samples
        assert daemon.stats.spool_batches == 0 and daemon.stats.queue_batches == 0
    finally:
        daemon.close()
    try:
        ingestor = Ingestor(store, broker.bootstrap, f"bound-{unique}")
        taken = source.rows()
        expected = len(taken) - dropped_samples
        ingest_until(ingestor, lambda: len(stored_rows(store, RACKS)) >= expected)

        def drop_events():
            return (
                store.cursor()
                .execute(
                    "SELECT severity, attrs FROM events WHERE kind = 'spool_dropped' "
                    "AND device_id = ?",
                    [daemon.device_id],
                )
                .fetchall()
            )

        ingest_until(ingestor, lambda: len(drop_events()) > 0)
        for _ in range(3):
            ingestor.poll_once(timeout_ms=200)
        ingestor.close()
        rows = stored_rows(store, RACKS)
        assert len(rows) == expected  # exactly what was read minus what the spool reported
        attrs = [orjson.loads(a) for _, a in drop_events()]
        # each event reports its own drop and the running total; an old event may itself
        # have been dropped by a later overflow, but the newest total covers everything
        assert max(a["samples_total"] for a in attrs) == dropped_samples
        assert sum(a["samples"] for a in attrs) <= dropped_samples
        assert {sev for sev, _ in drop_events()} == {"critical"}
        assert all(a["reasons"] == "spool_full" for a in attrs)
        # the oldest went: per device, what is stored is the newest part of what was read
        by_device: dict[tuple[str, str], list[int]] = {}
        for d, m, t, _v in taken:
            by_device.setdefault((d, m), []).append(t)
        kept: dict[tuple[str, str], list[int]] = {}
        for d, m, t, _v in rows:
            kept.setdefault((d, m), []).append(t)
        for key, times in by_device.items():
            got = kept.get(key, [])
            assert got == times[len(times) - len(got) :]
        assert set(rows) <= set(taken)
    finally:
        store.close()
        if broker is not None:
            broker.stop()


@pytest.mark.slow
def test_hung_broker_times_out_to_the_spool_and_duplicates_are_stored_once(tmp_path, unique):
    """A broker that accepts connections but never answers (SIGSTOP): sends time out and
    are spooled; after SIGCONT the broker may still write the timed-out requests, so the
    replay produces copies, which ingest recognises by batch id."""
    broker = DevBroker(log_path=tmp_path / "broker.log").start()
    ensure_topics(broker.bootstrap, 2)
    source = RecordingSource()
    daemon = CollectorDaemon(
        config(f"hung-{unique}", broker.bootstrap, tmp_path / "spool"), sources=[source]
    )
    loop = threading.Thread(target=daemon.run)
    store = Store(tmp_path / "twin.duckdb")
    try:
        loop.start()
        wait_for(lambda: daemon.stats.batches_sent >= 4, what="live sends")
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            reads = source.reads
            wait_for(
                lambda: source.reads >= reads + 6 and daemon.stats.spool_batches > 0,
                what="reads while the broker hangs",
            )
            assert not daemon.stats.broker_up
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        wait_for(
            lambda: daemon.stats.spool_batches == 0 and daemon.stats.samples_replayed > 0,
            what="spool replay",
        )
        reads = source.reads
        wait_for(lambda: source.reads >= reads + 2, what="live reads after")
    finally:
        daemon.stop()
        loop.join(30)
        daemon.close()
    try:
        taken = source.rows()
        ingestor = Ingestor(store, broker.bootstrap, f"hung-{unique}")
        ingest_until(ingestor, lambda: len(stored_rows(store, RACKS)) >= len(taken))
        for _ in range(5):
            ingestor.poll_once(timeout_ms=200)
        ingestor.close()
        assert stored_rows(store, RACKS) == taken
        assert_in_read_order(store, RACKS)
    finally:
        store.close()
        broker.stop()
