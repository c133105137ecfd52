"""`dctwin scenario list|run`: timed fault sequences for a simulated site (issue 26).

`list` reads the scenario files (dctwin/scenarios/, docs/scenarios.md); `run NAME` asks a
running `dctwin serve` (or `dctwin demo`) on a simulated site to play one, through
`POST /v1/scenarios/{name}/run` with an operator key.
"""

from __future__ import annotations

import json
import os

import typer

scenario_app = typer.Typer(
    help="List scenarios, or play one on a running simulated site.", no_args_is_help=True
)


@scenario_app.command("list")
def list_scenarios() -> None:
    """The scenarios shipped in dctwin/scenarios/, their faults and offsets."""
    from api.scenarios import ScenarioError
    from dctwin.scenario import find_scenario, scenario_names

    for name in scenario_names():
        try:
            sc = find_scenario(name)
        except ScenarioError as exc:
            typer.echo(f"{name}: invalid: {exc}")
            continue
        typer.echo(f"{name}: {sc.description}")
        for f in sc.faults:
            extra = f" for {f.duration}" if f.duration else ""
            typer.echo(f"  +{f.at:>5}  {f.kind} on {f.device}{extra}")


@scenario_app.command("run")
def run(
    name: str = typer.Argument(..., help="scenario name (dctwin scenario list)"),
    url: str = typer.Option(
        None, "--url", help="the API (default DCTWIN_EXTERNAL_URL or http://API_HOST:API_PORT)"
    ),
    key: str = typer.Option(
        None, "--key", help="operator API key (default DCTWIN_API_KEY; the demo's key in a demo)"
    ),
) -> None:
    """Play a scenario on the simulated site behind a running API."""
    import httpx

    from api.keys import DEMO_KEY
    from dctwin.settings import Settings

    s = Settings()
    base = (url or s.external_url or f"http://{s.api_host}:{s.api_port}").rstrip("/")
    token = key or os.environ.get("DCTWIN_API_KEY") or DEMO_KEY
    try:
        r = httpx.post(
            f"{base}/v1/scenarios/{name}/run",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: {base}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if r.status_code != 200:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        typer.echo(f"error: {r.status_code}: {detail}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(r.json(), indent=2))
