"""`dctwin` command line: one thin entry point wiring collectors, ingest, twin and API."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

import typer

from dctwin.cli.anomaly import anomaly_app
from dctwin.cli.apikey import apikey_app
from dctwin.cli.capacity import capacity_app  # issue 27
from dctwin.cli.failure import failure_app
from dctwin.cli.optimize import optimize_app
from dctwin.cli.scenario import scenario_app
from dctwin.cli.whatif import whatif_app  # issue 27

app = typer.Typer(
    help="dctwin: telemetry ingestion and digital-twin monitoring for AI data centers.",
    no_args_is_help=True,
    add_completion=False,
)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _settings(**overrides):
    from dctwin.settings import Settings

    s = Settings()
    for k, v in overrides.items():
        if v is not None:
            setattr(s, k, v)
    return s


@app.command()
def demo(
    port: int = typer.Option(None, help="API port (default DCTWIN_API_PORT or 8000)"),
    workdir: Path = typer.Option(Path("var/demo"), help="where the demo keeps its files"),
    interval_s: float = typer.Option(1.0, help="collection interval, seconds"),
    history_hours: float = typer.Option(
        6.0, "--history-hours", min=0, help="simulated past stored before going live (0: none)"
    ),
    history_step_s: float = typer.Option(
        300.0, "--history-step-s", min=1, help="seconds between history reads"
    ),
    history_fine_burst_s: float = typer.Option(
        120.0,  # dctwin.demo.HISTORY_FINE_BURST_S
        "--history-fine-burst-s",
        min=0,
        help="the history's last this many seconds of every 30 min read every 10 s, the "
        "anomaly scorer's interval, too (its models learn live transients; 0: none)",
    ),
    scenario: str = typer.Option(
        "default", "--scenario", help="scenario played live (dctwin scenario list)"
    ),
    quiet_site: bool = typer.Option(False, "--quiet-site", help="no scenario: a healthy site"),
    oncall: bool = typer.Option(True, help="run the local on-call webhook receiver"),
) -> None:
    """Run broker, simulated collectors, ingest, twin and API on localhost."""
    from api.scenarios import ScenarioError, UnknownScenarioError
    from dctwin.demo import DemoOptions, run_demo

    _logging(False)
    # kafka-python warns of every slow selector round under the history's load: noise here
    logging.getLogger("kafka").setLevel(logging.ERROR)
    opts = DemoOptions(
        interval_s=interval_s,
        history_hours=history_hours,
        history_step_s=history_step_s,
        history_fine_burst_s=history_fine_burst_s,
        scenario=None if quiet_site else scenario,
        oncall=oncall,
    )
    # uvicorn re-raises Ctrl-C after its clean shutdown; that is a normal exit
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_demo(_settings(api_port=port), workdir, opts)
    except (ScenarioError, UnknownScenarioError) as exc:
        typer.echo(f"error: --scenario: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    bootstrap: str = typer.Option(
        None, help="Kafka bootstrap (default KAFKA_BOOTSTRAP or DCTWIN_KAFKA_BOOTSTRAP)"
    ),
    db: Path = typer.Option(None, help="DuckDB file (default DCTWIN_DB_PATH)"),
    site: Path = typer.Option(None, help="site TOML (default DCTWIN_SITE_FILE)"),
    host: str = typer.Option(None, help="API bind address"),
    port: int = typer.Option(None, help="API port"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run ingest + twin + API against a broker."""
    from dctwin.memory import fix_mmap_threshold
    from dctwin.server import Server

    _logging(verbose)
    settings = _settings(
        kafka_bootstrap=bootstrap, db_path=db, site_file=site, api_host=host, api_port=port
    )
    fix_mmap_threshold(settings.malloc_mmap_threshold_bytes)
    try:
        server = Server(settings)
    except ValueError as exc:  # site, alert rules or receivers file: names file and line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C after clean shutdown
        server.run_forever()


