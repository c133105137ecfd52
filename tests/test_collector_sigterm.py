"""`dctwin collect` as a real subprocess: SIGTERM mid-stream (broker down, then up) and a
restart lose nothing the daemon read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dctwin.broker import DevBroker, free_port
from domain.topics import ensure_topics
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.collector_helpers import RACKS, assert_in_read_order, wait_for
from tests.helpers import ingest_until

BATCH_LINE = re.compile(
    r"read batch (?P<id>[0-9a-f]{32}) seq=(?P<seq>\d+) topic=(?P<topic>\S+) "
    r"rack=(?P<rack>\S+) (?:samples=(?P<n>\d+) read_ms=(?P<t0>\d+)\.\."
    r"(?P<t1>\d+)|events=(?P<events>\d+))"
)
STOPPED_LINE = re.compile(
    r"stopped: read (\d+) batches \((\d+) samples\); sent (\d+), "
    r"spooled (\d+), replayed (\d+), dropped (\d+); samples_acked=\d+ \(sent \+ replayed\); "
    r"spool holds (\d+) "
    r"batches \((\d+) samples\)"
)


def _batches(log_text: str) -> list[re.Match]:
    return list(BATCH_LINE.finditer(log_text))


def _collect(cfg_path, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "collect", "--config", str(cfg_path), "-v"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cfg_path.parent,
        )


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
    cfg.write_text(
        f"""
name = "{name}"
site = "sv1"
interval_s = 0.3

[kafka]
bootstrap = "127.0.0.1:{port}"
max_block_ms = 500
request_timeout_ms = 1000
delivery_timeout_ms = 1500

[spool]
dir = "{tmp_path / "spool"}"
replay_backoff_initial_s = 0.2
replay_backoff_max_s = 0.5

[metrics]
port = {metrics_port}

[[sources]]
type = "simulated"
racks = {RACKS!r}
""".replace("'", '"')
    )
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
        wait_for(
            lambda: "spool replayed" in log2.read_text() and len(_batches(log2.read_text())) >= 16,
            what="run 2 replay and reads",
        )
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
            return (
                store.cursor()
                .execute(
                    "SELECT coalesce(sum(n_samples), 0) FROM ingested_batches WHERE collector = ?",
                    [name],
                )
                .fetchone()[0]
            )

        ingest_until(ingestor, lambda: stored_samples() >= total)
        for _ in range(5):
            ingestor.poll_once(timeout_ms=200)
        ingestor.close()
        batches = dict(
            store.cursor()
            .execute("SELECT batch_id, n_samples FROM ingested_batches WHERE collector = ?", [name])
            .fetchall()
        )
        assert batches == {m["id"]: int(m["n"] or 0) for m in read}
        # each logged batch's samples are stored under its rack, kind and read time
        per_batch = Counter()
        for m in read:
            if m["n"] is not None:
                assert m["t0"] == m["t1"]  # one simulated read: one read time
                per_batch[(m["rack"], m["topic"].split(".", 1)[1], int(m["t0"]))] += int(m["n"])
        stored = Counter(
            {
                (r, k, t): n
                for r, k, t, n in store.cursor()
                .execute(
                    "SELECT rack, kind, epoch_ms(read_time), count(*) FROM samples "
                    "WHERE rack IN (SELECT unnest(?)) GROUP BY ALL",
                    [RACKS],
                )
                .fetchall()
            }
        )
        assert stored == per_batch
        assert sum(stored.values()) == total
        assert_in_read_order(store, RACKS)
    finally:
        store.close()
        if broker is not None:
            broker.stop()
