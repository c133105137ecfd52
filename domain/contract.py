"""Wire contract v1: what collectors put on Kafka and ingest accepts.

Kept dependency-light on purpose (pydantic + orjson only): every rack collector imports
this module, and nothing heavier may come with it. See docs/wire-contract.md.

A telemetry batch is columnar: one message carries one collector's readings for one
interval, as parallel arrays. That keeps the JSON small after compression and lets
ingest decode a whole batch into Arrow without touching individual samples.
"""

from __future__ import annotations

import math
import uuid
from enum import StrEnum
from typing import Annotated, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

CONTRACT_VERSION: Final = 1
SUPPORTED_VERSIONS = frozenset({CONTRACT_VERSION})

HEADER_VERSION = "dctwin-contract-version"
HEADER_CONTENT_TYPE = "content-type"
CONTENT_TYPE = "application/json"


class Kind(StrEnum):
    """Telemetry family; each has its own topic so consumers can subscribe selectively."""

    gpu = "gpu"
    cooling = "cooling"
    power = "power"
    air = "air"
    facility = "facility"


TELEMETRY_TOPIC_PREFIX = "telemetry."
EVENTS_TOPIC = "events"
DEAD_LETTER_TOPIC = "deadletter"


def telemetry_topic(kind: Kind | str) -> str:
    return f"{TELEMETRY_TOPIC_PREFIX}{Kind(kind).value}"


ALL_TELEMETRY_TOPICS = tuple(telemetry_topic(k) for k in Kind)


# Known metrics: name -> unit. Names carry their unit so that a number is never read in
# the wrong one. Ingest rejects names not listed here for the batch's kind.
METRICS: dict[Kind, dict[str, str]] = {
    Kind.gpu: {
        "gpu_temp_c": "Cel",
        "mem_temp_c": "Cel",
        "power_w": "W",
        "energy_mj": "mJ",  # NVML total-energy counter since driver load
        "util_gpu_pct": "%",
        "util_mem_pct": "%",
        "mem_used_bytes": "By",
        "sm_clock_mhz": "MHz",
        "mem_clock_mhz": "MHz",
        "throttle_reasons": "bitmask",
        "fan_speed_pct": "%",
        "ecc_corrected_total": "1",
        "ecc_uncorrected_total": "1",
        "remapped_rows_correctable": "1",
        "remapped_rows_uncorrectable": "1",
        "pcie_replay_total": "1",
        "nvlink_errors_total": "1",
    },
    Kind.cooling: {
        "supply_temp_c": "Cel",
        "return_temp_c": "Cel",
        "primary_supply_temp_c": "Cel",
        "primary_return_temp_c": "Cel",
        "flow_lpm": "L/min",
        "primary_flow_lpm": "L/min",
        "pump_speed_pct": "%",
        "diff_pressure_kpa": "kPa",
        "supply_pressure_kpa": "kPa",
        "return_pressure_kpa": "kPa",
        "pump_power_w": "W",
        "heat_removed_kw": "kW",
        "reservoir_level_pct": "%",
        "filter_dp_kpa": "kPa",
        "leak_detected": "bool",
        "coolant_temp_c": "Cel",
        # Redfish readings that need a home (see docs/collectors.md)
        "temp_c": "Cel",  # a non-coolant temperature on cooling equipment (cabinet, controller)
        "pressure_kpa": "kPa",  # a liquid pressure sensor not tied to supply/return
        "pump_running": "bool",  # 1 while a pump is enabled and not failed
    },
    Kind.power: {
        "input_power_w": "W",
        "output_power_w": "W",
        "input_voltage_v": "V",
        "input_current_a": "A",
        "output_voltage_v": "V",
        "output_current_a": "A",
        "efficiency_pct": "%",
        "temp_c": "Cel",
        "energy_kwh": "kWh",
        "power_w": "W",
        "current_a": "A",
        "voltage_v": "V",
        "power_factor": "1",
        "frequency_hz": "Hz",
        "fan_speed_pct": "%",  # PSU / power-shelf fan
    },
    Kind.air: {
        "supply_air_temp_c": "Cel",
        "return_air_temp_c": "Cel",
        "supply_air_setpoint_c": "Cel",
        "fan_speed_pct": "%",
        "fan_power_w": "W",
        "airflow_m3h": "m3/h",
        "humidity_pct": "%",
        "chw_valve_pct": "%",
        "cooling_kw": "kW",
        "power_w": "W",
    },
    Kind.facility: {
        "power_kw": "kW",
        "energy_kwh": "kWh",  # meter register: monotonic except on meter reset
        "chw_supply_temp_c": "Cel",
        "chw_return_temp_c": "Cel",
        "chw_supply_setpoint_c": "Cel",
        "cw_supply_temp_c": "Cel",
        "cw_supply_setpoint_c": "Cel",
        "chiller_power_kw": "kW",
        "tower_power_kw": "kW",
        "pump_power_kw": "kW",
        "cooling_load_kw": "kW",
        "outdoor_drybulb_c": "Cel",
        "outdoor_wetbulb_c": "Cel",
    },
}


