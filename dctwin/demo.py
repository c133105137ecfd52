"""`dctwin demo`: the whole platform on localhost with a simulated site."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from api.keys import DEMO_KEY, KeyStore, Role
from collectors.sources.modbus.writer import writer_toml
from collectors.sources.simulated.bms import bms_writer_config
from dctwin.broker import DevBroker, free_port, stop_process
from dctwin.server import Server
from dctwin.settings import Settings
from domain.site import load_site
from domain.topics import ensure_topics

console = Console()
DEMO_OPTIMIZER_INTERVAL_S = 120.0  # issue 19/26 (opt-default); DCTWIN_OPTIMIZER_INTERVAL_S wins


def collector_config(
    path: Path, site_file: Path, bootstrap: str, interval_s: float, bms_port: int | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'name = "demo-sim"\nsite = "sv1"\ninterval_s = {interval_s}\n\n'
        f'[kafka]\nbootstrap = "{bootstrap}"\ncompression = "zstd"\n\n'
        f'[[sources]]\ntype = "simulated"\nsite_file = "{site_file}"\nseed = 7\n'
        + (f"bms_port = {bms_port}\n" if bms_port is not None else "")
    )
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
    return port


def run_demo(settings: Settings, workdir: Path, interval_s: float = 1.0) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    broker: DevBroker | None = None
    if "kafka_bootstrap" not in settings.model_fields_set:  # no cluster configured: own broker
        broker = DevBroker(port=free_port(), log_path=workdir / "broker.log").start()
        settings.kafka_bootstrap = broker.bootstrap
        console.print(f"[green]broker[/] tansu on {broker.bootstrap}")
    collector: subprocess.Popen[bytes] | None = None
    server: Server | None = None
    try:
        ensure_topics(settings.kafka_bootstrap, settings.topic_partitions)
        db = workdir / "demo.duckdb"
        for stale in (db, Path(f"{db}.wal")):
            stale.unlink(missing_ok=True)  # a demo starts from an empty twin
        settings.db_path = db
        settings.apikey_db = workdir / "apikeys.duckdb"
        KeyStore(settings.apikey_db).ensure("demo (embedded key)", Role.operator, DEMO_KEY)
        cfg = collector_config(
            workdir / "collector.toml",
            settings.site_file.resolve(),
            settings.kafka_bootstrap,
            interval_s,
            simulated_bms_writer(settings, workdir),
        )
        log = open(workdir / "collector.log", "ab")  # noqa: SIM115
        collector = subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "collect", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        console.print(
            f"[green]collector[/] simulated site, pid {collector.pid}, "
            f"log {workdir / 'collector.log'}"
        )
        server = Server(settings)
        server.start_ingest()
        url = f"http://{settings.api_host}:{settings.api_port}"
        console.print(
            f"[bold green]dctwin is up:[/] {url}  (PUE: {url}/v1/pue, "
            f"API docs: {url}/docs). Ctrl-C stops everything."
        )
        console.print(f"[green]demo API key[/] (operator, demo only): {DEMO_KEY}", soft_wrap=True)
        console.print(f"  dashboard: {url}/?key={DEMO_KEY}", soft_wrap=True)
        console.print(f"  curl -H 'Authorization: Bearer {DEMO_KEY}' {url}/v1/pue", soft_wrap=True)
        server.uvicorn_server().run()
    finally:
        console.print("stopping…")
        if collector is not None:
            stop_process(collector)
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        console.print("stopped.")
