"""`dctwin capacity evaluate`: the demand forecast on held-out simulated months (issue 27)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

capacity_app = typer.Typer(
    help="Capacity: evaluate the demand forecast on simulated growth scenarios.",
    no_args_is_help=True,
)


@capacity_app.command("evaluate")
def capacity_evaluate(
    check: bool = typer.Option(
        False, "--check", help="exit 1 unless coverage is in 85-95 % and run-outs within 10 %"
    ),
    dev: bool = typer.Option(False, "--dev", help="the development scenarios instead"),
    quick: bool = typer.Option(False, "--quick", help="the small, fast scenario (tests)"),
    output: Path = typer.Option(None, "--output", "-o", help="write the full report (JSON)"),
) -> None:
    """Simulate each growth scenario, forecast the held-out month, print the figures."""
    from rich.progress import Progress

    from experiments.capacity_eval import (
        DEV_SCENARIOS,
        QUICK,
        SCENARIOS,
        evaluate,
        summary_lines,
    )

    scenarios = (QUICK,) if quick else DEV_SCENARIOS if dev else SCENARIOS
    with Progress(transient=True) as bar:
        task = bar.add_task("simulating scenarios", total=len(scenarios))
        report = evaluate(scenarios, progress=lambda _name: bar.advance(task))
    for line in summary_lines(report):
        typer.echo(line)
    if output is not None:
        output.write_text(json.dumps(report, indent=2))
    if check and not (report["coverage_ok"] and report["runout_ok"]):
        typer.echo("targets missed", err=True)
        raise typer.Exit(1)
