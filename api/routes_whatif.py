"""What-if endpoints (issue 27, item 3).

POST   /v1/what-if                    a scenario (domain.whatif.Scenario) -> 202, the run
GET    /v1/what-if[?limit=]           runs, newest first (without results)
GET    /v1/what-if/compare?ids=a,b    runs side by side: key figures in one table
GET    /v1/what-if/{id}               one run: status, progress, result
DELETE /v1/what-if/{id}               cancel a queued or running run (POST .../cancel too)

A scenario that does not fit the site (unknown row, rack, template, component, control;
a setpoint outside its envelope; new racks overloading a breaker, PDU, CDU, UPS or the
plant) is a 422 whose `errors[0].parameter` names the element. No live state yet: 409.
Too many runs queued: 429. Starting and cancelling runs needs the operator role.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api.auth import require_role
from api.deps import WhatIfDep
from api.examples import WHATIF_COMPARE, WHATIF_RUN, ok_example
from api.keys import Role
from api.problems import ProblemError, problem_response
from domain.whatif import Scenario, ScenarioError
from twin.whatif.live_state import NoLiveStateError

router = APIRouter(prefix="/v1/what-if", tags=["what-if"])
operator = [Depends(require_role(Role.operator))]
MAX_COMPARE = 10
KEY_FIGURES = (
    "pue",
    "it_energy_kwh",
    "facility_energy_kwh",
    "peak_gpu_temp_c",
    "peak_gpu_id",
    "peak_cdu_supply_c",
    "peak_crah_supply_c",
    "peak_chw_supply_c",
    "makeup_water_l",
)


@router.post(
    "",
    status_code=202,
    dependencies=operator,
    summary="Run a what-if scenario from the live state (background; poll its id)",
    responses=ok_example(
        {**WHATIF_RUN, "status": "queued", "progress": 0.0, "finished": None, "result": None},
        202,
    ),
)
def submit(scenario: Scenario, svc: WhatIfDep, request: Request) -> JSONResponse:
    try:
        run = svc.submit(scenario)
    except ScenarioError as exc:
        return problem_response(
            422,
            f"the scenario does not fit the site: {exc}",
            request.url.path,
            "/problems/whatif-scenario",
            "Invalid what-if scenario",
            errors=[
                {
                    "location": "body",
                    "parameter": exc.element,
                    "message": exc.message,
                    "type": "whatif_scenario",
                }
            ],
        )
    except NoLiveStateError as exc:
        raise ProblemError(409, str(exc), "whatif-no-live-state") from exc
    except OverflowError as exc:
        raise ProblemError(429, str(exc), "whatif-busy", headers={"Retry-After": "10"}) from exc
    return JSONResponse(run, status_code=202, headers={"Location": f"/v1/what-if/{run['id']}"})


@router.get(
    "",
    summary="What-if runs, newest first",
    responses=ok_example([{**WHATIF_RUN, "result": None}]),
)
def runs(svc: WhatIfDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    return svc.runs(limit)


@router.get("/compare", summary="What-if runs side by side", responses=ok_example(WHATIF_COMPARE))
def compare(
    svc: WhatIfDep,
    ids: Annotated[str, Query(min_length=1, description="run ids, comma-separated")],
) -> dict[str, Any]:
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    if not wanted or len(wanted) > MAX_COMPARE:
        raise ProblemError(422, f"ids: give 1 to {MAX_COMPARE} run ids", "validation")
    found, unknown = svc.compare(wanted)
    if unknown:
        raise ProblemError(404, f"unknown what-if run id(s): {', '.join(unknown)}", "not-found")
    table = {
        k: [None if r["result"] is None else r["result"].get(k) for r in found] for k in KEY_FIGURES
    }
    table["violations"] = [
        None if r["result"] is None else len(r["result"]["violations"]) for r in found
    ]
    table["first_breach"] = [
        None if r["result"] is None else r["result"]["first_breach"] for r in found
    ]
    return {
        "ids": wanted,
        "names": [r["name"] for r in found],
        "status": [r["status"] for r in found],
        "figures": table,
        "runs": found,
    }


def _run_or_404(svc: Any, run_id: str) -> dict[str, Any]:
    run = svc.get(run_id)
    if run is None:
        raise ProblemError(404, f"no what-if run {run_id!r}", "not-found")
    result: dict[str, Any] = run
    return result


@router.get(
    "/{run_id}",
    summary="One what-if run: status, progress and result",
    responses=ok_example(WHATIF_RUN),
)
def get_run(run_id: str, svc: WhatIfDep) -> dict[str, Any]:
    return _run_or_404(svc, run_id)


_CANCELLED = {**WHATIF_RUN, "status": "cancelled", "progress": 0.4, "result": None}


@router.delete(
    "/{run_id}",
    dependencies=operator,
    summary="Cancel a what-if run",
    responses=ok_example(_CANCELLED),
)
def cancel(run_id: str, svc: WhatIfDep) -> dict[str, Any]:
    _run_or_404(svc, run_id)
    run = svc.cancel(run_id)
    assert run is not None
    return run


@router.post(
    "/{run_id}/cancel",
    dependencies=operator,
    summary="Cancel a what-if run",
    responses=ok_example(_CANCELLED),
)
def cancel_post(run_id: str, svc: WhatIfDep) -> dict[str, Any]:
    return cancel(run_id, svc)
