"""`dctwin demo`: the whole platform on localhost with a simulated site.

In order (issue 26, README "Demo"): a broker; `dctwin serve`'s services with a local
on-call receiver as the alert engine's webhook; the last `history_hours` of the example
site simulated in batch and produced to Kafka like any collector's batches, so ingest
stores them through its normal path before the dashboard opens; then the simulated
collector live in real time, playing the scenario (faults at offsets from its start)
unless the site is quiet; the API. Ctrl-C, SIGINT or SIGTERM to this process stops every
part (collector, API, services, receiver, broker), children included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from api.keys import DEMO_KEY, KeyStore, Role
from collectors.sources.modbus.writer import writer_toml
from collectors.sources.simulated.bms import bms_writer_config
from dctwin.broker import DevBroker, free_port, stop_process
from dctwin.memory import fix_mmap_threshold
from dctwin.oncall import OnCallReceiver, PageLog, new_secret, receivers_file
from dctwin.scenario import DEFAULT_SCENARIO, check_against_site, find_scenario
from dctwin.server import Server
from dctwin.settings import Settings
from domain.contract import ALL_TELEMETRY_TOPICS, EVENTS_TOPIC
from domain.site import load_site
from domain.topics import ensure_topics
from simulator.batch import ReadSchedule

console = Console()
SEED = 7
# history every 5 min (the dashboard's PUE bucket): 6 h of the example site is 2.1 M
# samples, stored in 17 s on a loaded 2-core machine; every 60 s (10.4 M) took 288 s
HISTORY_STEP_S = 300.0
# and the last 2 min of every 30 every 10 s (the anomaly scorer's interval): live
# transients (a job starting: 120 -> 700 W in a second, the loop following over minutes)
# settle within a 5-min step, and models fitted only on settled reads alarm on every live
# one (simulator.batch.ReadSchedule; docs/anomaly.md)
HISTORY_FINE_BURST_S = 120.0
HISTORY_FINE_EVERY_S = 1800.0
HISTORY_FINE_STEP_S = 10.0
INGEST_WAIT_S = 600.0
STOP_BUDGET_S = 8.0  # issue 26: everything stops within 10 s of Ctrl-C/SIGTERM


@dataclass(frozen=True)
class DemoOptions:
    interval_s: float = 1.0
    history_hours: float = 6.0
    history_step_s: float = HISTORY_STEP_S
    history_fine_burst_s: float = HISTORY_FINE_BURST_S

    def history_schedule(self) -> ReadSchedule:
        return ReadSchedule(
            self.history_step_s,
            self.history_fine_burst_s,
            HISTORY_FINE_EVERY_S,
            HISTORY_FINE_STEP_S,
        )

    scenario: str | None = DEFAULT_SCENARIO  # None: a quiet site, no faults
    oncall: bool = True


DEMO_ANOMALY_FIT_MAX_SAMPLES = 3_000_000
DEMO_OPTIMIZER_INTERVAL_S = 120.0  # issue 19/26 (opt-default); DCTWIN_OPTIMIZER_INTERVAL_S wins
DEMO_OPTIMIZER_SETTLE_S = 120.0  # after the ramps end, before the outcome is metered
DEMO_OPTIMIZER_OUTCOME_WINDOW_S = 240.0


def collector_config(
    path: Path,
    site_file: Path,
    bootstrap: str,
    interval_s: float,
    faults: str | None = None,
    control_topic: str | None = None,
    catch_up_from_s: float | None = None,
    catch_up: ReadSchedule | None = None,  # the history's reads (default: every 300 s)
    bms_port: int | None = None,  # issue 19 (opt-live): the simulated BMS
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        f'name = "demo-sim"\nsite = "sv1"\ninterval_s = {interval_s}\n\n'
        f'[kafka]\nbootstrap = "{bootstrap}"\ncompression = "zstd"\n\n'
        f'[[sources]]\ntype = "simulated"\nsite_file = "{site_file}"\nseed = {SEED}\n'
        + (f"bms_port = {bms_port}\n" if bms_port is not None else "")
    )
    if faults:  # JSON strings are TOML basic strings for this text (ASCII, escaped newlines)
        text += f"faults = {json.dumps(faults)}\n"
    if control_topic:
        text += f'control_topic = "{control_topic}"\ncontrol_bootstrap = "{bootstrap}"\n'
    if catch_up_from_s is not None:  # continue the history's simulation, no seam
        sched = catch_up or ReadSchedule(HISTORY_STEP_S)
        text += (
            f"catch_up_from_s = {catch_up_from_s!r}\ncatch_up_step_s = {sched.step_s!r}\n"
            f"catch_up_fine_burst_s = {sched.fine_burst_s!r}\n"
            f"catch_up_fine_every_s = {sched.fine_every_s!r}\n"
            f"catch_up_fine_step_s = {sched.fine_step_s!r}\n"
        )
    # the demo's spool beside its other files: two demos (other workdirs) never share one
    text += f'\n[spool]\ndir = "{path.parent / "spool"}"\n'
    path.write_text(text)
    return path


def simulated_bms_writer(settings: Settings, workdir: Path) -> int:
    """Issue 19 (opt-live): the simulated site's BMS port, and the optimizer's write path
    to it; the demo closes the loop (not advisory) unless the setting says otherwise."""
    port = free_port()
    writer = workdir / "setpoint-writer.toml"
    site = load_site(settings.site_file)
    writer.write_text(writer_toml(bms_writer_config(site, "127.0.0.1", port)))
    settings.optimizer_writer_file = writer
    if "optimizer_advisory_only" not in settings.model_fields_set:
        settings.optimizer_advisory_only = False
    # issue 19/26 (opt-default): a proposal within the demo's first minutes (serve: 900 s)
    if "optimizer_interval_s" not in settings.model_fields_set:
        settings.optimizer_interval_s = DEMO_OPTIMIZER_INTERVAL_S
    # and an accepted change's realised saving within minutes (serve: 300 s + 600 s)
    if "optimizer_settle_s" not in settings.model_fields_set:
        settings.optimizer_settle_s = DEMO_OPTIMIZER_SETTLE_S
    if "optimizer_outcome_window_s" not in settings.model_fields_set:
        settings.optimizer_outcome_window_s = DEMO_OPTIMIZER_OUTCOME_WINDOW_S
    return port


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM as Ctrl-C: the `finally` below stops every child. uvicorn restores this
    # handler after its own shutdown and re-raises the signal, which lands here too.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def start_history(
    settings: Settings, hours: float, schedule: ReadSchedule, start_s: float, log_path: Path
) -> subprocess.Popen[bytes]:
    """`dctwin simulate` of the last `hours` into Kafka, as the collector batches a site's
    collectors would send (experiments/simulate.py's KafkaSink): its own process, so
    simulation and ingest use two cores. Its JSON summary (samples) ends up in log_path."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "dctwin.cli.main", "simulate",
            "--site", str(settings.site_file.resolve()), "--hours", f"{hours:g}",
            "--step-s", f"{schedule.step_s:g}",
            "--start", datetime.fromtimestamp(start_s, UTC).isoformat(),
            "--seed", str(SEED), "--kafka", settings.kafka_bootstrap, "--quiet",
            "--fine-burst-s", f"{schedule.fine_burst_s:g}",
            "--fine-every-s", f"{schedule.fine_every_s:g}",
            "--fine-step-s", f"{schedule.fine_step_s:g}",
        ],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # stopped by us, in order
    )  # fmt: skip


