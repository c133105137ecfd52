"""Part identity: which slot a GPU/PSU serial or UUID is in, and what happened to it.

`GET /v1/parts/{serial_or_uuid}` follows a part across slots (its tenures, its failure
risk history, the events of its slots while it was there); `GET /v1/devices/{id}/parts`
lists the parts a slot held. Both read the app's `PartHistory` (api/deps.py): in a server
its background job keeps it current; without one (tests, tools) a request first applies
the inventory events stored since the last.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import PartsDep, TwinDep
from api.problems import ProblemError, problem_responses
from twin.parts import PartHistory

T0 = "2025-06-01T03:00:00Z"
UUID = "GPU-5670703f-23a5-a3e7-5cf8-8f7cdd330e5e"


class PartIdentity(BaseModel):
    uuid: str | None = Field(description="NVML UUID (GPUs); null where the source has none")
    serial: str | None = Field(description="board or PSU serial number")
    part_number: str | None = None
    name: str | None = Field(None, description="product name (NVML name, Redfish Model)")


class TenureOut(BaseModel):
    device_id: str = Field(description="the slot")
    uuid: str | None
    serial: str | None
    part_number: str | None = None
    name: str | None = None
    installed_at: datetime = Field(description="first identity report of the part in the slot")
    last_reported: datetime = Field(description="newest identity report of it there")
    removed_at: datetime | None = Field(
        description="another part reported in the slot, or this part in another; "
        "null while it is there"
    )


class RiskSummary(BaseModel):
    points: int = Field(description="rows of the part's risk history")
    first_time: datetime
    last_time: datetime
    latest_risk: float
    latest_status: str
    max_risk: float
    max_risk_time: datetime
    model_version: str | None = Field(description="model of the latest row")


class PartEvent(BaseModel):
    time: datetime
    device_id: str
    kind: str = Field(description="xid, psu_fault, device_lost, part_swapped, ...")
    severity: str
    message: str | None
    attrs: dict[str, Any]


class PartOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "part": {
                        "uuid": UUID,
                        "serial": "1704200658470",
                        "part_number": "692-2G520-0200-000",
                        "name": "NVIDIA H100 80GB HBM3",
                    },
                    "slot": "sv1/h1/row1/rk101/n01/gpu3",
                    "last_slot": "sv1/h1/row1/rk101/n01/gpu3",
                    "slots": [],
                    "risk": None,
                    "events": [],
                }
            ]
        }
    )

    part: PartIdentity
    slot: str | None = Field(description="the slot it is in now; null when it left its last")
    last_slot: str = Field(description="the slot it was last reported in")
    slots: list[TenureOut] = Field(description="every slot stay, oldest first")
    risk: RiskSummary | None = Field(description="its failure-risk history; null if none")
    events: list[PartEvent] = Field(
        description="events of its slots while it was there (XIDs, failures, swaps), newest first"
    )


class SlotPartsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "sv1/h1/row1/rk101/n01/gpu3",
                    "current": None,
                    "parts": [
                        {
                            "device_id": "sv1/h1/row1/rk101/n01/gpu3",
                            "uuid": UUID,
                            "serial": "1704200658470",
                            "part_number": "692-2G520-0200-000",
                            "name": "NVIDIA H100 80GB HBM3",
                            "installed_at": T0,
                            "last_reported": T0,
                            "removed_at": "2025-06-02T10:00:00Z",
                        }
                    ],
                }
            ]
        }
    )

    device_id: str
    current: TenureOut | None = Field(description="the part in the slot now")
    parts: list[TenureOut] = Field(description="every part the slot held, oldest first")


router = APIRouter(prefix="/v1", tags=["parts"])

Ident = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="a GPU's NVML UUID or a GPU/PSU serial number",
        examples=[UUID],
    ),
]


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for k, v in row.items()}


def _fresh(parts: PartHistory) -> None:
    if not parts.running:  # no background job: bring the history up to date first
        parts.update()


@router.get(
    "/parts/{ident}",
    response_model=PartOut,
    responses=problem_responses(404, 422, e404=f"no part with serial or uuid {UUID!r}"),
    summary="A GPU or PSU by serial or UUID: its slot, history, risk and events",
)
async def part(
    ident: Ident,
    parts: PartsDep,
    events: Annotated[int, Query(ge=1, le=1000, description="events returned at most")] = 200,
) -> PartOut:
    def read() -> dict[str, Any] | None:
        _fresh(parts)
        return parts.part(ident, events)

    found = await run_in_threadpool(read)
    if found is None:
        raise ProblemError(404, f"no part with serial or uuid {ident!r}", "not-found")
    return PartOut(
        part=PartIdentity(**found["part"]),
        slot=found["slot"],
        last_slot=found["last_slot"],
        slots=[TenureOut(**_utc(t)) for t in found["slots"]],
        risk=RiskSummary(**_utc(found["risk"])) if found["risk"] else None,
        events=[PartEvent(**_utc(e)) for e in found["events"]],
    )


@router.get(
    "/devices/{device_id:path}/parts",
    response_model=SlotPartsOut,
    responses=problem_responses(
        404, e404="unknown device id 'sv1/x': not in the site model and never reported"
    ),
    summary="The parts a GPU/PSU slot held (swaps, moves)",
)
async def device_parts(
    device_id: Annotated[
        str, Path(description="a device id (the slot)", examples=["sv1/h1/row1/rk101/n01/gpu3"])
    ],
    parts: PartsDep,
    twin: TwinDep,
) -> SlotPartsOut:
    def read() -> list[dict[str, Any]]:
        _fresh(parts)
        return parts.slot_history(device_id)

    history = await run_in_threadpool(read)
    if not history and device_id not in twin.known_devices:
        raise ProblemError(
            404,
            f"unknown device id {device_id!r}: not in the site model and never reported",
            "not-found",
        )
    tenures = [TenureOut(device_id=device_id, **_utc(t)) for t in history]
    # part_key is internal (the UUID, else the serial): TenureOut ignores it
    current = next((t for t in reversed(tenures) if t.removed_at is None), None)
    return SlotPartsOut(device_id=device_id, current=current, parts=tenures)


def device_part_state(parts: PartHistory | None, device_id: str) -> dict[str, Any] | None:
    """The part in a slot now, for device state (GET /v1/devices/{id}): uuid, serial,
    part_number, name, installed_at; None when unknown. An in-memory lookup."""
    state = parts.current(device_id) if parts is not None else None
    return _utc(state) if state is not None else None
