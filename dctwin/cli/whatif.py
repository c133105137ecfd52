"""`dctwin what-if run FILE` and `dctwin what-if evaluate` (issue 27, item 3)."""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path

import typer

whatif_app = typer.Typer(
    help="What-if scenarios from the live state: run one, evaluate accuracy.",
    no_args_is_help=True,
)


def _scenario(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        typer.echo(f"error: {path}: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        typer.echo(f"error: {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}", err=True)
        raise typer.Exit(2) from exc
    from pydantic import ValidationError

    from domain.site import format_validation_error
    from domain.whatif import Scenario

    try:
        Scenario.model_validate(doc)
    except ValidationError as exc:
        typer.echo(f"error: {path}: {format_validation_error(exc)}", err=True)
        raise typer.Exit(2) from exc
    return doc


@whatif_app.command("run")
def run(
    file: Path = typer.Argument(..., help="scenario, JSON or TOML (docs/whatif.md)"),
    url: str = typer.Option("http://127.0.0.1:8000", help="the dctwin API"),
    key: str = typer.Option(None, help="API key, operator role (default DCTWIN_API_KEY)"),
    wait: bool = typer.Option(True, help="wait for the result and print it"),
) -> None:
    """Run a scenario on a `dctwin serve` from its live state; print the result as JSON."""
    import httpx
    from rich.progress import Progress

    body = _scenario(file)
    token = key or os.environ.get("DCTWIN_API_KEY")
    if not token:
        typer.echo("error: give --key or set DCTWIN_API_KEY", err=True)
        raise typer.Exit(2)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        try:
            r = client.post("/v1/what-if", json=body)
        except httpx.HTTPError as exc:
            typer.echo(f"error: {url}: {exc}", err=True)
            raise typer.Exit(1) from exc
        if r.status_code != 202:
            typer.echo(f"error: {r.status_code}: {r.json().get('detail', r.text)}", err=True)
            raise typer.Exit(1)
        run_id = r.json()["id"]
        if not wait:
            typer.echo(run_id)
            return
        with Progress(transient=True) as bar:
            task = bar.add_task(f"what-if {run_id}", total=1.0)
            while True:
                doc = client.get(f"/v1/what-if/{run_id}").json()
                bar.update(task, completed=doc["progress"])
                if doc["status"] not in ("queued", "running"):
                    break
                time.sleep(0.5)
    typer.echo(json.dumps(doc, indent=2))
    if doc["status"] != "done":
        raise typer.Exit(1)


@whatif_app.command("evaluate")
def evaluate(
    site: Path = typer.Option(None, help="site TOML (default: the example site)"),
    horizon_h: float = typer.Option(24.0, help="horizon of each scenario, hours"),
    only: list[str] = typer.Option(None, help="scenario(s) to run (default: all five)"),
    check: bool = typer.Option(False, "--check", help="exit 1 if a target is missed"),
    output: Path = typer.Option(None, "--output", "-o", help="write the figures as JSON"),
    fresh: bool = typer.Option(
        False, "--fresh", help="the second reference (seed 31, 2025-08-12 14:00 UTC)"
    ),
    reference_set: int = typer.Option(
        None,
        "--set",
        min=1,
        max=3,
        help="reference set: 1 (seed 7, 2025-07-01 08:00 UTC, the default), 2 (= --fresh), "
        "3 (seed 53, 2025-09-03 13:00 UTC)",
    ),
) -> None:
    """What-if from the live state against the truth on five scenarios (docs/whatif.md)."""
    from dataclasses import asdict

    from domain.site import EXAMPLE_SITE, load_site
    from experiments.whatif_eval import PUE_TARGET_PCT, RUN_TARGET_S, TEMP_TARGET_K
    from experiments.whatif_eval import evaluate as run_eval

    s = load_site(site or EXAMPLE_SITE)
    typer.echo(
        f"targets: PUE within {PUE_TARGET_PCT} %, peak GPU within {TEMP_TARGET_K} K, "
        f"a run < {RUN_TARGET_S:.0f} s; horizon {horizon_h} h"
    )
    typer.echo(
        f"{'scenario':<18} {'PUE what-if':>11} {'PUE truth':>10} {'err %':>6} "
        f"{'GPU what-if':>11} {'GPU truth':>10} {'err K':>6} {'run s':>6}  ok"
    )

    def show(c) -> None:
        typer.echo(
            f"{c.scenario:<18} {c.pue_whatif:>11.4f} {c.pue_truth:>10.4f} {c.pue_error_pct:>6.2f} "
            f"{c.peak_gpu_whatif_c:>11.2f} {c.peak_gpu_truth_c:>10.2f} {c.peak_gpu_error_k:>6.2f} "
            f"{c.whatif_s:>6.1f}  {'yes' if c.ok else 'NO'}"
        )

    if fresh and reference_set not in (None, 2):
        raise typer.BadParameter("--fresh is --set 2", param_hint="--set")
    out = run_eval(
        s,
        horizon_h=horizon_h,
        only=only or None,
        progress=show,
        fresh=fresh,
        reference_set=reference_set,
    )
    if output is not None:
        output.write_text(json.dumps([asdict(c) for c in out], indent=2, default=float))
    missed = [c.scenario for c in out if not c.ok]
    typer.echo(f"{len(out) - len(missed)} of {len(out)} within the targets")
    if check and missed:
        typer.echo(f"missed: {', '.join(missed)}", err=True)
        raise typer.Exit(1)
