"""The CLI's commands exist, have help, and are the ones the compose file runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dctwin.cli.main import app

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
SUBCOMMANDS = ["demo", "serve", "collect", "broker", "bench", "simulate"]


def _commands() -> set[str]:
    import typer.main

    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_required_subcommands_exist():
    assert set(SUBCOMMANDS) <= _commands()


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_compose_services_run_real_cli_commands():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    ours = {n: s for n, s in services.items() if "build" in s}
    assert {"twin", "collector"} <= set(ours)
    known = _commands()
    for name, svc in ours.items():
        cmd = svc["command"]
        assert cmd[0] in known, f"{name}: {cmd[0]!r} is not a dctwin command"
        # the options given must parse: ask the command for --help with them
        result = runner.invoke(app, [cmd[0], "--help"])
        assert result.exit_code == 0
        for opt in (c for c in cmd[1:] if c.startswith("--")):
            assert opt in result.output, f"{name}: option {opt} unknown to dctwin {cmd[0]}"
    config = REPO / "deploy" / "collector-simulated.toml"
    from collectors.daemon_config import load_collector_config

    assert load_collector_config(config).sources[0]["type"] == "simulated"


def test_collect_with_invalid_config_names_the_field(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\nsite = "sv1"\ninterval_s = -1\n[[sources]]\ntype = "simulated"\n')
    result = runner.invoke(app, ["collect", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "interval_s" in result.output