def _accounted(server: Server) -> int:
    """Samples ingest has dealt with: stored, recognised as duplicates or rejected."""
    st = server.ingestor.stats if server.ingestor else None
    if st is None:
        return 0
    return st.samples_stored + st.duplicate_samples + sum(st.samples_rejected.values())


def _end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [
            TopicPartition(t, p)
            for t in (*ALL_TELEMETRY_TOPICS, EVENTS_TOPIC)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        return {(tp.topic, tp.partition): int(o) for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def _behind(server: Server, ends: dict[tuple[str, int], int]) -> int:
    """Records below `ends` that ingest has not stored yet."""
    lag = server.ingestor.stats.lag if server.ingestor else {}
    out = 0
    for key, end in ends.items():
        p = lag.get(key)
        stored_to = p.next_offset if p is not None and p.next_offset is not None else 0
        out += max(0, end - stored_to)
    return out


def history_first(
    server: Server, hours: float, schedule: ReadSchedule, start_s: float, workdir: Path
) -> tuple[int, int, float]:
    """Simulate the past into Kafka and wait until ingest has stored all of it, with a
    progress bar; (samples, reads, seconds)."""
    t0 = time.monotonic()
    log_path = workdir / "history.log"
    proc = start_history(server.settings, hours, schedule, start_s, log_path)
    reads = len(schedule.steps(hours))  # samples known at the end
    try:
        with Progress(
            TextColumn("[bold]history[/] {task.description}"), BarColumn(),
            TextColumn("{task.completed:,.0f} samples stored"), TimeElapsedColumn(),
            console=console, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task(f"{hours:g} h, {reads} reads", total=None)
            while proc.poll() is None:
                bar.update(task, completed=_accounted(server))
                time.sleep(0.25)
            if proc.returncode != 0:
                raise RuntimeError(f"history simulation failed: {log_path.read_text()[-2000:]}")
            out = log_path.read_text()
            samples = int(json.loads(out[out.index("{") :])["samples"])
            # every history record lies below these offsets; live ones arrive beside them
            ends = _end_offsets(server.settings.kafka_bootstrap)
            deadline = time.monotonic() + INGEST_WAIT_S
            while (behind := _behind(server, ends)) > 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest still {behind:,} records behind the history")
                bar.update(task, completed=_accounted(server))
                time.sleep(0.25)
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout_s=5)
    return samples, reads, time.monotonic() - t0


def _wait_live(
    server: Server,
    collector: subprocess.Popen[bytes],
    before: int,
    samples: int,
    timeout_s: float = 90.0,
) -> None:
    """Until `samples` live samples are stored: two whole reads of the site, so every
    device has a reading newer than the history's end before the alert rules look (else
    the seam reads as telemetry lost), and the collector's control reader is positioned
    (a scenario sent next reaches it)."""
    deadline = time.monotonic() + timeout_s
    while _accounted(server) < before + max(samples, 1):
        if collector.poll() is not None:
            raise RuntimeError(f"the simulated collector exited with code {collector.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no live telemetry within {timeout_s:.0f} s (collector.log)")
        time.sleep(0.2)


def _stop_all(
    collector: subprocess.Popen[bytes] | None,
    receiver: OnCallReceiver | None,
    server: Server | None,
    broker: DevBroker | None,
) -> bool:
    """Everything down within STOP_BUDGET_S: the collector is told first (it flushes while
    the services stop), the broker last (ingest commits its offsets to it). A service
    still in a long round (a DuckDB query) past its share is left to die with the
    process: the demo's database is thrown away at the next start anyway."""
    deadline = time.monotonic() + STOP_BUDGET_S
    clean = True
    if collector is not None and collector.poll() is None:
        collector.send_signal(signal.SIGTERM)
    if receiver is not None:
        receiver.stop()
    if server is not None:
        stopper = threading.Thread(target=server.stop, name="stop-services", daemon=True)
        stopper.start()
        stopper.join(max(0.5, deadline - time.monotonic() - 2.0))
        if stopper.is_alive():
            console.print("[yellow]services still finishing a round: not waiting for them[/]")
            clean = False
    if collector is not None:
        stop_process(collector, timeout_s=max(0.5, deadline - time.monotonic() - 1.0))
    if broker is not None:
        broker.stop(timeout_s=max(0.5, deadline - time.monotonic()))
    return clean


def _wait_fresh(server: Server, after_s: float, timeout_s: float = 30.0) -> None:
    """Until no device's latest reading is older than `after_s` (the history's end): the
    alert rules then see a live site, not the seam (a PDU whose partition ingest has not
    reached yet would read as telemetry lost). A device that stays silent (one the
    history had and the live site lost) only costs the timeout."""
    after = datetime.fromtimestamp(after_s, UTC).replace(tzinfo=None)
    deadline = time.monotonic() + timeout_s
    cur = server.store.cursor()
    while time.monotonic() < deadline:
        row = cur.execute("SELECT count(*) FROM latest WHERE read_time < ?", [after]).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.5)


def run_demo(settings: Settings, workdir: Path, options: DemoOptions | None = None) -> None:
    opts = options or DemoOptions()
    workdir.mkdir(parents=True, exist_ok=True)
    previous: dict[signal.Signals, Any] = {
        signal.SIGINT: signal.getsignal(signal.SIGINT),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt),
    }
    broker: DevBroker | None = None
    collector: subprocess.Popen[bytes] | None = None
    server: Server | None = None
    receiver: OnCallReceiver | None = None
    try:
        # the scenario is checked before anything starts: a bad file names its line
        if opts.scenario:
            check_against_site(find_scenario(opts.scenario), load_site(settings.site_file))
        if "kafka_bootstrap" not in settings.model_fields_set:  # no cluster configured
            broker = DevBroker(port=free_port(), log_path=workdir / "broker.log").start()
            settings.kafka_bootstrap = broker.bootstrap
            console.print(f"[green]broker[/] tansu on {broker.bootstrap}")
        ensure_topics(settings.kafka_bootstrap, settings.topic_partitions)
        db = workdir / "demo.duckdb"
        for stale in (db, Path(f"{db}.wal")):
            stale.unlink(missing_ok=True)  # a demo starts from an empty twin
        settings.db_path = db
        settings.apikey_db = workdir / "apikeys.duckdb"
        settings.simulated_site = True
        KeyStore(settings.apikey_db).ensure("demo (embedded key)", Role.operator, DEMO_KEY)
        pages: PageLog | None = None
        if opts.oncall:
            pages = PageLog(new_secret())
            receiver = OnCallReceiver(pages).start()
            settings.alert_receivers_file = receivers_file(
                workdir / "receivers.yaml", receiver.url, pages.secret
            )
            console.print(f"[green]on-call receiver[/] {receiver.url} (signed webhooks)")
        # the optimizer's write path before the Server reads the settings (its optimizer
        # takes interval, writer and advisory mode at construction)
        bms_port = simulated_bms_writer(settings, workdir)
        if "anomaly_fit_max_samples" not in settings.model_fields_set:
            # the whole history in the first fit: its 10-s bursts are spread over the hours,
            # and the cap's evenly spaced blocks would keep about half of them (2.2 M samples
            # of the fit's metrics for 6 h; the cap is for stores of days, docs/anomaly.md)
            settings.anomaly_fit_max_samples = DEMO_ANOMALY_FIT_MAX_SAMPLES
        fix_mmap_threshold(settings.malloc_mmap_threshold_bytes)
        server = Server(settings)
        server.oncall = pages
        # importing polars (by Server) replaces the SIGINT handler with its own, which
        # turns Ctrl-C into KeyboardInterrupt in whatever thread runs a query: ours again
        # so that the main thread gets it and stops everything
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise_interrupt)
        # ingest first; the jobs (twin, models, alerts) once the history is stored and live
        # readings arrive, so that alert rules never judge the seam (nothing newer than
        # the history's end would read as telemetry lost)
        server.start_ingest(jobs=False)
        per_read = 0
        history_from_s = None
        schedule = opts.history_schedule()  # the history's reads, replayed by the collector
        if opts.history_hours > 0:
            console.print(f"simulating the last {opts.history_hours:g} h of the site …")
            history_from_s = time.time() - opts.history_hours * 3600.0
            samples, history_reads, took_s = history_first(
                server, opts.history_hours, schedule, history_from_s, workdir
            )
            fine = (
                f", the last {schedule.fine_burst_s:g} s of every {schedule.fine_every_s:g} s "
                f"every {schedule.fine_step_s:g} s"
                if schedule.fine_burst_s > 0
                else ""
            )
            console.print(
                f"[green]history[/] {samples:,} samples ({opts.history_hours:g} h every "
                f"{opts.history_step_s:g} s{fine}) simulated and stored in {took_s:.1f} s"
            )
            per_read = samples // history_reads
        # then live: the collector after the history (history arriving beside live data
        # is late data to ingest, which recomputes rollups for it: several times slower);
        # its simulation continues the history's (same seed, same steps), so the site is
        # the same site across the seam; the charts show a gap of the history's duration
        cfg = collector_config(
            workdir / "collector.toml",
            settings.site_file.resolve(),
            settings.kafka_bootstrap,
            opts.interval_s,
            control_topic=settings.sim_control_topic,
            catch_up_from_s=history_from_s,
            catch_up=schedule,
            bms_port=bms_port,
        )
        log = open(workdir / "collector.log", "ab")  # noqa: SIM115
        collector = subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "collect", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches it through us, in order
        )
        console.print(
            f"[green]collector[/] simulated site live, pid {collector.pid}, "
            f"log {workdir / 'collector.log'}"
        )
        # two whole reads of the site (samples per read: from the history's), then every
        # reading the twin holds newer than the history
        _wait_live(server, collector, _accounted(server), 2 * per_read)
        if history_from_s is not None:
            _wait_fresh(server, history_from_s + opts.history_hours * 3600.0)
        else:
            time.sleep(3 * opts.interval_s)  # no history: no seam, a few reads suffice
        server.start_jobs()
        if opts.scenario and server.scenarios is not None:
            # through the control topic, as `dctwin scenario run` does: onsets from now
            server.scenarios.run(opts.scenario)
            console.print(f"[yellow]scenario[/] {opts.scenario}: its faults play from now on")
        url = f"http://{settings.api_host}:{settings.api_port}"
        console.print(
            f"[bold green]dctwin is up:[/] {url}  (PUE: {url}/v1/pue, "
            f"API docs: {url}/docs). Ctrl-C stops everything."
        )
        console.print(f"[green]demo API key[/] (operator, demo only): {DEMO_KEY}", soft_wrap=True)
        console.print(f"  dashboard: {url}/?key={DEMO_KEY}", soft_wrap=True)
        console.print(f"  curl -H 'Authorization: Bearer {DEMO_KEY}' {url}/v1/pue", soft_wrap=True)
        api = server.uvicorn_server()
        # open dashboards keep /v1/stream connections: close them, do not wait for them
        api.config.timeout_graceful_shutdown = 2
        api.run()
    finally:
        console.print("stopping…")
        clean = _stop_all(collector, receiver, server, broker)
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)
        console.print("stopped.")
        if not clean:
            # a service thread is still inside DuckDB: the interpreter's exit would abort
            # under it; every child is stopped and the demo's database is thrown away
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
