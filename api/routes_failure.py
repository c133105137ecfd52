"""GET /v1/failure-risk: ranked per-component failure risk with reasons, and which model
serves it; GET /v1/failure-models: the models a site can serve (its registry and the
shipped default) and how each was validated."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from api.deps import ServicesDep
from twin.failure import registry
from twin.failure.features import CLASSES
from twin.failure.model import parse_horizon_s
from twin.failure.registry import RegistryError, newest_approved
from twin.failure.service import FailureRiskService


class RiskOut(BaseModel):
    device_id: str
    device_class: str
    rack: str
    risk: float = Field(description="calibrated probability of failure within the horizon")
    alarm: bool = Field(description="risk at or above the model's operating threshold")
    status: str = Field(description="ok, at_risk, lost (telemetry stopped) or failed")
    reasons: list[str] = Field(description="top contributing features, operator words")


class ClassFiguresOut(BaseModel):
    episodes: int | None = None
    positives: int | None = None
    pr_auc: float | None = None
    precision_strict: float | None = None
    recall: float | None = None
    lead_min_p50: float | None = None


class ValidationOut(BaseModel):
    method: str = Field(description="how the figures were measured (held-out data)")
    classes: dict[str, ClassFiguresOut] = Field(description="figures per device class")


class ModelOut(BaseModel):
    version: str
    source: str = Field(
        description="shipped_default (ships with dctwin) or site_trained (the site's registry)"
    )
    approved: bool
    horizon_s: float
    trained_at: str | None = None
    approved_at: str | None = None
    training_data: str
    validation: ValidationOut


_MODEL_EXAMPLE: JsonDict = {
    "version": "default-h3600s-a8184bc89119",
    "source": "shipped_default",
    "approved": True,
    "horizon_s": 3600.0,
    "trained_at": "2026-12-07T03:20:00Z",
    "approved_at": None,
    "training_data": "simulator seeds 1-6 (24 h each, 128-GPU synthetic site)",
    "validation": {
        "method": "held-out simulator seeds 31-34, later in time than training",
        "classes": {
            "gpu": {"episodes": 8, "pr_auc": 0.93, "precision_strict": 0.8, "recall": 0.95}
        },
    },
}


class FailureModelsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"serving": _MODEL_EXAMPLE, "models": [_MODEL_EXAMPLE]}]}
    )

    serving: ModelOut | None = Field(
        description="the model serving the requested horizon (null: none approved or shipped)"
    )
    models: list[ModelOut] = Field(description="site registry, oldest first, then shipped")


class FailureRiskOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "time": "2025-06-01T12:00:00Z",
                    "horizon_s": 3600.0,
                    "model_version": "gpu-1h-20250601T000000Z",
                    "devices": [
                        {
                            "device_id": "sv1/h1/row1/rk104/n03/gpu5",
                            "device_class": "gpu",
                            "rack": "rk104",
                            "risk": 0.83,
                            "alarm": True,
                            "status": "at_risk",
                            "reasons": [
                                "ECC uncorrected errors accelerating",
                                "XID 63 in the last hour",
                            ],
                        }
                    ],
                }
            ]
        }
    )

    time: datetime
    horizon_s: float
    model_version: str = Field(description="the approved model that scored this")
    model: ModelOut | None = Field(
        None, description="that model: shipped default or site-trained, when, validated how"
    )
    devices: list[RiskOut]


def device_failure_state(service: FailureRiskService | None, device_id: str) -> dict | None:
    """The failure part of a device's state (for /v1/devices/{id}): risk, alarm, status,
    horizon_s, model_version, time, reasons as of the last scoring tick; None when no
    model is approved for the horizon or the device is not scored yet. Reads the
    in-memory table only (the server's background thread refreshes it)."""
    state = service.device(device_id) if service is not None else None
    if state is not None and state["time"] is not None:
        state["time"] = state["time"].replace(tzinfo=UTC)
    if state is not None:
        shipped = (registry.SHIPPED_ROOT / str(state["model_version"])).is_dir()
        state["model_source"] = registry.SHIPPED if shipped else registry.SITE
    return state


def _model_out(version: str, root) -> ModelOut | None:
    try:
        return ModelOut.model_validate(registry.find(version, root).describe())
    except RegistryError:
        return None


router = APIRouter()


@router.get("/v1/failure-risk", response_model=FailureRiskOut)
def failure_risk(
    services: ServicesDep,
    horizon: str = Query(
        "1h", description="30m, 1h, 24h: needs an approved model for that horizon"
    ),
    device_class: str | None = Query(None, alias="class", description="gpu, psu, cdu or crah"),
    scope: str | None = Query(None, description="device id prefix: hall, row, rack"),
    min_risk: float = Query(0.0, ge=0.0, le=1.0),
    limit: int = Query(100, ge=1, le=100_000),
) -> FailureRiskOut:
    try:
        horizon_s = parse_horizon_s(horizon)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if device_class is not None and device_class not in CLASSES:
        raise HTTPException(422, f"class: {device_class!r} is not one of {list(CLASSES)}")
    lr = services.risk_for(horizon_s)
    if lr is None:
        raise HTTPException(503, "the failure-risk service is not running in this process")
    now = datetime.now(UTC)
    try:
        if lr.table is None or not lr.running:  # no background thread: at most once a tick
            lr.refresh()
    except RegistryError as exc:
        raise HTTPException(503, str(exc)) from None
    table = lr.table
    if table is None:  # no samples yet
        if lr.error is not None:
            raise HTTPException(503, str(lr.error))
        version = newest_approved(lr.root, horizon_s).version
        return FailureRiskOut(
            time=now,
            horizon_s=horizon_s,
            model_version=version,
            model=_model_out(version, lr.root),
            devices=[],
        )
    if device_class:
        table = table.filter(table["device_class"] == device_class)
    if scope:
        table = table.filter(table["device_id"].str.starts_with(scope))
    table = table.filter(table["risk"] >= min_risk).head(limit)
    version = (
        table["model_version"][0] if table.height else newest_approved(lr.root, horizon_s).version
    )
    return FailureRiskOut(
        time=now,
        horizon_s=horizon_s,
        model_version=version,
        model=_model_out(version, lr.root),
        devices=[
            RiskOut(
                device_id=d, device_class=c, rack=r, risk=round(k, 4), alarm=a, status=s, reasons=rs
            )
            for d, c, r, k, a, s, rs in table.select(
                "device_id", "device_class", "rack", "risk", "alarm", "status", "reasons"
            ).iter_rows()
        ],
    )


@router.get("/v1/failure-models", response_model=FailureModelsOut)
def failure_models(
    services: ServicesDep,
    horizon: str = Query("1h", description="the horizon whose serving model to name"),
) -> FailureModelsOut:
    """Which model serves failure risk (site-trained or the shipped default), and every
    model the site can serve, with the held-out figures each was validated on."""
    try:
        horizon_s = parse_horizon_s(horizon)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    lr = services.risk_for(horizon_s)
    root = lr.root if lr is not None else registry.DEFAULT_ROOT
    try:
        serving: ModelOut | None = ModelOut.model_validate(
            newest_approved(root, horizon_s).describe()
        )
    except RegistryError:
        serving = None
    return FailureModelsOut(
        serving=serving,
        models=[
            ModelOut.model_validate(v.describe())
            for v in registry.versions(root) + registry.shipped_versions()
        ],
    )
