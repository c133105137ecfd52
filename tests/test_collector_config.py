"""Collector TOML: the shipped examples load, and a bad value is named by its field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from collectors.daemon_config import CollectorConfig, CollectorConfigError, load_collector_config
from dctwin.cli.main import app

REPO = Path(__file__).resolve().parent.parent
BASE = 'name = "x"\nsite = "sv1"\ninterval_s = 1.0\n'
SOURCE = '\n[[sources]]\ntype = "simulated"\n'


def test_shipped_example_config_loads_with_every_section():
    cfg = load_collector_config(REPO / "deploy" / "collector.example.toml")
    assert cfg.spool.dir == Path("/var/lib/dctwin-collector/spool")
    assert cfg.metrics.port > 0
    assert cfg.source_deadline_s(cfg.sources[0]) <= cfg.interval_s
    assert all("deadline_s" not in cfg.source_table(raw) for raw in cfg.sources)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (BASE + "[spool]\nmax_bytes = 10\n" + SOURCE, "spool.max_bytes"),
        (BASE + "[spool]\nmax_byte = 10\n" + SOURCE, "spool.max_byte"),
        (BASE + "[metrics]\nport = 70000\n" + SOURCE, "metrics.port"),
        (BASE + "[kafka]\nrequest_timeout_ms = 20000\n" + SOURCE, "delivery_timeout_ms"),
        (BASE + "deadline_s = 2.0\n" + SOURCE, "deadline_s"),
        (BASE + SOURCE + "deadline_s = 5\n", "sources[0].deadline_s"),
        (BASE + SOURCE + 'deadline_s = "soon"\n', "sources[0].deadline_s"),
        (BASE + "shutdown_timeout_s = 5\n" + SOURCE, "shutdown_timeout_s"),
    ],
)
def test_invalid_value_names_its_field(tmp_path, text, field):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(CollectorConfigError, match=field.replace("[", r"\[")):
        load_collector_config(path)


def test_collect_names_the_bad_field_of_a_source_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        BASE
        + f'[spool]\ndir = "{tmp_path / "spool"}"\n'
        + SOURCE
        + "seed = 1\ndeadline_s = 0.5\n"
        + SOURCE
        + 'seed = "many"\n'
    )
    result = CliRunner().invoke(app, ["collect", "--config", str(path)])
    assert result.exit_code == 2
    assert "sources[1]" in result.output and "seed" in result.output


def test_a_second_daemon_on_the_same_spool_is_refused(tmp_path):
    from collectors.daemon import CollectorDaemon

    path = tmp_path / "c.toml"
    path.write_text(BASE + f'[spool]\ndir = "{tmp_path / "spool"}"\n' + SOURCE)
    first = CollectorDaemon(load_collector_config(path))
    try:
        result = CliRunner().invoke(app, ["collect", "--config", str(path)])
        assert result.exit_code == 2
        assert "in use by another process" in result.output
    finally:
        first.close()


def _unit() -> dict[str, str]:
    out = {}
    for line in (REPO / "deploy" / "dctwin-collector.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), value.strip())
    return out


def test_systemd_unit_runs_collect_and_outwaits_the_flush():
    unit = _unit()
    example = load_collector_config(REPO / "deploy" / "collector.example.toml")
    assert unit["ExecStart"].split()[1:] == ["collect", "--config", "/etc/dctwin/collector.toml"]
    assert unit["KillSignal"] == "SIGTERM"
    assert float(unit["TimeoutStopSec"]) > example.shutdown_timeout_s
    assert example.spool.dir == Path("/var/lib") / unit["StateDirectory"] / "spool"
    assert unit["Restart"] == "always"


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd's own checker (Debian package `systemd`), with ExecStart pointed at this
    environment's dctwin since /opt/dctwin does not exist here."""
    import shutil
    import subprocess
    import sys

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: install the Debian package `systemd`"
    dctwin = Path(sys.executable).parent / "dctwin"
    text = (REPO / "deploy" / "dctwin-collector.service").read_text()
    unit = tmp_path / "dctwin-collector.service"
    unit.write_text(text.replace("/opt/dctwin/bin/dctwin", str(dctwin)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        ln
        for ln in (result.stdout + result.stderr).splitlines()
        if "dctwin-collector.service" in ln
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_two_sources_with_one_name_are_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(BASE + f'[spool]\ndir = "{tmp_path / "spool"}"\n' + SOURCE + SOURCE)
    result = CliRunner().invoke(app, ["collect", "--config", str(path)])
    assert result.exit_code == 2
    assert "duplicate source names ['simulated']" in result.output
    assert not (tmp_path / "spool").exists()  # refused before the spool was opened


def test_metrics_port_in_use_names_the_field(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "c.toml"
        path.write_text(
            BASE + f'[spool]\ndir = "{tmp_path / "spool"}"\n[metrics]\nport = {port}\n' + SOURCE
        )
        result = CliRunner().invoke(app, ["collect", "--config", str(path)])
    assert result.exit_code == 2
    assert f"metrics.port: cannot listen on 127.0.0.1:{port}" in result.output


class _BaseExceptionSource:
    """A library whose protocol errors derive from BaseException (bacpypes3's
    Error/Reject/Abort do): the reader must count it, not let it end the read loop."""

    name = "bacnet-like"

    def read(self):
        raise GeneratorExit("Abort: segmentation-not-supported")

    def close(self) -> None:
        pass


def test_reader_counts_a_base_exception_from_a_source_and_keeps_reading():
    from collectors.reader import SourceReader
    from collectors.stats import DaemonStats
    from tests.collector_helpers import RecordingSource

    good = RecordingSource(name="sim")
    stats = DaemonStats()
    reader = SourceReader([_BaseExceptionSource(), good], [2.0, 2.0], stats, "sv1/collector/c")
    try:
        first = reader.read_tick()
        second = reader.read_tick()
    finally:
        reader.close()
    assert len(first) > 0 and len(second) > 0  # the other source kept its schedule
    assert stats.sources["bacnet-like"].errors["exception"] == 2
    assert any("GeneratorExit" in e.message for e in first.events)


def test_a_source_with_its_own_interval_is_read_on_every_nth_tick():
    from collectors.reader import SourceReader
    from collectors.stats import DaemonStats
    from tests.collector_helpers import RecordingSource

    fast, slow = RecordingSource(name="gpus"), RecordingSource(name="ups")
    cfg = CollectorConfig.model_validate(
        {
            "name": "c",
            "site": "sv1",
            "interval_s": 1.0,
            "sources": [{"type": "simulated"}, {"type": "simulated", "interval_s": 5.0}],
        }
    )
    every = [cfg.source_every_ticks(raw) for raw in cfg.sources]
    assert every == [1, 5]
    assert "interval_s" not in CollectorConfig.source_table(cfg.sources[1])
    reader = SourceReader([fast, slow], [2.0, 2.0], DaemonStats(), "sv1/collector/c", 60.0, every)
    try:
        for _ in range(11):
            reader.read_tick()
    finally:
        reader.close()
    assert (fast.reads, slow.reads) == (11, 3)  # ticks 0, 5 and 10


@pytest.mark.parametrize(
    ("every", "needle"),
    [(2.5, "whole multiple"), (0.5, "whole multiple"), (0, "must be a number > 0")],
)
def test_source_interval_must_be_a_whole_multiple_of_the_daemons(every, needle):
    raw = {
        "name": "c",
        "site": "sv1",
        "interval_s": 1.0,
        "sources": [{"type": "simulated", "interval_s": every}],
    }
    with pytest.raises(ValueError, match=needle):
        CollectorConfig.model_validate(raw)
