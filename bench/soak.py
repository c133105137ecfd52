"""Soak test: the demo's processes under chaos for N minutes, then an audit of what was kept.

    python -m bench.soak --minutes 30            # the run recorded in docs/BENCHMARKS.md
    python -m bench.soak --minutes 3 --quick     # a smoke run of the same script

Everything is local (loopback only) and bounded by `--minutes`. It runs the demo's parts as
separate processes: a tansu broker, a collector daemon with the simulated example site
(`dctwin collect`, spool on disk) and `dctwin serve` (ingest + twin + alerts + API) with a
webhook receiver of its own. While they run, on a schedule:

- the broker is killed (SIGKILL) and started again after an outage. tansu keeps topics in
  memory, so every restart is also a topic re-creation: the collector spools through the
  outage and replays into new, empty topics whose offsets start again at 0. The kill is
  timed when ingest has caught up (a persistent Kafka loses nothing on restart; the
  memory broker would lose what nobody had read yet, which is the broker's loss, not ours);
- `dctwin serve` is SIGKILLed and started again (exactly-once ingest, durable outbox);
- malformed messages are produced (garbage, bad JSON, wrong version, a 17 MiB value, ...);
- XID events are produced for real GPUs, so alerts fire and go to the webhook receiver;
- API load: a loop of GETs on the dashboard's endpoints.

At the end the collector is stopped (its spool must be empty), ingest drains, `serve`
stops, and the DuckDB file is audited: samples stored = samples the broker acknowledged to
the collector, no duplicate sample, every XID event stored once, every bad message
dead-lettered (never stored), every outbox notification delivered and received, no 5xx.
The figures are printed and written to `<workdir>/soak.json`; exit status 1 on a failed check.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import httpx
import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from api.keys import DEMO_KEY, KeyStore, Role
from dctwin.broker import DevBroker, free_port, stop_process
from domain.contract import ALL_TELEMETRY_TOPICS, EVENTS_TOPIC
from domain.topics import ensure_topics, make_producer

console = Console(width=120)
GROUP = "dctwin-soak"
PARTITIONS = 4


@dataclass
class Figures:
    minutes: float = 0.0
    broker_restarts: int = 0
    broker_restarts_not_caught_up: int = 0
    serve_kills: int = 0
    bad_messages_acked: Counter[str] = field(default_factory=Counter)
    xid_events_acked: int = 0
    api_requests: int = 0
    api_status: Counter[str] = field(default_factory=Counter)  # "path status" -> count
    api_connection_errors: int = 0
    api_p99_ms: float = 0.0
    webhook_posts: int = 0
    # filled by the audit
    collector_samples_acked: int = 0
    samples_stored: int = 0
    duplicate_samples: int = 0
    xid_events_stored: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    outbox_rows: int = 0
    outbox_undelivered: int = 0
    webhook_keys_received: int = 0
    webhook_duplicate_deliveries: int = 0
    alerts_fired: int = 0
    topic_recreations_seen: int = 0  # partitions ingest found re-created (ingest_data_loss)
    records_reported_lost: int = 0


class Receiver:
    """A webhook receiver on loopback that answers 503 to every 4th first attempt."""

    def __init__(self) -> None:
        self.keys: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    first = key not in receiver.seen
                    receiver.seen.add(key)
                    refuse = first and len(receiver.seen) % 4 == 0
                    if not refuse:
                        receiver.keys[key] += 1
                self.send_response(503 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.seen: set[str] = set()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


def bad_messages() -> dict[str, bytes]:
    """One of each kind of malformed message a sender can produce (see docs/ingest.md)."""
    t = int(time.time() * 1000)
    ok = {
        "version": 1,
        "type": "telemetry",
        "batch_id": "x",
        "collector": "soak",
        "kind": "gpu",
        "site": "sv1",
        "rack": "rk101",
        "seq": 1,
        "interval_s": 1.0,
        "sent_time_ms": t,
        "samples": {"device_id": [], "metric": [], "value": [], "read_time_ms": []},
    }
    return {
        "garbage": os.urandom(256),
        "bad_json": b'{"version": 1, "samples": [',
        "wrong_version": orjson.dumps({**ok, "version": 99}),
        "empty_value": b"",
        "too_large": b"Z" * (17 << 20),
    }


class Soak:
    def __init__(self, workdir: Path, minutes: float, quick: bool) -> None:
        self.workdir = workdir
        self.minutes = minutes
        self.quick = quick
        self.figures = Figures(minutes=minutes)
        self.stop = threading.Event()
        self.broker_port = free_port()
        self.api_port = free_port()
        self.collector_metrics_port = free_port()
        self.broker: DevBroker | None = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.collector: subprocess.Popen[bytes] | None = None
        self.receiver = Receiver()
        self.latencies_ms: list[float] = []
        self.gpu_ids: list[str] = []
        self.lock = threading.Lock()  # held while a process is being restarted
        self.db = workdir / "soak.duckdb"

    # -- processes ---------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def start_broker(self) -> None:
        self.broker = DevBroker(port=self.broker_port, log_path=self.workdir / "broker.log").start()
        ensure_topics(self.bootstrap, PARTITIONS)

    def serve_env(self) -> dict[str, str]:
        receivers = self.workdir / "receivers.yaml"
        receivers.write_text(
            "receivers:\n  - name: soak\n    type: webhook\n"
            f"    url: {self.receiver.url}\n    retry_initial: 1s\n    retry_max: 5s\n"
        )
        return {
            **os.environ,
            "DCTWIN_KAFKA_BOOTSTRAP": self.bootstrap,
            "DCTWIN_CONSUMER_GROUP": GROUP,
            "DCTWIN_TOPIC_PARTITIONS": str(PARTITIONS),
            "DCTWIN_DB_PATH": str(self.db),
            "DCTWIN_APIKEY_DB": str(self.workdir / "apikeys.duckdb"),
            "DCTWIN_API_PORT": str(self.api_port),
            "DCTWIN_ALERT_RECEIVERS_FILE": str(receivers),
            "DCTWIN_ALERTS_TOPIC": "",
        }

    def start_serve(self) -> None:
        log = open(self.workdir / "serve.log", "ab")  # noqa: SIM115
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "serve"],
            env=self.serve_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api}/v1/pue", headers=self.auth, timeout=2).status_code < 500:
                    return
            if self.serve.poll() is not None:
                raise RuntimeError(f"serve exited with {self.serve.returncode}: see serve.log")
            time.sleep(0.5)
        raise RuntimeError("serve did not answer within 120 s")

    def start_collector(self) -> None:
        cfg = self.workdir / "collector.toml"
        cfg.write_text(
            'name = "soak-sim"\nsite = "sv1"\ninterval_s = 1.0\n\n'
            f'[kafka]\nbootstrap = "{self.bootstrap}"\ncompression = "zstd"\n\n'
            f'[spool]\ndir = "{self.workdir / "spool"}"\n\n'
            f"[metrics]\nport = {self.collector_metrics_port}\n\n"
            '[[sources]]\ntype = "simulated"\nseed = 7\n'
        )
        log = open(self.workdir / "collector.log", "ab")  # noqa: SIM115
        self.collector = subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "collect", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {DEMO_KEY}"}

    # -- chaos -------------------------------------------------------------------------------
    def ingest_lag(self) -> int | None:
        """Records on the broker not yet committed by ingest (None: broker not answering)."""
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        except KafkaError:
            return None
        try:
            committed = admin.list_group_offsets(GROUP)[GROUP]
            parts = [
                TopicPartition(t, p)
                for t in (*ALL_TELEMETRY_TOPICS, EVENTS_TOPIC)
                for p in range(PARTITIONS)
            ]
            ends = consumer.end_offsets(parts)
            return sum(
                max(0, end - (committed[tp].offset if tp in committed else 0))
                for tp, end in ends.items()
            )
        except KafkaError:
            return None
        finally:
            admin.close()
            consumer.close()

    def restart_broker(self, outage_s: float) -> None:
        deadline = time.monotonic() + 15
        lag = self.ingest_lag()
        while (lag is None or lag > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
            lag = self.ingest_lag()
        if lag != 0:
            self.figures.broker_restarts_not_caught_up += 1
        console.print(f"[yellow]chaos[/] broker SIGKILL (ingest lag {lag}), outage {outage_s}s")
        assert self.broker is not None and self.broker.proc is not None
        self.broker.proc.kill()
        self.broker.proc.wait()
        time.sleep(outage_s)
        self.start_broker()
        self.figures.broker_restarts += 1

    def kill_serve(self) -> None:
        console.print("[yellow]chaos[/] serve SIGKILL")
        assert self.serve is not None
        self.serve.kill()
        self.serve.wait()
        time.sleep(2)
        self.start_serve()
        self.figures.serve_kills += 1

    def producer_loop(self) -> None:
        """Bad messages and XID events, counted only when the broker acknowledged them."""
        kinds = itertools.cycle(list(bad_messages()))
        every_s = 5 if self.quick else 15
        while not self.stop.wait(every_s):
            with self.lock:
                try:
                    producer = make_producer(self.bootstrap, max_request_size=32 << 20)
                except KafkaError:
                    continue
                try:
                    kind = next(kinds)
                    producer.send("telemetry.gpu", bad_messages()[kind], key=b"rk101").get(10)
                    self.figures.bad_messages_acked[kind] += 1
                    if self.gpu_ids:
                        gpu = random.choice(self.gpu_ids)
                        rack = gpu.split("/")[3].encode()  # keyed by its rack, as collectors do
                        producer.send(EVENTS_TOPIC, self.xid_event(gpu), key=rack).get(10)
                        self.figures.xid_events_acked += 1
                except KafkaError as exc:
                    console.print(f"[dim]produce failed ({type(exc).__name__}); not counted[/]")
                finally:
                    producer.close(timeout=5)

    def xid_event(self, gpu: str) -> bytes:
        rack = gpu.split("/")[3]
        t = int(time.time() * 1000)
        return orjson.dumps(
            {
                "version": 1,
                "type": "events",
                "batch_id": f"soak-{uuid.uuid4().hex}",
                "collector": "soak",
                "site": "sv1",
                "rack": rack,
                "seq": 1,
                "sent_time_ms": t,
                "events": [
                    {
                        "device_id": gpu,
                        "kind": "xid",
                        "severity": "critical",
                        "read_time_ms": t,
                        "message": "XID 79: GPU has fallen off the bus (soak)",
                        "attrs": {"xid": 79},
                    }
                ],
            }
        )

    def api_loop(self) -> None:
        paths = ["/v1/pue", "/v1/devices", "/healthz", "/v1/alerts", "/v1/heat-balance"]
        with httpx.Client(headers=self.auth, timeout=10) as client:
            for path in itertools.cycle(paths):
                if self.stop.wait(0.05):
                    return
                t0 = time.perf_counter()
                try:
                    status = client.get(self.api + path).status_code
                except httpx.HTTPError:
                    self.figures.api_connection_errors += 1
                    continue
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                self.figures.api_requests += 1
                self.figures.api_status[f"{path} {status}"] += 1

    def find_gpus(self) -> None:
        deadline = time.monotonic() + 120
        while not self.gpu_ids and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                body = httpx.get(
                    f"{self.api}/v1/devices", params={"device_class": "gpu"}, headers=self.auth
                ).json()
                items = body.get("items", body) if isinstance(body, dict) else body
                self.gpu_ids = [d["device_id"] for d in items if "/gpu" in d.get("device_id", "")][
                    :64
                ]
            time.sleep(1)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> bool:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in (self.db, Path(f"{self.db}.wal")):
            stale.unlink(missing_ok=True)
        KeyStore(self.workdir / "apikeys.duckdb").ensure("soak", Role.operator, DEMO_KEY)
        end = time.monotonic() + self.minutes * 60
        broker_every_s, serve_every_s, outage_s = (60, 45, 5) if self.quick else (300, 240, 20)
        threads: list[threading.Thread] = []
        try:
            self.start_broker()
            self.start_serve()
            self.start_collector()
            self.find_gpus()
            console.print(
                f"soak: {len(self.gpu_ids)} GPUs for XID events, until +{self.minutes} min"
            )
            threads = [
                threading.Thread(target=self.producer_loop, daemon=True),
                threading.Thread(target=self.api_loop, daemon=True),
            ]
            for t in threads:
                t.start()
            next_broker = time.monotonic() + broker_every_s / 2
            next_serve = time.monotonic() + serve_every_s
            while time.monotonic() < end:
                time.sleep(1)
                if time.monotonic() >= next_broker and time.monotonic() < end - 60:
                    with self.lock:
                        self.restart_broker(outage_s)
                    next_broker = time.monotonic() + broker_every_s
                if time.monotonic() >= next_serve and time.monotonic() < end - 60:
                    with self.lock:
                        self.kill_serve()
                    next_serve = time.monotonic() + serve_every_s
            self.stop.set()
            for t in threads:
                t.join(30)
            return self.finish()
        finally:
            self.stop.set()
            for proc in (self.collector, self.serve):
                if proc is not None:
                    stop_process(proc)
            if self.broker is not None:
                self.broker.stop()

    def finish(self) -> bool:
        """Stop the collector with an empty spool, let ingest and the outbox drain, audit."""
        console.print("soak: draining")
        metrics = f"http://127.0.0.1:{self.collector_metrics_port}/metrics"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                body = httpx.get(metrics, timeout=5).text
                spool = re.search(r"^dctwin_collector_spool_batches\S* (\S+)$", body, re.M)
                if spool and float(spool.group(1)) == 0:
                    break
            time.sleep(1)
        assert self.collector is not None
        stop_process(self.collector, timeout_s=60)
        log = (self.workdir / "collector.log").read_text(errors="replace")
        stopped = re.findall(r"stopped: .*samples_acked=(\d+) .*spool holds (\d+) batches", log)
        if not stopped:
            raise RuntimeError("collector did not log its final figures: see collector.log")
        acked, spool_left = (int(x) for x in stopped[-1])
        self.figures.collector_samples_acked = acked
        deadline = time.monotonic() + 120
        while self.ingest_lag() != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(15)  # the outbox delivers the last notifications (retries 1-5 s)
        assert self.serve is not None
        stop_process(self.serve, timeout_s=60)
        self.audit()
        return self.report(spool_left)

    def audit(self) -> None:
        f = self.figures
        con = duckdb.connect(str(self.db), read_only=True)
        try:

            def one(sql: str) -> int:
                row = con.execute(sql).fetchone()
                return int(row[0]) if row and row[0] is not None else 0

            f.samples_stored = one("SELECT count(*) FROM samples")
            f.duplicate_samples = f.samples_stored - one(
                "SELECT count(*) FROM (SELECT DISTINCT device_id, metric, read_time FROM samples)"
            )
            f.xid_events_stored = one("SELECT count(*) FROM events WHERE batch_id LIKE 'soak-%'")
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            }
            if "dead_letters" in tables:
                f.dead_letters = dict(
                    con.execute(
                        "SELECT reason, count(*) FROM dead_letters GROUP BY reason"
                    ).fetchall()
                )
            if "ingest_data_loss" in tables:
                # a re-created topic is expected here (every broker restart); lost records not
                f.topic_recreations_seen = one(
                    "SELECT count(*) FROM ingest_data_loss WHERE reason = 'topic_recreated'"
                )
                f.records_reported_lost = one("SELECT sum(lost_records) FROM ingest_data_loss")
            f.outbox_rows = one("SELECT count(*) FROM alert_outbox WHERE receiver = 'soak'")
            f.outbox_undelivered = one(
                "SELECT count(*) FROM alert_outbox "
                "WHERE receiver = 'soak' AND status <> 'delivered'"
            )
            keys = {
                r[0]
                for r in con.execute(
                    "SELECT idempotency_key FROM alert_outbox WHERE receiver = 'soak'"
                ).fetchall()
            }
            f.alerts_fired = one("SELECT count(*) FROM alerts")
        finally:
            con.close()
        with self.receiver.lock:
            received = dict(self.receiver.keys)
        f.webhook_keys_received = len(set(received) & keys)
        f.webhook_posts = sum(received.values())
        f.webhook_duplicate_deliveries = sum(n - 1 for n in received.values())
        lat = sorted(self.latencies_ms)
        f.api_p99_ms = round(lat[int(0.99 * (len(lat) - 1))], 1) if lat else 0.0

    def report(self, spool_left: int) -> bool:
        f = self.figures
        bad_total = sum(f.bad_messages_acked.values())
        checks = {
            "samples stored = samples acknowledged": f.samples_stored == f.collector_samples_acked,
            "no duplicate samples": f.duplicate_samples == 0,
            "collector spool empty at stop": spool_left == 0,
            "every XID event stored once": f.xid_events_stored == f.xid_events_acked,
            "every bad message dead-lettered": sum(f.dead_letters.values()) == bad_total,
            "every notification delivered": f.outbox_undelivered == 0 and f.outbox_rows > 0,
            "every notification received": f.webhook_keys_received == f.outbox_rows,
            "no notification received twice": f.webhook_duplicate_deliveries == 0,
            # /healthz may answer 503 while a component is down: that is its job
            "no 5xx from the API": not any(
                int(k.rsplit(" ", 1)[1]) >= 500 and not k.startswith("/healthz")
                for k in f.api_status
            ),
            "every broker restart seen as topic re-creation": f.broker_restarts == 0
            or f.topic_recreations_seen >= f.broker_restarts,
            "no record reported lost": f.records_reported_lost == 0,
        }
        table = Table(title=f"soak, {f.minutes:g} min")
        table.add_column("check")
        table.add_column("ok")
        for name, ok in checks.items():
            table.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
        console.print(table)
        # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting them
        out: dict[str, object] = {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(f).items()
        }
        out["checks"] = checks
        console.print_json(json.dumps(out, default=str))
        (self.workdir / "soak.json").write_text(json.dumps(out, indent=2, default=str))
        return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=Path("var/soak"))
    parser.add_argument("--quick", action="store_true", help="chaos every minute, not every 5")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return 0 if Soak(args.workdir, args.minutes, args.quick).run() else 1


if __name__ == "__main__":
    sys.exit(main())