@app.command()
def collect(
    config: Path = typer.Option(..., "--config", "-c", help="collector TOML file"),
    intervals: int = typer.Option(None, help="stop after this many intervals"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a collector daemon: read sources every interval and produce to Kafka."""
    from collectors.daemon import CollectorDaemon
    from collectors.daemon_config import CollectorConfigError, load_collector_config
    from collectors.spool import SpoolError

    _logging(verbose)
    # an outage makes kafka-python log every reconnect; the daemon logs one line per outage
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    try:
        cfg = load_collector_config(config)
        daemon = CollectorDaemon(cfg)
    except (CollectorConfigError, ValueError, SpoolError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _stop_on_signals(daemon.stop_event)
    try:
        daemon.run(max_intervals=intervals)
    finally:
        daemon.close()  # flushes queued batches to Kafka or the spool (SIGTERM included)


@app.command()
def broker(
    port: int = typer.Option(9092, help="listen port on 127.0.0.1"),
) -> None:
    """Start a development Kafka-protocol broker (tansu) on loopback until Ctrl-C."""
    from dctwin.broker import DevBroker
    from dctwin.settings import Settings
    from domain.topics import ensure_topics

    _logging(False)
    stop = threading.Event()
    _stop_on_signals(stop)
    with DevBroker(port=port) as b:
        ensure_topics(b.bootstrap, Settings().topic_partitions)
        typer.echo(f"broker ready: KAFKA_BOOTSTRAP={b.bootstrap}")
        while not stop.wait(0.5):
            if b.proc is not None and b.proc.poll() is not None:
                typer.echo(f"broker exited with code {b.proc.returncode}", err=True)
                raise typer.Exit(1)
    typer.echo("broker stopped")


@app.command(
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def ingest(ctx: typer.Context) -> None:
    """Run a standalone ingest worker (one DuckDB file, or shards for scale-out).

    Options are the worker's: `dctwin ingest --help`; see docs/ingest.md.
    """
    from dctwin.settings import Settings
    from ingest.worker import main as worker_main

    sys.exit(worker_main(ctx.args, default_bootstrap=Settings().kafka_bootstrap))


@app.command()
def bench(
    quick: bool = typer.Option(False, help="smaller sizes, for a smoke run"),
) -> None:
    """Run the benchmarks in bench/ and print a table against targets."""
    from bench.run import main as bench_main

    sys.exit(bench_main(quick=quick))


@app.command()
def simulate(
    site: Path = typer.Option(None, "--site", help="site TOML (default: the example site)"),
    gpus: int = typer.Option(
        None,
        "--gpus",
        help="instead of --site: a synthetic site with this many GPUs (simulator.sitegen)",
    ),
    hours: float = typer.Option(1.0, "--hours", help="simulated hours"),
    step_s: float = typer.Option(10.0, "--step-s", help="seconds between reads"),
    fine_burst_s: float = typer.Option(
        0.0,
        "--fine-burst-s",
        min=0,
        help="also read the last this many seconds of every --fine-every-s every --fine-step-s",
    ),
    fine_every_s: float = typer.Option(1800.0, "--fine-every-s", min=1, help="burst period"),
    fine_step_s: float = typer.Option(
        10.0, "--fine-step-s", min=0.001, help="seconds between reads within a burst"
    ),
    faults: str = typer.Option(
        None,
        "--faults",
        help="fault spec or a file holding one "
        "(docs/simulator.md); 'random' for a "
        "seeded random catalog",
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", help="directory for Parquet, or FILE.duckdb"),
    fmt: str = typer.Option("auto", "--format", help="auto, parquet, duckdb or both"),
    kafka: str = typer.Option(
        None, "--kafka", help="also produce the batches to this Kafka bootstrap"
    ),
    start: str = typer.Option(
        "2025-01-15T00:00:00Z", "--start", help="simulated start: ISO time (UTC), 'now' or 'now-6h'"
    ),
    climate: str = typer.Option(
        "temperate", "--climate", help="temperate, hot-humid, hot-dry or cold"
    ),
    write_site: Path = typer.Option(
        None, "--write-site", help="with --gpus: also save the generated site TOML here"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Generate simulated history (samples, events, fault labels) as fast as possible."""
    import json as _json
    from dataclasses import asdict
    from datetime import datetime

    from kafka.errors import KafkaError

    from domain.site import EXAMPLE_SITE, SiteFileError, load_site
    from experiments.simulate import run_simulation
    from simulator.batch import ReadSchedule
    from simulator.faults import FaultSpecError
    from simulator.model import SiteSimulator
    from simulator.sitegen import site_toml, synthetic_site
    from simulator.weather import CLIMATES

    def fail(msg: str) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)

    if site is not None and gpus is not None:
        fail("--site and --gpus: give one of them")
    if climate not in CLIMATES:
        fail(f"--climate: {climate!r} is not one of {sorted(CLIMATES)}")
    try:
        if start.startswith("now"):  # now, now-6h: recent enough for a live ingest's window
            import time as _time

            from simulator.faults import parse_duration

            back = start[3:].lstrip()
            start_s = _time.time() - (parse_duration(back[1:], "--start") if back else 0.0)
            if back and not back.startswith("-"):
                raise ValueError(start)
        else:
            start_s = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    except ValueError:
        fail(f"--start: {start!r} is not an ISO time, 'now' or 'now-DURATION' (now-6h)")
    try:
        if gpus is not None:
            if gpus < 1:
                fail(f"--gpus: must be >= 1, got {gpus}")
            model = synthetic_site(gpus)
            if write_site is not None:
                write_site.write_text(site_toml(gpus))
        else:
            model = load_site(site or EXAMPLE_SITE)
        spec = faults
        if faults and Path(faults).is_file():
            spec = Path(faults).read_text()
        sim = SiteSimulator(
            model,
            seed=seed,
            start_time_s=start_s,
            faults=spec,
            climate=climate,
            horizon_s=hours * 3600.0,
        )
        summary = run_simulation(
            sim,
            hours,
            out,
            step_s=step_s,
            fmt=fmt,
            kafka_bootstrap=kafka,
            faults=faults,
            progress=not quiet,
            schedule=ReadSchedule(step_s, fine_burst_s, fine_every_s, fine_step_s),
        )
    except (SiteFileError, FaultSpecError, ValueError) as exc:
        fail(str(exc))
    except KafkaError as exc:
        fail(f"--kafka {kafka}: {exc}")
    typer.echo(_json.dumps(asdict(summary), indent=2))


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


app.add_typer(anomaly_app, name="anomaly")
app.add_typer(apikey_app, name="apikey")
app.add_typer(capacity_app, name="capacity")  # issue 27
app.add_typer(failure_app, name="failure")
app.add_typer(optimize_app, name="optimize")
app.add_typer(whatif_app, name="what-if")  # issue 27
app.add_typer(scenario_app, name="scenario")

if __name__ == "__main__":
    app()
