"""Optimizer endpoints: setpoint recommendations and their lifecycle.

GET  /v1/recommendations[?status=&limit=]      newest first
GET  /v1/recommendations/report                predicted vs realised savings
GET  /v1/recommendations/{id}
POST /v1/recommendations/{id}/accept|reject    body {"note": "..."} (optional)
GET  /v1/recommendations/status                the live optimizer (issue 19)
GET  /v1/recommendations/{id}/writes           its setpoint writes (audit)

The decision is recorded under the calling API key's name (operator role or above); a
`who` in the body is ignored, so the audit trail cannot be written under another name.
404 for an unknown id, 409 for a transition the lifecycle does not allow (deciding twice).
With the live optimizer (docs/optimizer.md, "Live operation") accept also writes the
setpoints unless advisory only: 409 stale (then expired) or another change in flight, 422
outside the envelope or the rate-of-change limit, 502 when the plant refused or did not
confirm the write (the recommendation is then `failed`, the plant unchanged).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, require_role
from api.deps import OptimizerDep, RecommendationsDep
from api.keys import Role
from api.problems import problem_content, problem_example
from twin.optimizer.live import GuardrailError, LiveOptimizer, WriteFailedError
from twin.optimizer.recommendations import (
    STATUSES,
    LifecycleError,
    RecommendationStore,
    UnknownRecommendationError,
)


class OperatorAction(BaseModel):
    who: str | None = Field(
        None,
        max_length=200,
        deprecated=True,
        description="ignored: the decision is recorded under the API key's name",
    )
    note: str | None = Field(None, max_length=2000)


class RecommendationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 12,
                    "status": "proposed",
                    "site_id": "sv1",
                    "created_at": "2026-11-22T03:00:00Z",
                    "for_time": "2026-11-22T03:00:00Z",
                    "current_setpoints": {
                        "chw_supply_setpoint_c": 18.0,
                        "cdu_supply_setpoint_c": 32.0,
                    },
                    "recommended_setpoints": {
                        "chw_supply_setpoint_c": 20.0,
                        "cdu_supply_setpoint_c": 33.5,
                    },
                    "state": {"it_kw": 1290.0, "outdoor_wetbulb_c": 14.2},
                    "predicted_savings_kw": 41.5,
                    "savings_low_kw": 33.0,
                    "savings_high_kw": 47.9,
                    "predicted_cooling_savings_kw": 41.5,
                    "predicted_facility_kw": 1612.0,
                    "pue_current": 1.282,
                    "pue_recommended": 1.25,
                    "pue_delta": -0.032,
                    "binding_constraint": "ramp:chw_supply_setpoint_c",
                    "active_constraints": ["ramp:chw_supply_setpoint_c"],
                    "predicted_gpu_temp_max_c": 78.4,
                    "model_version": "opt-20261122-0300",
                    "decided_by": None,
                    "decided_at": None,
                    "decision_note": None,
                    "measured_at": None,
                    "realised_savings_kw": None,
                    "outcome_note": None,
                }
            ]
        }
    )

    id: int
    status: str
    site_id: str
    created_at: datetime
    for_time: datetime
    current_setpoints: dict[str, float]
    recommended_setpoints: dict[str, float]
    state: dict[str, float]
    predicted_savings_kw: float
    savings_low_kw: float | None
    savings_high_kw: float | None
    predicted_cooling_savings_kw: float | None
    predicted_facility_kw: float | None
    pue_current: float | None
    pue_recommended: float | None
    pue_delta: float | None
    binding_constraint: str | None
    active_constraints: list[str]
    predicted_gpu_temp_max_c: float | None
    model_version: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    measured_at: datetime | None
    realised_savings_kw: float | None
    outcome_note: str | None
    # issue 19 (opt-live): why, the live loop's ends and what was written
    why: dict[str, Any] | None = None
    status_note: str | None = None
    applied_at: datetime | None = None
    applied_setpoints: dict[str, float] | None = None
    previous_setpoints: dict[str, float] | None = None
    # each write point's value before the change (`<control>@<device>`): what a revert
    # writes back, unit by unit
    previous_points: dict[str, float] | None = None
    reverted_at: datetime | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> RecommendationOut:
        utc = {
            k: row[k].replace(tzinfo=UTC)
            for k in (
                "created_at",
                "for_time",
                "decided_at",
                "measured_at",
                "applied_at",
                "reverted_at",
            )
            if row.get(k) is not None
        }
        return cls(**{**row, **utc})


router = APIRouter(prefix="/v1/recommendations", tags=["optimizer"])


@router.get("", response_model=list[RecommendationOut])
def list_recommendations(
    store: RecommendationsDep,
    status: str | None = Query(None, description=f"one of {list(STATUSES)}"),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[RecommendationOut]:
    try:
        return [RecommendationOut.of(r) for r in store.list(status, limit)]
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get(
    "/report",
    summary="Predicted vs realised savings of decided recommendations",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "counts": {"proposed": 2, "accepted": 1, "rejected": 0, "measured": 1},
                        "realised_over_predicted": 0.97,
                    }
                }
            }
        }
    },
)
def report(store: RecommendationsDep) -> dict[str, Any]:
    return store.report()


@router.get(
    "/status",
    summary="The live optimizer: last and next run, model, why no proposal, guardrails",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "running": True,
                        "interval_s": 900.0,
                        "last_run_at": "2026-11-22T03:00:00+00:00",
                        "next_run_at": "2026-11-22T03:15:00+00:00",
                        "model_version": "opt-20261122-1a2b3c4d",
                        "last_outcome": "out_of_distribution",
                        "reason": "out of distribution: outdoor_wetbulb_c=31 is outside ...",
                        "advisory_only": True,
                    }
                }
            }
        }
    },
)
def optimizer_status(optimizer: OptimizerDep) -> dict[str, Any]:
    if optimizer is None:
        return {"running": False, "reason": "the live optimizer is not running in this process"}
    return optimizer.status()


@router.get(
    "/{rec_id}/writes",
    summary="Setpoint writes of a recommendation (audit trail), newest first",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": [
                        {
                            "id": 3,
                            "written_at": "2026-11-22T03:02:10+00:00",
                            "recommendation_id": 12,
                            "action": "apply",
                            "who": "ada",
                            "writer": "plant-bms",
                            "requested": {"chw_supply_setpoint_c": 20.0},
                            "read_back": {"chw_supply_setpoint_c": 20.0},
                            "ok": True,
                            "error": None,
                        }
                    ]
                }
            }
        }
    },
)
def recommendation_writes(rec_id: int, store: RecommendationsDep) -> list[dict[str, Any]]:
    try:
        store.get(rec_id)
    except UnknownRecommendationError as exc:
        raise HTTPException(404, str(exc.args[0])) from None
    return [
        w | {"written_at": w["written_at"].replace(tzinfo=UTC).isoformat()}
        for w in store.writes(rec_id)
    ]


@router.get("/{rec_id}", response_model=RecommendationOut)
def get_recommendation(rec_id: int, store: RecommendationsDep) -> RecommendationOut:
    try:
        return RecommendationOut.of(store.get(rec_id))
    except UnknownRecommendationError as exc:
        raise HTTPException(404, str(exc.args[0])) from None


def _act(
    store: RecommendationStore,
    rec_id: int,
    body: OperatorAction | None,
    who: Principal,
    accept: bool,
    optimizer: LiveOptimizer | None = None,
) -> RecommendationOut:
    note = body.note if body is not None else None
    try:  # recorded under the key's name: a body `who` is ignored
        if accept and optimizer is not None:  # live: guardrails, then the write path
            row = optimizer.accept(rec_id, who.name, note)
        else:
            row = (store.accept if accept else store.reject)(rec_id, who.name, note)
    except UnknownRecommendationError as exc:
        raise HTTPException(404, str(exc.args[0])) from None
    except LifecycleError as exc:  # also stale (now expired) and a change in flight
        raise HTTPException(409, str(exc)) from None
    except (GuardrailError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    except WriteFailedError as exc:
        raise HTTPException(502, str(exc)) from None
    return RecommendationOut.of(row)


@router.post(
    "/{rec_id}/accept",
    response_model=RecommendationOut,
    responses={
        502: {
            "description": "the plant refused or did not confirm the setpoint write; the "
            "recommendation is now `failed` and the plant unchanged",
            "content": problem_content(
                problem_example(
                    502,
                    "recommendation 12 failed, the plant is unchanged: 10.1.0.5:502: "
                    "chw_supply_setpoint_c: unit 1 holding 100 (chw_supply_setpoint_c): wrote "
                    "19.5 (raw [195]) but read back 19 (raw [190])",
                )
            ),
        }
    },
)
def accept(
    who: Annotated[Principal, Depends(require_role(Role.operator))],
    rec_id: int,
    store: RecommendationsDep,
    optimizer: OptimizerDep,
    body: OperatorAction | None = None,
) -> RecommendationOut:
    return _act(store, rec_id, body, who, True, optimizer)


@router.post("/{rec_id}/reject", response_model=RecommendationOut)
def reject(
    who: Annotated[Principal, Depends(require_role(Role.operator))],
    rec_id: int,
    store: RecommendationsDep,
    body: OperatorAction | None = None,
) -> RecommendationOut:
    return _act(store, rec_id, body, who, False)
