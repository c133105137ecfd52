"""Optimizer endpoints: setpoint recommendations and their lifecycle.

GET  /v1/recommendations[?status=&limit=]      newest first
GET  /v1/recommendations/report                predicted vs realised savings
GET  /v1/recommendations/{id}
POST /v1/recommendations/{id}/accept|reject    body {"note": "..."} (optional)

The decision is recorded under the calling API key's name (operator role or above); a
`who` in the body is ignored, so the audit trail cannot be written under another name.
404 for an unknown id, 409 for a transition the lifecycle does not allow (deciding twice).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, require_role
from api.deps import RecommendationsDep
from api.keys import Role
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

    @classmethod
    def of(cls, row: dict[str, Any]) -> RecommendationOut:
        utc = {
            k: row[k].replace(tzinfo=UTC)
            for k in ("created_at", "for_time", "decided_at", "measured_at")
            if row[k] is not None
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
) -> RecommendationOut:
    note = body.note if body is not None else None
    try:  # recorded under the key's name: a body `who` is ignored
        row = (store.accept if accept else store.reject)(rec_id, who.name, note)
    except UnknownRecommendationError as exc:
        raise HTTPException(404, str(exc.args[0])) from None
    except LifecycleError as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return RecommendationOut.of(row)


@router.post("/{rec_id}/accept", response_model=RecommendationOut)
def accept(
    who: Annotated[Principal, Depends(require_role(Role.operator))],
    rec_id: int,
    store: RecommendationsDep,
    body: OperatorAction | None = None,
) -> RecommendationOut:
    return _act(store, rec_id, body, who, True)


@router.post("/{rec_id}/reject", response_model=RecommendationOut)
def reject(
    who: Annotated[Principal, Depends(require_role(Role.operator))],
    rec_id: int,
    store: RecommendationsDep,
    body: OperatorAction | None = None,
) -> RecommendationOut:
    return _act(store, rec_id, body, who, False)
