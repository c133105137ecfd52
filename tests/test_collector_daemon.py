"""The collector daemon against real parts: a real broker (the session's, or a dedicated
one that the test stops and restarts), a real spool directory, real DuckDB via the real
ingest consumer, and the metrics endpoint over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collectors.base import Readings
from collectors.config import CollectorConfig
from collectors.daemon import CollectorDaemon
from collectors.sources.simulated import SimulatedSource, SimulatedSourceConfig
from dctwin.broker import DevBroker, free_port
from ingest.consumer import Ingestor
from ingest.kafka import ensure_topics
from ingest.store import Store
from tests.helpers import ingest_until

RACKS = ["rk101", "rk102"]
FAST_KAFKA = {"max_block_ms": 500, "request_timeout_ms": 1000, "delivery_timeout_ms": 1500}


class RecordingSource:
    """A simulated source that keeps a copy of everything it hands to the daemon.
    While `quiet` is set it reads nothing (so the test can pick a moment with no send
    in flight without stopping the daemon)."""

    def __init__(self, racks: list[str] = RACKS, name: str = "sim") -> None:
        self.inner = SimulatedSource(SimulatedSourceConfig(name=name, racks=racks, seed=5))
        self.name = name
        self.taken: list[Readings] = []
        self.quiet = threading.Event()
        self.reads = 0

    def read(self) -> Readings:
        if self.quiet.is_set():
            return Readings()
        r = self.inner.read()
        self.taken.append(r)
        self.reads += 1
        return r

    def rows(self) -> list[tuple[str, str, int, float]]:
        return sorted((d, m, t, v) for r in self.taken for d, m, t, v in
                      zip(r.device_id, r.metric, r.read_time_ms, r.value, strict=True))

    def close(self) -> None:
        pass


class StuckSource:
    """A device that never answers (until released)."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()

    def read(self) -> Readings:
        self.release.wait(60)
        return Readings()

    def close(self) -> None:
        pass


class BrokenSource:
    name = "broken"

    def read(self) -> Readings:
        raise ConnectionRefusedError("device at 10.0.0.9:502 refused the connection")

    def close(self) -> None:
        pass


def config(name: str, bootstrap: str, spool_dir, **extra) -> CollectorConfig:
    raw = {"name": name, "site": "sv1", "interval_s": 0.3,
           "kafka": {"bootstrap": bootstrap, "compression": "zstd", **FAST_KAFKA},
           "spool": {"dir": str(spool_dir), "replay_backoff_initial_s": 0.2,
                     "replay_backoff_max_s": 0.5},
           "sources": [{"type": "simulated", "racks": RACKS}]}
    for key, value in extra.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return CollectorConfig.model_validate(raw)


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stored_rows(store: Store, racks: list[str]) -> list[tuple[str, str, int, float]]:
    return sorted(store.cursor().execute(
        "SELECT device_id, metric, epoch_ms(read_time), value FROM samples "
        "WHERE rack IN (SELECT unnest(?)) ORDER BY ALL", [racks]).fetchall())


def assert_in_read_order(store: Store, racks: list[str]) -> None:
    """Rows are appended in the order ingest stored them (rowid), so per device and metric
    the read times must increase along rowid."""
    bad = store.cursor().execute("""
        SELECT count(*) FROM (
            SELECT read_time - lag(read_time) OVER (PARTITION BY device_id, metric
                                                    ORDER BY rowid) AS step
            FROM samples WHERE rack IN (SELECT unnest(?)))
        WHERE step <= INTERVAL 0 SECOND""", [racks]).fetchone()[0]
    assert bad == 0, f"{bad} samples stored out of read order"


