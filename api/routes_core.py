"""Core read endpoints: PUE, devices, racks, site overview and device history."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import (
    LiveDep,
    OptionalAnomalyDep,
    OptionalFailureRiskDep,
    OptionalPartsDep,
    TwinDep,
)
from api.live_view import LiveView, RackSummary, Snapshot
from api.problems import ProblemError, problem_responses
from api.routes_anomaly import device_anomaly_state
from api.routes_failure import device_failure_state
from api.routes_parts import device_part_state
from api.shape import Cursor, Limit, Page, now_naive_utc, paginate, utc
from domain.site import DeviceRef
from twin.events import EventBus
from twin.pue import MeterReading
from twin.state import Twin

T0 = "2025-06-01T12:00:00Z"


class LatestReading(BaseModel):
    device_id: str
    metric: str
    value: float
    read_time: datetime = Field(description="when the device was read (RFC 3339, UTC)")
    age_s: float = Field(description="seconds between the read time and this response")

    @classmethod
    def of(cls, r: MeterReading, now: datetime) -> LatestReading:
        return cls(
            device_id=r.device_id,
            metric=r.metric,
            value=r.value,
            read_time=utc(r.read_time),
            age_s=round(r.age_s(now), 3),
        )


class DeviceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "sv1/h1/row1/rk101/n01/gpu0",
                    "device_class": "gpu",
                    "rack": "rk101",
                    "metrics": [
                        {
                            "device_id": "sv1/h1/row1/rk101/n01/gpu0",
                            "metric": "gpu_temp_c",
                            "value": 61.5,
                            "read_time": T0,
                            "age_s": 0.7,
                        }
                    ],
                }
            ]
        }
    )

    device_id: str
    device_class: str | None = Field(
        description="gpu, psu, cdu, pdu, crah, ups, meter, "
        "chiller_plant; null if not in the site model"
    )
    rack: str | None
    metrics: list[LatestReading] = Field(description="latest value of every metric, by name")
    anomaly: dict | None = Field(
        None, description="anomaly score now: score, p, time, top_metrics (see GET /v1/anomalies)"
    )
    failure_risk: dict | None = Field(
        None,
        description="failure risk as of the last scoring tick: risk (probability of "
        "failure within horizon_s), alarm, status, horizon_s, model_version, time, reasons "
        "(see GET /v1/failure-risk); null without an approved model",
    )
    part: dict | None = Field(
        None,
        description="the part in this slot now (GPUs, PSUs): uuid, serial, part_number, "
        "name, installed_at (see GET /v1/devices/{id}/parts); null when no identity was "
        "reported",
    )


class DeviceRefOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "sv1/h1/row1/rk101/n01/gpu0",
                    "device_class": "gpu",
                    "kind": "gpu",
                    "rack": "rk101",
                }
            ]
        }
    )

    device_id: str
    device_class: str
    kind: str
    rack: str = Field(description="rack name, or the hall / `facility` for shared equipment")


class RackOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rack": "rk101",
                    "hall": "h1",
                    "row": "row1",
                    "path": "sv1/h1/row1/rk101",
                    "gpu_max_temp_c": 71.2,
                    "gpu_mean_temp_c": 63.0,
                    "gpus_reporting": 64,
                    "gpus_total": 64,
                    "power_kw": 48.3,
                    "anomaly_score": None,
                    "failure_risk": None,
                }
            ]
        }
    )

    rack: str
    hall: str
    row: str
    path: str = Field(description="device id prefix of everything in the rack")
    gpu_max_temp_c: float | None
    gpu_mean_temp_c: float | None
    gpus_reporting: int
    gpus_total: int
    power_kw: float | None = Field(description="PSU input power, the rack's electrical draw")
    anomaly_score: float | None = Field(
        None, description="max over the rack's devices, 0..1; null until scoring runs"
    )
    failure_risk: float | None = Field(
        None, description="max over the rack's devices, 0..1; null until predicted"
    )

    @classmethod
    def of(cls, r: RackSummary) -> RackOut:
        return cls(
            rack=r.rack,
            hall=r.hall,
            row=r.row,
            path=r.path,
            gpu_max_temp_c=r.gpu_max_temp_c,
            gpu_mean_temp_c=r.gpu_mean_temp_c,
            gpus_reporting=r.gpus_reporting,
            gpus_total=r.gpus_total,
            power_kw=r.power_kw,
            anomaly_score=r.scores.get("anomaly_score"),
            failure_risk=r.scores.get("failure_risk"),
        )


class RackDetailOut(RackOut):
    devices: list[DeviceOut] = Field(description="every device in the rack, latest values")


class PuePoint(BaseModel):
    time: datetime
    value: float | None


class OverviewOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "site": "sv1",
                    "site_name": "Example AI hall",
                    "time": T0,
                    "pue": 1.2834,
                    "category": "PUE1",
                    "reason": None,
                    "facility_kw": 1540.2,
                    "it_kw": 1200.1,
                    "cooling_kw": 290.4,
                    "cooling_overhead": 0.242,
                    "other_kw": 49.7,
                    "step_s": 300,
                    "pue_history": [{"time": T0, "value": 1.2811}],
                }
            ]
        }
    )

    site: str = Field(description="site id")
    site_name: str
    time: datetime = Field(description="when the twin computed this (RFC 3339, UTC)")
    pue: float | None
    category: str | None
    reason: str | None = Field(description="why PUE is unknown, if it is")
    facility_kw: float | None
    it_kw: float | None = Field(description="IT power at the meter that sets the category")
    cooling_kw: float | None = Field(description="cooling plant sub-meter")
    cooling_overhead: float | None = Field(description="cooling power / IT power")
    other_kw: float | None = Field(description="facility - IT - cooling: losses, lighting")
    step_s: int
    pue_history: list[PuePoint] = Field(
        description="per bucket: mean facility power / mean IT power (the energy ratio "
        "over the bucket); empty buckets are absent"
    )


DeviceId = Annotated[
    str,
    Path(
        description="hierarchical device id, e.g. sv1/h1/row1/rk101/n01/gpu0",
        examples=["sv1/h1/row1/rk101/n01/gpu0"],
    ),
]


router = APIRouter(prefix="/v1", tags=["twin"])


def _refs(twin: Twin) -> list[DeviceRef]:
    return sorted(twin.known_devices.values(), key=lambda d: d.id)


def _snapshot(twin: Twin, live: LiveView | None) -> Snapshot:
    snap = live.fresh_snapshot() if live is not None else None
    if snap is None:  # no live loop (tests, tools) or it stalled: read the store now
        snap = LiveView(twin, EventBus()).compute()
    return snap


@router.get("/overview", response_model=OverviewOut, summary="Site overview for dashboards")
def overview(
    twin: TwinDep,
    live: LiveDep,
    hours: Annotated[float, Query(gt=0, le=168, description="history span")] = 24,
    step_s: Annotated[int, Query(ge=10, le=86400)] = 300,
) -> OverviewOut:
    snap = _snapshot(twin, live)
    p, pw = snap.pue, snap.power
    hist = _pue_history(twin, snap.time, hours, step_s)
    return OverviewOut(
        site=twin.site.site.id,
        site_name=twin.site.site.name or twin.site.site.id,
        time=utc(snap.time),
        pue=p.value,
        category=p.category,
        reason=p.reason,
        facility_kw=pw.facility_kw,
        it_kw=pw.it_kw,
        cooling_kw=pw.cooling_kw,
        cooling_overhead=(pw.cooling_kw / pw.it_kw)
        if pw.cooling_kw is not None and pw.it_kw
        else None,
        other_kw=_other_kw(pw.facility_kw, pw.it_kw, pw.cooling_kw),
        step_s=step_s,
        pue_history=hist,
    )


@router.get("/devices", response_model=Page[DeviceRefOut], summary="Devices of the site model")
def devices(
    twin: TwinDep,
    limit: Limit = 100,
    cursor: Cursor = None,
    rack: Annotated[str | None, Query(max_length=200)] = None,
    device_class: Annotated[str | None, Query(max_length=50)] = None,
) -> Page[DeviceRefOut]:
    items = [
        d
        for d in _refs(twin)
        if (rack is None or d.rack == rack)
        and (device_class is None or d.device_class == device_class)
    ]
    page = paginate(items, lambda d: d.id, limit, cursor, scope=f"devices|{rack}|{device_class}")
    return Page[DeviceRefOut](
        items=[
            DeviceRefOut(device_id=d.id, device_class=d.device_class, kind=d.kind, rack=d.rack)
            for d in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/devices/{device_id:path}",
    response_model=DeviceOut,
    responses=problem_responses(
        404, e404="unknown device id 'sv1/x': not in the site model and never reported"
    ),
    summary="Latest state of one device",
)
async def device(
    device_id: DeviceId,
    twin: TwinDep,
    live: LiveDep,
    anomaly: OptionalAnomalyDep,
    failure_risk: OptionalFailureRiskDep,
    parts: OptionalPartsDep,
) -> DeviceOut:
    """Latest value of every metric of one device, as of the last tick (≤ 1 s)."""
    now = now_naive_utc()
    snap = live.fresh_snapshot() if live is not None else None
    if snap is None or snap.latest is None:  # no live view: one query, off the loop
        readings = await run_in_threadpool(twin.device, device_id)
    else:
        readings = snap.latest.device(device_id)
    ref = twin.known_devices.get(device_id)
    if ref is None and not readings:
        raise ProblemError(
            404,
            f"unknown device id {device_id!r}: not in the site model and never reported",
            "not-found",
        )
    return DeviceOut(
        device_id=device_id,
        device_class=ref.device_class if ref else None,
        rack=ref.rack if ref else None,
        metrics=[LatestReading.of(x, now) for x in readings],
        anomaly=device_anomaly_state(anomaly, device_id),
        failure_risk=device_failure_state(failure_risk, device_id),
        part=device_part_state(parts, device_id),
    )


@router.get("/racks", response_model=Page[RackOut], summary="Rack summaries (heat map)")
def racks(
    twin: TwinDep,
    live: LiveDep,
    limit: Limit = 100,
    cursor: Cursor = None,
    hall: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[RackOut]:
    items = [x for x in _snapshot(twin, live).racks if hall is None or x.hall == hall]
    page = paginate(items, lambda x: x.path, limit, cursor, scope=f"racks|{hall}")
    return Page[RackOut](items=[RackOut.of(x) for x in page.items], next_cursor=page.next_cursor)


@router.get(
    "/racks/{rack}",
    response_model=RackDetailOut,
    responses=problem_responses(404, e404="unknown rack 'rk999'"),
    summary="One rack with the latest state of every device in it",
)
def rack_detail(
    twin: TwinDep,
    live: LiveDep,
    rack: Annotated[str, Path(max_length=100, examples=["rk101"])],
) -> RackDetailOut:
    if rack not in {rr.rack for rr in twin.site.racks()}:
        raise ProblemError(404, f"unknown rack {rack!r}", "not-found")
    summary = next(x for x in _snapshot(twin, live).racks if x.rack == rack)
    now = now_naive_utc()
    ids = [d.id for d in _refs(twin) if d.rack == rack]
    latest = twin.latest_for(ids)
    by_dev: dict[str, list[LatestReading]] = {i: [] for i in ids}
    for (dev, _m), reading in sorted(latest.items()):
        by_dev[dev].append(LatestReading.of(reading, now))
    devs = [
        DeviceOut(
            device_id=i,
            device_class=twin.known_devices[i].device_class,
            rack=rack,
            metrics=by_dev[i],
        )
        for i in ids
    ]
    return RackDetailOut(**RackOut.of(summary).model_dump(), devices=devs)


def _pue_history(twin: Twin, now: datetime, hours: float, step_s: int) -> list[PuePoint]:
    from domain.site import MeterRole

    site = twin.site
    fac = site.meter(MeterRole.facility_input)
    it = next(
        (
            site.meter(r)
            for r in (MeterRole.it_input, MeterRole.pdu_output, MeterRole.ups_output)
            if site.meter(r)
        ),
        None,
    )
    if fac is None or it is None:
        return []
    rows = (
        twin.store.cursor()
        .sql(
            """
        SELECT time_bucket(to_microseconds($step), read_time) AS bucket,
               avg(value) FILTER (WHERE device_id = $fac) AS fac,
               avg(value) FILTER (WHERE device_id = $it) AS it
        FROM samples
        WHERE device_id IN ($fac, $it) AND metric = 'power_kw'
          AND read_time >= $start AND read_time < $end
        GROUP BY bucket ORDER BY bucket
        """,
            params={
                "step": step_s * 1_000_000,
                "fac": site.meter_id(fac),
                "it": site.meter_id(it),
                "start": now - timedelta(hours=hours),
                "end": now + timedelta(seconds=1),
            },
        )
        .fetchall()
    )
    return [
        PuePoint(time=utc(b), value=(f / i) if f is not None and i else None) for b, f, i in rows
    ]


def _other_kw(facility: float | None, it: float | None, cooling: float | None) -> float | None:
    """Facility power not accounted for by IT and cooling (losses, lighting)."""
    if facility is None or it is None or cooling is None:
        return None
    return facility - it - cooling