def known_metric(kind: Kind | str, metric: str) -> bool:
    return metric in METRICS[Kind(kind)]


class SampleColumns(BaseModel):
    """Parallel arrays, one entry per sample. `read_time_ms` is when the device was read
    (Unix epoch milliseconds, UTC), not when the batch was sent."""

    model_config = ConfigDict(extra="forbid")

    device_id: list[str]
    metric: list[str]
    value: list[float]
    read_time_ms: list[int]

    @model_validator(mode="after")
    def _same_length_and_finite(self) -> SampleColumns:
        n = len(self.device_id)
        if not (len(self.metric) == len(self.value) == len(self.read_time_ms) == n):
            raise ValueError(
                "sample columns differ in length: "
                f"device_id={n} metric={len(self.metric)} value={len(self.value)} "
                f"read_time_ms={len(self.read_time_ms)}"
            )
        for i, v in enumerate(self.value):
            if not math.isfinite(v):
                raise ValueError(f"value[{i}] is not finite ({v!r})")
        return self

    def __len__(self) -> int:
        return len(self.device_id)


class TelemetryBatch(BaseModel):
    """One collector's readings for one interval. Kafka key = `rack`."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = CONTRACT_VERSION
    type: Literal["telemetry"] = "telemetry"
    batch_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    collector: str = Field(min_length=1, description="collector instance name")
    kind: Kind
    site: str = Field(min_length=1)
    rack: str = Field(min_length=1, description="partition key: rack id, or a facility zone")
    seq: int = Field(ge=0, description="per-collector sequence number, for ordering/replay")
    interval_s: float = Field(gt=0)
    sent_time_ms: int
    samples: SampleColumns


class EventKind(StrEnum):
    xid = "xid"
    leak_detected = "leak_detected"
    pump_failed = "pump_failed"
    psu_fault = "psu_fault"
    fan_failed = "fan_failed"
    device_lost = "device_lost"
    health_changed = "health_changed"
    source_error = "source_error"
    spool_dropped = "spool_dropped"


Severity = Literal["info", "warning", "critical"]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(min_length=1)
    kind: EventKind
    severity: Severity = "warning"
    read_time_ms: int
    message: str = ""
    attrs: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class EventBatch(BaseModel):
    """Discrete events (XID, leak, pump/PSU failure, device lost) on the events topic."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = CONTRACT_VERSION
    type: Literal["events"] = "events"
    batch_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    collector: str = Field(min_length=1)
    site: str = Field(min_length=1)
    rack: str = Field(min_length=1)
    seq: int = Field(ge=0)
    sent_time_ms: int
    events: Annotated[list[Event], Field(min_length=1)]


Envelope = TelemetryBatch | EventBatch


class ContractError(ValueError):
    """A message that does not satisfy the contract; `reason` is a short machine tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(batch: Envelope) -> bytes:
    return orjson.dumps(batch.model_dump(mode="json"))


def headers_for(batch: Envelope) -> list[tuple[str, bytes]]:
    return [
        (HEADER_VERSION, str(batch.version).encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
        ("dctwin-batch-id", batch.batch_id.encode()),
    ]


def decode(raw: bytes) -> Envelope:
    """Parse and validate one message. Raises ContractError with a reason tag."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError("invalid_json", str(exc)) from exc
    if not isinstance(doc, dict):
        raise ContractError("invalid_envelope", "message is not a JSON object")
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise ContractError(
            "unknown_version",
            f"contract version {version!r} is not supported (supported: "
            f"{sorted(SUPPORTED_VERSIONS)})",
        )
    kind = doc.get("type")
    model: type[TelemetryBatch] | type[EventBatch]
    if kind == "telemetry":
        model = TelemetryBatch
    elif kind == "events":
        model = EventBatch
    else:
        raise ContractError("invalid_envelope", f"unknown message type {kind!r}")
    try:
        batch = model.model_validate(doc)
    except ValueError as exc:
        raise ContractError("schema", _short_validation_error(exc)) from exc
    if isinstance(batch, TelemetryBatch):
        unknown = sorted({m for m in batch.samples.metric if not known_metric(batch.kind, m)})
        if unknown:
            raise ContractError(
                "unknown_metric", f"metrics not defined for kind {batch.kind.value}: {unknown[:5]}"
            )
    return batch


def _short_validation_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg')}")
        return "; ".join(parts)
    return str(exc)