@pytest.mark.slow
def test_broker_outage_loses_nothing_and_stores_each_reading_once_in_order(tmp_path, unique):
    port = free_port()
    broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
    ensure_topics(broker.bootstrap, 2)
    source = RecordingSource()
    daemon = CollectorDaemon(config(f"outage-{unique}", broker.bootstrap, tmp_path / "spool"),
                             sources=[source])
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
        wait_for(lambda: source.reads >= reads_before + 6 and daemon.stats.spool_batches > 0,
                 what="reads during the outage")
        assert not daemon.stats.broker_up
        assert list((tmp_path / "spool").glob("*.seg")), "spooled batches must be on disk"
        assert daemon.stats.samples_spooled > 0

        # 3. the broker comes back on the same port. tansu keeps topics in memory only, so
        #    they are created again, as an operator's Kafka would already have them.
        broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
        outage_end_ms = int(time.time() * 1000)
        ensure_topics(broker.bootstrap, 2)
        wait_for(lambda: daemon.stats.spool_batches == 0 and daemon.stats.samples_replayed > 0,
                 what="spool replay")
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
        # The restarted broker's partitions start again at offset 0 (memory storage), so the
        # offsets DuckDB kept for the old broker do not apply: forget them, read it all.
        store.cursor().execute("DELETE FROM kafka_offsets")
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
        tmp_path, kafka_bootstrap, unique):
    fast, stuck, broken = RecordingSource(["rk103"], name="fast"), StuckSource(), BrokenSource()
    port = free_port()
    cfg = config(f"slow-{unique}", kafka_bootstrap, tmp_path / "spool", interval_s=0.5,
                 deadline_s=0.45, metrics={"port": port},
                 sources=[{"type": "simulated", "name": "fast", "racks": ["rk103"]},
                          {"type": "simulated", "name": "stuck", "deadline_s": 0.1},
                          {"type": "simulated", "name": "broken"}])
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
        success = {smp.labels["source"] for smp in
                   fams["dctwin_collector_source_last_success_time_seconds"].samples}
        assert success == {"fast"}  # never a success time for a source that never answered
        assert value("dctwin_collector_source_up", source="broken") == 0

        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["failing_sources"] == ["broken", "stuck"]
        assert httpx.get(f"{base}/nothing").status_code == 404

        def errors_stored() -> dict[str, str]:
            rows = store.cursor().execute(
                "SELECT attrs FROM events WHERE kind = 'source_error' AND device_id = ?",
                [daemon.device_id]).fetchall()
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
    cfg = config(f"bound-{unique}", f"127.0.0.1:{port}", tmp_path / "spool",
                 spool={"max_bytes": 200_000, "compress": False})
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
            return store.cursor().execute(
                "SELECT severity, attrs FROM events WHERE kind = 'spool_dropped' "
                "AND device_id = ?", [daemon.device_id]).fetchall()

        ingest_until(ingestor, lambda: len(drop_events()) > 0)
        for _ in range(3):
            ingestor.poll_once(timeout_ms=200)
        ingestor.close()
        rows = stored_rows(store, RACKS)
        assert len(rows) == expected  # exactly what was read minus what the spool reported
        attrs = [orjson.loads(a) for _, a in drop_events()]
        assert sum(a["samples"] for a in attrs) == dropped_samples
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
            assert got == times[len(times) - len(got):]
        assert set(rows) <= set(taken)
    finally:
        store.close()
        if broker is not None:
            broker.stop()


BATCH_LINE = re.compile(r"read batch (?P<id>[0-9a-f]{32}) seq=(?P<seq>\d+) topic=(?P<topic>\S+) "
                        r"rack=(?P<rack>\S+) (?:samples=(?P<n>\d+) read_ms=(?P<t0>\d+)\.\."
                        r"(?P<t1>\d+)|events=(?P<events>\d+))")
STOPPED_LINE = re.compile(r"stopped: read (\d+) batches \((\d+) samples\); sent (\d+), "
                          r"spooled (\d+), replayed (\d+), dropped (\d+); spool holds (\d+) "
                          r"batches \((\d+) samples\)")


def _batches(log_text: str) -> list[re.Match]:
    return list(BATCH_LINE.finditer(log_text))


