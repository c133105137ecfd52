"""Scenarios, runbooks and the demo's on-call inbox (issue 26).

- `GET /v1/scenarios`, `POST /v1/scenarios/{name}/run` (operator): timed fault sequences
  played on a simulated site (dctwin/scenario.py, docs/scenarios.md); 409 on a site that
  is not simulated, 404 for an unknown scenario, 422 for one that does not fit the site.
- `GET /v1/runbooks/{rule}` (markdown) and the open `GET /runbooks/{rule}` (HTML, what alert
  and webhook `runbook_url`s point at: a runbook holds no site data, and on-call opens it
  from a page without an API key). One file per default rule in twin/alerts/runbooks/
  (package data, so an installed wheel serves them too; docs/runbooks links there).
- `GET /v1/events`: the device events timeline (the dashboard's events panel on first paint).
- `GET /v1/oncall/pages`: what the demo's local webhook receiver got (dctwin/oncall.py),
  each with whether its signature verified (`receiver_running` false and no pages where
  none runs in this process).
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from markdown_it import MarkdownIt
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import require_role
from api.deps import TwinDep, services_of
from api.keys import Role
from api.problems import ProblemError, problem_responses
from api.scenarios import (
    PageLogLike,
    ReceivedPage,
    ScenarioError,
    ScenarioInfo,
    ScenarioRunnerLike,
    UnknownScenarioError,
)
from api.shape import now_naive_utc
from twin.alerts.rules import RUNBOOK_DIR

_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,80}$")
_md = MarkdownIt("commonmark", {"html": False}).enable("table")

router = APIRouter(tags=["demo"])
open_router = APIRouter(tags=["demo"])


async def scenarios_of(request: Request) -> ScenarioRunnerLike:
    runner = services_of(request).scenarios
    if runner is None:
        raise ProblemError(
            409,
            "this site is not simulated: scenarios inject faults into a simulated site only "
            "(dctwin demo, or dctwin serve with DCTWIN_SIMULATED_SITE=true)",
            "not-simulated",
        )
    return runner


class OncallPages(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "receiver_running": True,
                    "pages": ReceivedPage.model_config["json_schema_extra"]["examples"],  # type: ignore[index]
                }
            ]
        }
    )

    receiver_running: bool = Field(
        description="an on-call receiver runs in this process (dctwin demo runs one)"
    )
    pages: list[ReceivedPage] = Field(description="newest first")


async def pages_of(request: Request) -> PageLogLike | None:
    return services_of(request).oncall


class ScenarioRunOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "scenario": "utility-dip",
                    "faults": 1,
                    "spec": "utility_dip@sv1/facility/ups:onset=5,duration=60,depth=1",
                }
            ]
        }
    )

    scenario: str
    faults: int = Field(description="faults sent to the simulated site")
    spec: str = Field(description="the simulator fault spec sent (docs/simulator.md)")


@router.get(
    "/v1/scenarios",
    summary="Scenarios this site can play",
    responses=problem_responses(409, e409="this site is not simulated"),
)
async def list_scenarios(
    runner: Annotated[ScenarioRunnerLike, Depends(scenarios_of)],
) -> list[ScenarioInfo]:
    return runner.list()


@router.post(
    "/v1/scenarios/{name}/run",
    summary="Play a scenario on the simulated site (operator)",
    dependencies=[Depends(require_role(Role.operator))],
    responses=problem_responses(
        404, 409, 422, e404="no scenario 'nope' (known: default, utility-dip)"
    ),
)
async def run_scenario(
    name: str, runner: Annotated[ScenarioRunnerLike, Depends(scenarios_of)]
) -> ScenarioRunOut:
    try:
        return ScenarioRunOut(**await run_in_threadpool(runner.run, name))
    except UnknownScenarioError as exc:
        raise ProblemError(404, str(exc), "not-found") from exc
    except ScenarioError as exc:
        raise ProblemError(422, str(exc), "invalid-scenario") from exc


def runbook_text(rule: str) -> str:
    path = RUNBOOK_DIR / f"{rule}.md"
    if not _RULE.match(rule) or not path.is_file():
        known = sorted(p.stem for p in RUNBOOK_DIR.glob("*.md"))
        raise ProblemError(
            404,
            f"no runbook for rule {rule!r} ({len(known)} runbooks: one per default alert rule, "
            "twin/alerts/runbooks/)",
            "not-found",
        )
    return path.read_text()


@router.get(
    "/v1/runbooks/{rule}",
    summary="The runbook of an alert rule (markdown)",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/markdown": {
                    "example": "# UpsOnBattery: UPS on battery\n\n## What it means\n\n..."
                }
            }
        },
        **problem_responses(404, e404="no runbook for rule 'Nope'"),
    },
)
async def get_runbook(rule: str) -> Response:
    return Response(runbook_text(rule), media_type="text/markdown; charset=utf-8")


@open_router.get("/runbooks/{rule}", include_in_schema=False)
async def runbook_page(rule: str) -> HTMLResponse:
    body = _md.render(runbook_text(rule))
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(rule)} runbook</title>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<link rel=stylesheet href="/static/app.css"></head>'
        f'<body class="doc"><main class="doc">{body}</main></body></html>',
        headers={"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"},
    )


@router.get("/v1/oncall/pages", summary="Pages the demo's on-call receiver got, newest first")
async def oncall_pages(log: Annotated[PageLogLike | None, Depends(pages_of)]) -> OncallPages:
    # 200 either way: the dashboard asks on every page and hides its link when none runs
    return OncallPages(receiver_running=log is not None, pages=log.pages() if log else [])


class DeviceEventOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "time": "2026-12-07T06:13:05.190Z",
                    "device_id": "sv1/h1/crah3",
                    "kind": "fan_failed",
                    "severity": "critical",
                    "message": "CRAH fan motor failed",
                }
            ]
        }
    )

    time: datetime
    device_id: str
    kind: str
    severity: str
    message: str | None


@router.get(
    "/v1/events",
    summary="Device events, newest first (XIDs, leaks, failed pumps/PSUs, swaps)",
    responses=problem_responses(422),
)
def list_events(
    twin: TwinDep,
    hours: Annotated[float, Query(gt=0, le=168, description="how far back")] = 6,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    device_id: Annotated[str | None, Query(max_length=300, description="id prefix")] = None,
) -> list[DeviceEventOut]:
    """The events timeline: what the stream's `device_event`s were, for a page that just
    opened. Identity reports (`inventory`) are left out, as in the stream."""
    since = now_naive_utc() - timedelta(hours=hours)
    sql = (
        "SELECT read_time, device_id, kind, severity, message FROM events "
        "WHERE kind <> 'inventory' AND read_time >= ?"
    )
    params: list[Any] = [since]
    if device_id:
        sql += " AND starts_with(device_id, ?)"
        params.append(device_id)
    sql += " ORDER BY read_time DESC LIMIT ?"
    params.append(limit)
    rows = twin.store.cursor().execute(sql, params).fetchall()
    return [
        DeviceEventOut(time=t.replace(tzinfo=UTC), device_id=d, kind=k, severity=s, message=m)
        for t, d, k, s, m in rows
    ]
