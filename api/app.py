"""FastAPI application for NOC tools."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from api.routes_alerts import router as alerts_router
from api.routes_failure import router_for as failure_router_for
from api.routes_twin import twin_router
from twin.pue import MeterReading
from twin.state import Twin


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


class ReadingOut(BaseModel):
    device_id: str
    metric: str
    value: float
    read_time: datetime = Field(description="when the device was read (RFC 3339, UTC)")
    age_s: float

    @classmethod
    def of(cls, r: MeterReading, now: datetime) -> ReadingOut:
        return cls(device_id=r.device_id, metric=r.metric, value=r.value,
                   read_time=_utc(r.read_time), age_s=round(r.age_s(now), 3))


class DeviceOut(BaseModel):
    device_id: str
    device_class: str | None
    metrics: list[ReadingOut]


def create_app(twin: Twin, health=None) -> FastAPI:
    app = FastAPI(title="dctwin", version="0.1.0",
                  description="Digital-twin monitoring API for AI data centers")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **(health() if health else {})}

    app.include_router(twin_router(twin))  # topology, pue, heat balance, rollups, series

    @app.get("/v1/devices/{device_id:path}", response_model=DeviceOut)
    def device(device_id: str) -> DeviceOut:
        now = datetime.now(UTC).replace(tzinfo=None)
        ref = twin.known_devices.get(device_id)
        readings = twin.device(device_id)
        if ref is None and not readings:
            raise HTTPException(404, f"unknown device id {device_id!r}: not in the site model "
                                     "and never reported")
        return DeviceOut(device_id=device_id, device_class=ref.device_class if ref else None,
                         metrics=[ReadingOut.of(r, now) for r in readings])

    app.include_router(alerts_router)  # alerts, silences, rules, receivers (503 w/o engine)
    app.include_router(failure_router_for(twin))  # failure risk per component
    return app