def _collect(cfg_path, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli", "collect", "--config", str(cfg_path), "-v"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=cfg_path.parent)


def _sigterm(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


@pytest.mark.slow
def test_sigterm_mid_stream_then_restart_loses_nothing(tmp_path, unique):
    """`dctwin collect` is killed with SIGTERM while the broker is down, restarted once
    the broker is back, and killed again mid-stream. Every batch the daemon logged as
    read (its id, rack, sample count and read time) is in DuckDB, once."""
    port, metrics_port = free_port(), free_port()
    name = f"term-{unique}"
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f"""
name = "{name}"
site = "sv1"
interval_s = 0.3

[kafka]
bootstrap = "127.0.0.1:{port}"
max_block_ms = 500
request_timeout_ms = 1000
delivery_timeout_ms = 1500

[spool]
dir = "{tmp_path / 'spool'}"
replay_backoff_initial_s = 0.2
replay_backoff_max_s = 0.5

[metrics]
port = {metrics_port}

[[sources]]
type = "simulated"
racks = {RACKS!r}
""".replace("'", '"'))
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    broker = None
    store = Store(tmp_path / "twin.duckdb")
    proc = _collect(cfg, log1)
    try:
        # run 1: no broker at all; SIGTERM while batches stream into the spool
        wait_for(lambda: len(_batches(log1.read_text())) >= 24, what="run 1 reads")
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert fams["dctwin_collector_spool_batches"].samples[0].value > 0
        assert fams["dctwin_collector_broker_up"].samples[0].value == 0
        _sigterm(proc)
        text1 = log1.read_text()
        read1 = _batches(text1)
        stopped = [int(x) for x in STOPPED_LINE.search(text1).groups()]
        n_batches, n_samples, sent, spooled, replayed, dropped, held, held_samples = stopped
        assert n_batches == len(read1)  # the summary agrees with the per-batch log
        assert n_samples == sum(int(m["n"] or 0) for m in read1)
        assert sent == replayed == dropped == 0
        assert spooled == held == n_batches and held_samples == n_samples  # all in the spool

        # run 2: broker back; the restart replays the spool first, then runs live
        broker = DevBroker(port=port, log_path=tmp_path / "broker.log").start()
        ensure_topics(broker.bootstrap, 2)
        proc = _collect(cfg, log2)
        wait_for(lambda: "spool replayed" in log2.read_text()
                 and len(_batches(log2.read_text())) >= 16, what="run 2 replay and reads")
        _sigterm(proc)
        text2 = log2.read_text()
        read2 = _batches(text2)
        stopped = [int(x) for x in STOPPED_LINE.search(text2).groups()]
        assert stopped[0] == len(read2)
        _read, _samples, _sent, spooled2, replayed2, dropped2, held2, _ = stopped
        # run 1's spool, and what run 2 read while it was still replaying (queued behind)
        assert replayed2 == n_batches + spooled2
        assert dropped2 == held2 == 0
        assert not (tmp_path / "spool").exists()
        assert min(int(m["seq"]) for m in read2) > max(int(m["seq"]) for m in read1)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        read = read1 + read2
        total = sum(int(m["n"] or 0) for m in read)
        ingestor = Ingestor(store, broker.bootstrap, f"term-{unique}")

        def stored_samples() -> int:
            return store.cursor().execute(
                "SELECT coalesce(sum(n_samples), 0) FROM ingested_batches WHERE collector = ?",
                [name]).fetchone()[0]

        ingest_until(ingestor, lambda: stored_samples() >= total)
        for _ in range(5):
            ingestor.poll_once(timeout_ms=200)
        ingestor.close()
        batches = dict(store.cursor().execute(
            "SELECT batch_id, n_samples FROM ingested_batches WHERE collector = ?",
            [name]).fetchall())
        assert batches == {m["id"]: int(m["n"] or 0) for m in read}
        # each logged batch's samples are stored under its rack, kind and read time
        per_batch = Counter()
        for m in read:
            if m["n"] is not None:
                assert m["t0"] == m["t1"]  # one simulated read: one read time
                per_batch[(m["rack"], m["topic"].split(".", 1)[1], int(m["t0"]))] += int(m["n"])
        stored = Counter({(r, k, t): n for r, k, t, n in store.cursor().execute(
            "SELECT rack, kind, epoch_ms(read_time), count(*) FROM samples "
            "WHERE rack IN (SELECT unnest(?)) GROUP BY ALL", [RACKS]).fetchall()})
        assert stored == per_batch
        assert sum(stored.values()) == total
        assert_in_read_order(store, RACKS)
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
    daemon = CollectorDaemon(config(f"hung-{unique}", broker.bootstrap, tmp_path / "spool"),
                             sources=[source])
    loop = threading.Thread(target=daemon.run)
    store = Store(tmp_path / "twin.duckdb")
    try:
        loop.start()
        wait_for(lambda: daemon.stats.batches_sent >= 4, what="live sends")
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            reads = source.reads
            wait_for(lambda: source.reads >= reads + 6 and daemon.stats.spool_batches > 0,
                     what="reads while the broker hangs")
            assert not daemon.stats.broker_up
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: daemon.stats.spool_batches == 0 and daemon.stats.samples_replayed > 0,
                 what="spool replay")
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
