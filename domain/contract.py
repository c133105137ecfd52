"""Wire contract v1: what collectors put on Kafka and ingest accepts.

Kept dependency-light on purpose (pydantic + orjson only): every rack collector imports
this module, and nothing heavier may come with it. See docs/wire-contract.md.

A telemetry batch is columnar: one message carries one collector's readings for one
interval, as parallel arrays. That keeps the JSON small after compression and lets
ingest decode a whole batch into Arrow without touching individual samples.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    model_validator,
)

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
# Topics whose name says what they carry: a message on one of them must be of that kind
# (`wrong_topic`). Other topic names (a dedicated test or benchmark topic) carry any kind.
CONTRACT_TOPICS = frozenset({*ALL_TELEMETRY_TOPICS, EVENTS_TOPIC})


# issue 22: NVML at DCGM depth. One 0/1 metric `clock_event_<reason>` per NVML clock
# event reason (bit order of nvmlClocksEventReason*, as DCGM_CLOCKS_EVENT_REASON_*), and
# per-NVLink error counters `nvlink_l<N>_<counter>_errors_total` for links 0..17, as
# dcgm-exporter's DCGM_FI_DEV_NVLINK_{CRC_FLIT,CRC_DATA,REPLAY,RECOVERY}_ERROR_COUNT_L<N>.
GPU_CLOCK_EVENT_REASONS: Final = (
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
)
GPU_NVLINK_LINKS: Final = 18  # NVLink 4/5 GPUs (H100, B200) have 18 links
GPU_NVLINK_COUNTERS: Final = ("crc_flit", "crc_data", "replay", "recovery")
GPU_NVLINK_LINK_METRICS: Final = tuple(
    f"nvlink_l{n}_{c}_errors_total" for n in range(GPU_NVLINK_LINKS) for c in GPU_NVLINK_COUNTERS
)


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
        # issue 22: NVML at DCGM depth (dcgm-exporter field per metric:
        # collectors/sources/nvml/README.md)
        "power_limit_w": "W",  # nvmlDeviceGetPowerManagementLimit
        "power_limit_default_w": "W",
        "power_limit_enforced_w": "W",  # after every limiter (the one in force)
        "power_violation_us": "us",  # time held below clocks by the power cap, counter
        "thermal_violation_us": "us",  # ... by thermal limits, counter
        **{f"clock_event_{r}": "bool" for r in GPU_CLOCK_EVENT_REASONS},
        "row_remap_pending": "bool",  # a remap waits for the next GPU reset
        "row_remap_failure": "bool",  # no spare row left: replace the GPU
        "pcie_tx_bytes_per_s": "By/s",
        "pcie_rx_bytes_per_s": "By/s",
        "mig_mode": "bool",  # MIG enabled (current mode, not the pending one)
        "mig_devices": "1",  # MIG devices; each reports as <gpu id>/mig<GPU instance id>
        **{m: "1" for m in GPU_NVLINK_LINK_METRICS},
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
        # issue 22: Redfish (fans of a cooling chassis, e.g. a CDU or rear-door unit)
        "fan_speed_pct": "%",
        "fan_speed_rpm": "rpm",
        # issue 19 (opt-live): setpoints the CDU controller runs at (the active, ramped value)
        "supply_setpoint_c": "Cel",  # secondary (TCS) supply temperature setpoint
        "dp_setpoint_kpa": "kPa",  # secondary loop differential-pressure setpoint
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
        # UPS and its battery (UPS-MIB, RFC 1628; issue 22)
        "on_battery": "bool",  # upsOutputSource == battery(5)
        "battery_status": "enum",  # upsBatteryStatus: 1 unknown, 2 normal, 3 low, 4 depleted
        "battery_charge_pct": "%",  # upsEstimatedChargeRemaining
        "battery_runtime_s": "s",  # upsEstimatedMinutesRemaining x 60
        "battery_time_on_battery_s": "s",  # upsSecondsOnBattery (0 on utility)
        "battery_voltage_v": "V",  # upsBatteryVoltage (MIB unit 0.1 V, converted)
        "battery_current_a": "A",  # upsBatteryCurrent; negative while charging
        "battery_temp_c": "Cel",  # upsBatteryTemperature
        # upsTestResultsSummary: 1 donePass, 2 doneWarning, 3 doneError, 4 aborted,
        # 5 inProgress, 6 noTestsInitiated
        "battery_test_result": "enum",
        "output_load_pct": "%",  # upsOutputPercentLoad: may exceed 100 on overload
        "input_line_bads_total": "1",  # upsInputLineBads: utility out of tolerance, counter
        "alarms_present": "1",  # upsAlarmsPresent
        "outlet_on": "bool",  # a switched PDU outlet's state
        # issue 22: modbus (coils / discrete inputs)
        "breaker_closed": "bool",  # a breaker's auxiliary contact on a meter's status input
        # issue 22: Redfish (server and PSU fans whose BMC reports RPM, not percent)
        "fan_speed_rpm": "rpm",
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
        # issue 22: modbus (coils / discrete inputs)
        "fan_running": "bool",  # 1 while the unit's fans run (status bit)
        "alarm_active": "bool",  # the unit's common (summary) alarm bit
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
        # issue 22: BACnet
        "chiller_running": "bool",  # a chiller's run status (binary-input present-value)
        # issue 19 (opt-live): chilled-water plant mode and state
        "economizer_enabled": "bool",  # waterside economizer allowed (1) or locked out (0)
        "chillers_running": "1",  # chillers staged on
        "chw_pump_speed_pct": "%",  # primary chilled-water pumps, share of design flow
        "cw_pump_speed_pct": "%",  # condenser-water pumps, share of design flow
        "tower_fan_speed_pct": "%",  # cooling-tower fans
    },
}


# Monotonic counters (reset only by a driver reload, a power cycle or a meter reset):
# rollups keep their increase per bucket and the anomaly scorer works on their rates.
# The one list ingest and the twin share.
COUNTER_METRICS: Final = frozenset(
    {
        "energy_mj",
        "energy_kwh",
        "ecc_corrected_total",
        "ecc_uncorrected_total",
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
        "pcie_replay_total",
        "nvlink_errors_total",
        *GPU_NVLINK_LINK_METRICS,
        "power_violation_us",
        "thermal_violation_us",
        "input_line_bads_total",
    }
)


def known_metric(kind: Kind | str, metric: str) -> bool:
    return metric in METRICS[Kind(kind)]


# Plausible range per metric, (lo, hi) inclusive, in the metric's unit. A reading outside
# is a sensor fault, an unset sentinel (-127, 65535, 2**64-1) or a unit mix-up, not data:
# it is dead-lettered as `out_of_range`. Bounds are what real devices respect with wide
# margin; they are not alarm limits. Same keys as METRICS (tests/test_contract.py).
_TEMP = (-50.0, 200.0)
_PCT = (0.0, 100.0)
_SPEED_PCT = (0.0, 200.0)  # NVML: fan speed "may exceed 100%"; VFDs run pumps above nominal
_BOOL = (0.0, 1.0)
_U64 = (0.0, 2.0**64)  # NVML counters and bitmasks are unsigned 64-bit
_KPA = (-200.0, 10_000.0)  # gauge pressure may be below atmospheric (suction side)
_FLOW_LPM = (-1.0e6, 1.0e6)  # bidirectional meters report reverse flow as negative
_HEAT_KW = (-1.0e4, 1.0e6)  # computed from flow x dT: sensor offsets go negative at no load
_SITE_KW = (0.0, 1.0e6)  # up to 1 GW
_SITE_W = (0.0, 1.0e9)
_ENERGY_KWH = (0.0, 1.0e11)  # a 1 GW site for 11 years; meters roll over far below
_RPM = (0.0, 100_000.0)  # issue 22: Redfish; small server fans reach ~30k rpm
RANGES: dict[Kind, dict[str, tuple[float, float]]] = {
    Kind.gpu: {
        "gpu_temp_c": _TEMP,
        "mem_temp_c": _TEMP,
        "power_w": (0.0, 5_000.0),  # one GPU: 700 W (H100) to 1.4 kW (B300)
        "energy_mj": (0.0, 1.0e16),  # 10 kW for 30 years
        "util_gpu_pct": _PCT,
        "util_mem_pct": _PCT,
        "mem_used_bytes": (0.0, 2.0**50),  # 1 PiB; GPUs carry < 300 GB
        "sm_clock_mhz": (0.0, 100_000.0),
        "mem_clock_mhz": (0.0, 100_000.0),
        "throttle_reasons": _U64,
        "fan_speed_pct": _SPEED_PCT,
        "ecc_corrected_total": _U64,
        "ecc_uncorrected_total": _U64,
        "remapped_rows_correctable": _U64,
        "remapped_rows_uncorrectable": _U64,
        "pcie_replay_total": _U64,
        "nvlink_errors_total": _U64,
        # issue 22: NVML at DCGM depth
        "power_limit_w": (0.0, 5_000.0),
        "power_limit_default_w": (0.0, 5_000.0),
        "power_limit_enforced_w": (0.0, 5_000.0),
        "power_violation_us": _U64,
        "thermal_violation_us": _U64,
        **{f"clock_event_{r}": _BOOL for r in GPU_CLOCK_EVENT_REASONS},
        "row_remap_pending": _BOOL,
        "row_remap_failure": _BOOL,
        "pcie_tx_bytes_per_s": (0.0, 1.0e12),  # PCIe 6.0 x16 moves ~128 GB/s
        "pcie_rx_bytes_per_s": (0.0, 1.0e12),
        "mig_mode": _BOOL,
        "mig_devices": (0.0, 64.0),  # 7 on A100/H100/B200
        **{m: _U64 for m in GPU_NVLINK_LINK_METRICS},
    },
    Kind.cooling: {
        "supply_temp_c": _TEMP,
        "return_temp_c": _TEMP,
        "primary_supply_temp_c": _TEMP,
        "primary_return_temp_c": _TEMP,
        "flow_lpm": _FLOW_LPM,
        "primary_flow_lpm": _FLOW_LPM,
        "pump_speed_pct": _SPEED_PCT,
        "diff_pressure_kpa": _KPA,
        "supply_pressure_kpa": _KPA,
        "return_pressure_kpa": _KPA,
        "pump_power_w": (0.0, 1.0e7),
        "heat_removed_kw": _HEAT_KW,
        "reservoir_level_pct": (0.0, 150.0),  # an overfilled reservoir reads above 100
        "filter_dp_kpa": _KPA,
        "leak_detected": _BOOL,
        "coolant_temp_c": _TEMP,
        "temp_c": _TEMP,
        "pressure_kpa": _KPA,
        "pump_running": _BOOL,
        # issue 22: Redfish
        "fan_speed_pct": _SPEED_PCT,
        "fan_speed_rpm": _RPM,
        # issue 19 (opt-live)
        "supply_setpoint_c": _TEMP,
        "dp_setpoint_kpa": _KPA,
    },
    Kind.power: {
        "input_power_w": _SITE_W,
        "output_power_w": _SITE_W,
        "input_voltage_v": (-1_000.0, 50_000.0),  # DC plants may report -48 V; MV metering
        "input_current_a": (0.0, 1.0e5),
        "output_voltage_v": (-1_000.0, 50_000.0),
        "output_current_a": (0.0, 1.0e5),
        "efficiency_pct": _PCT,
        "temp_c": _TEMP,
        "energy_kwh": _ENERGY_KWH,
        "power_w": _SITE_W,
        "current_a": (0.0, 1.0e5),
        "voltage_v": (-1_000.0, 50_000.0),
        "power_factor": (-1.0, 1.0),  # meters sign it: leading negative, lagging positive
        "frequency_hz": (0.0, 1_000.0),  # 0 on outage; 400 Hz systems exist
        "fan_speed_pct": _SPEED_PCT,
        "on_battery": _BOOL,
        "battery_status": (1.0, 4.0),
        "battery_charge_pct": _PCT,
        "battery_runtime_s": (0.0, 1.0e7),  # MIB: minutes as INTEGER, ~2**31 would be absurd
        "battery_time_on_battery_s": (0.0, 1.0e8),
        "battery_voltage_v": (0.0, 5_000.0),
        "battery_current_a": (-1.0e5, 1.0e5),
        "battery_temp_c": _TEMP,
        "battery_test_result": (1.0, 6.0),
        "output_load_pct": (0.0, 1_000.0),
        "input_line_bads_total": _U64,
        "alarms_present": (0.0, 1.0e4),
        "outlet_on": _BOOL,
        # issue 22: modbus
        "breaker_closed": _BOOL,
        # issue 22: Redfish
        "fan_speed_rpm": _RPM,
    },
    Kind.air: {
        "supply_air_temp_c": _TEMP,
        "return_air_temp_c": _TEMP,
        "supply_air_setpoint_c": _TEMP,
        "fan_speed_pct": _SPEED_PCT,
        "fan_power_w": (0.0, 1.0e7),
        "airflow_m3h": (0.0, 1.0e7),
        "humidity_pct": _PCT,
        "chw_valve_pct": _PCT,
        "cooling_kw": _HEAT_KW,
        "power_w": (0.0, 1.0e7),
        # issue 22: modbus
        "fan_running": _BOOL,
        "alarm_active": _BOOL,
    },
    Kind.facility: {
        "power_kw": _SITE_KW,
        "energy_kwh": _ENERGY_KWH,
        "chw_supply_temp_c": _TEMP,
        "chw_return_temp_c": _TEMP,
        "chw_supply_setpoint_c": _TEMP,
        "cw_supply_temp_c": _TEMP,
        "cw_supply_setpoint_c": _TEMP,
        "chiller_power_kw": _SITE_KW,
        "tower_power_kw": _SITE_KW,
        "pump_power_kw": _SITE_KW,
        "cooling_load_kw": _HEAT_KW,
        "outdoor_drybulb_c": (-100.0, 80.0),  # records: -89.2 and 56.7 C
        "outdoor_wetbulb_c": (-100.0, 80.0),
        # issue 22: BACnet
        "chiller_running": _BOOL,
        # issue 19 (opt-live)
        "economizer_enabled": _BOOL,
        "chillers_running": (0.0, 1_000.0),
        "chw_pump_speed_pct": _SPEED_PCT,
        "cw_pump_speed_pct": _SPEED_PCT,
        "tower_fan_speed_pct": _SPEED_PCT,
    },
}

# Length bounds (characters), so no field can carry megabytes into memory and storage.
MAX_NAME_CHARS: Final = 128  # batch_id, collector, site, rack
MAX_DEVICE_ID_CHARS: Final = 256
MAX_EVENT_MESSAGE_CHARS: Final = 4096
MAX_ATTR_CHARS: Final = 1024
# No string may hold C0/C1 control characters or DEL (a NUL in an id breaks every tool
# downstream). The same pattern runs in pydantic (Rust regex) and DuckDB (RE2).
CONTROL_CHARS: Final = r"[\x00-\x1f\x7f-\x9f]"
_NO_CONTROL = rf"^[^{CONTROL_CHARS[1:-1]}]*$"
_CONTROL_RE = re.compile(CONTROL_CHARS)
# read_time_ms must be an integer JSON number in this range: every value in it is exact
# as a double, which is how the bulk reader checks integrality.
MAX_ABS_TIME_MS: Final = 2**53
MAX_INT64: Final = 2**63 - 1
FACILITY_KEY: Final = "facility"


def device_in_rack(device_id: str, rack: str) -> bool:
    """Does the device travel under this Kafka key? Ids are site/hall/row/rack/node/...:
    the key is one of the id's segments after the site (its rack, or its hall for a hall
    collector); `facility` also carries site- and hall-level ids (fewer than 5 segments:
    meters, plant, UPS, CDUs, CRAHs)."""
    parts = device_id.split("/")
    return rack in parts[1:] or (rack == FACILITY_KEY and len(parts) < 5)


def device_id_problem(device_id: str, site: str, rack: str) -> str | None:
    """Why a sample's device id is refused (`bad_device_id`), or None."""
    if len(device_id) > MAX_DEVICE_ID_CHARS:
        return f"longer than {MAX_DEVICE_ID_CHARS} characters"
    if _CONTROL_RE.search(device_id):
        return "holds control characters"
    if not device_id.startswith(site + "/"):
        return f"does not start with the batch's site {site}/"
    if not device_in_rack(device_id, rack):
        return f"does not belong to the message's rack {rack}"
    return None


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=_NO_CONTROL)]
ReadTime = Annotated[int, Field(ge=-MAX_ABS_TIME_MS, le=MAX_ABS_TIME_MS)]
# Envelope integers are strict (a string "7" is refused, as the bulk reader refuses it);
# sample arrays stay lax like the bulk reader's typed arrays ("1.5" and true are numbers).
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT64)]
Int64 = Annotated[StrictInt, Field(ge=-MAX_INT64, le=MAX_INT64)]


class SampleColumns(BaseModel):
    """Parallel arrays, one entry per sample. `read_time_ms` is when the device was read
    (Unix epoch milliseconds, UTC), not when the batch was sent. Per-sample rules (finite,
    known metric, plausible range, device id) are `sample_rejections`, not validators:
    ingest keeps the valid samples of a batch, so they are counted, not raised."""

    model_config = ConfigDict(extra="forbid")

    device_id: list[str]
    metric: list[str]
    value: list[float]
    read_time_ms: list[ReadTime]

    @model_validator(mode="after")
    def _same_length(self) -> SampleColumns:
        n = len(self.device_id)
        if not (len(self.metric) == len(self.value) == len(self.read_time_ms) == n):
            raise ValueError(
                "sample columns differ in length: "
                f"device_id={n} metric={len(self.metric)} value={len(self.value)} "
                f"read_time_ms={len(self.read_time_ms)}"
            )
        return self

    def __len__(self) -> int:
        return len(self.device_id)


class TelemetryBatch(BaseModel):
    """One collector's readings for one interval. Kafka key = `rack`."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = CONTRACT_VERSION
    type: Literal["telemetry"] = "telemetry"
    batch_id: Name = Field(default_factory=lambda: uuid.uuid4().hex)
    collector: Name = Field(description="collector instance name")
    kind: Kind
    site: Name
    rack: Name = Field(description="partition key: rack id, hall id or `facility`")
    seq: Count = Field(description="per-collector sequence number, for ordering/replay")
    interval_s: Annotated[StrictFloat, Field(gt=0)]
    sent_time_ms: Int64
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
    inventory = "inventory"  # issue 22: a device's identity (serial, UUID, part number), on change
    # issue 21: identity. Written by the twin (twin/parts.py) when a slot's part changes
    part_swapped = "part_swapped"


Severity = Literal["info", "warning", "critical"]
AttrValue = (
    Annotated[str, Field(max_length=MAX_ATTR_CHARS, pattern=_NO_CONTROL)]
    | int
    | float
    | bool
    | None
)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[
        str, Field(min_length=1, max_length=MAX_DEVICE_ID_CHARS, pattern=_NO_CONTROL)
    ]
    kind: EventKind
    severity: Severity = "warning"
    read_time_ms: Int64
    # free text, so newlines and tabs are allowed; its length is bounded
    message: Annotated[str, Field(max_length=MAX_EVENT_MESSAGE_CHARS)] = ""
    attrs: Annotated[dict[Name, AttrValue], Field(max_length=64)] = Field(default_factory=dict)


class EventBatch(BaseModel):
    """Discrete events (XID, leak, pump/PSU failure, device lost) on the events topic."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = CONTRACT_VERSION
    type: Literal["events"] = "events"
    batch_id: Name = Field(default_factory=lambda: uuid.uuid4().hex)
    collector: Name
    site: Name
    rack: Name
    seq: Count
    sent_time_ms: Int64
    events: Annotated[list[Event], Field(min_length=1, max_length=10_000)]


Envelope = TelemetryBatch | EventBatch


class ContractError(ValueError):
    """A message that does not satisfy the contract; `reason` is a short machine tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Per-sample rules in precedence order: a batch whose samples break several rules is
# dead-lettered under the first that fired. Ingest's vectorized path applies the same
# rules in the same order (ingest/validate.py SAMPLE_REASONS adds its policy-only ones).
SAMPLE_RULES = ("non_finite", "timestamp_skew", "unknown_metric", "out_of_range", "bad_device_id")


def topic_for(batch: Envelope) -> str:
    return telemetry_topic(batch.kind) if isinstance(batch, TelemetryBatch) else EVENTS_TOPIC


def encode(batch: Envelope) -> bytes:
    return orjson.dumps(batch.model_dump(mode="json"))


def headers_for(batch: Envelope) -> list[tuple[str, bytes]]:
    return [
        (HEADER_VERSION, str(batch.version).encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
        ("dctwin-batch-id", batch.batch_id.encode()),
    ]


def sample_rejections(
    batch: TelemetryBatch, read_window_ms: tuple[int, int] | None = None
) -> tuple[list[tuple[str, int]], str]:
    """(rule, samples that break it) for each rule in SAMPLE_RULES order, a sample counted
    under the first rule it breaks, and a description of the first bad sample.
    `timestamp_skew` only with a read-time window."""
    counts = dict.fromkeys(SAMPLE_RULES, 0)
    first = ""
    ranges = RANGES[batch.kind]
    s = batch.samples
    lo_t, hi_t = read_window_ms or (-MAX_ABS_TIME_MS, MAX_ABS_TIME_MS)
    for i, (device, metric, value, t) in enumerate(
        zip(s.device_id, s.metric, s.value, s.read_time_ms, strict=True)
    ):
        rule: str | None = None
        if not math.isfinite(value):
            rule = "non_finite"
        elif not lo_t <= t <= hi_t:
            rule = "timestamp_skew"
        elif metric not in ranges:
            rule = "unknown_metric"
        elif not ranges[metric][0] <= value <= ranges[metric][1]:
            rule = "out_of_range"
        elif device_id_problem(device, batch.site, batch.rack):
            rule = "bad_device_id"
        if rule is not None:
            counts[rule] += 1
            first = first or f"sample {i} ({device[:80]!r}, {metric[:80]!r}, {value!r}): {rule}"
    return list(counts.items()), first


def decode(
    raw: bytes,
    *,
    topic: str | None = None,
    key: bytes | None = None,
    read_window_ms: tuple[int, int] | None = None,
) -> Envelope:
    """Parse and validate one message: the reference for ingest's bulk path, which must
    give the same verdict and reason (tests/test_fastpath_contract_property.py).

    Checks run in this order, the first failure raising ContractError(reason): not_utf8,
    invalid_json, duplicate_key, invalid_envelope (not an object), unknown_version,
    invalid_envelope (type), schema, wrong_topic and wrong_key (when `topic` / `key` are
    given), empty_batch, then the per-sample rules (SAMPLE_RULES; timestamp_skew only
    with `read_window_ms`).
    """
    doc = _parse(raw)
    if not isinstance(doc, dict):
        raise ContractError("invalid_envelope", "message is not a JSON object")
    version = doc.get("version")
    numeric = isinstance(version, int | float) and not isinstance(version, bool)
    if not numeric or version not in SUPPORTED_VERSIONS:
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
    if topic in CONTRACT_TOPICS and topic != topic_for(batch):
        raise ContractError(
            "wrong_topic", f"a {_what(batch)} belongs on {topic_for(batch)}, not on {topic}"
        )
    if key is not None and key != batch.rack.encode():
        raise ContractError(
            "wrong_key", f"Kafka key {key[:80]!r} is not the message's rack {batch.rack!r}"
        )
    if isinstance(batch, TelemetryBatch):
        if len(batch.samples) == 0:
            raise ContractError("empty_batch", "telemetry batch carries no samples")
        counts, first = sample_rejections(batch, read_window_ms)
        fired = [(r, n) for r, n in counts if n]
        if fired:
            parts = " ".join(f"{r}={n}" for r, n in fired)
            n_bad = sum(n for _, n in fired)
            raise ContractError(
                fired[0][0], f"{n_bad} of {len(batch.samples)} samples rejected: {parts}; {first}"
            )
    return batch


def _what(batch: Envelope) -> str:
    return f"{batch.kind.value} batch" if isinstance(batch, TelemetryBatch) else "events batch"


def _parse(raw: bytes) -> Any:
    """JSON from UTF-8 bytes; duplicate keys refused; NaN/Infinity literals read as
    numbers (they are not JSON, but the bulk reader reads them, and the per-sample rule
    `non_finite` names them)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("not_utf8", f"message is not UTF-8: {exc}") from exc
    try:
        orjson.loads(raw)
        strict_error: orjson.JSONDecodeError | None = None
    except orjson.JSONDecodeError as exc:
        strict_error = exc
    duplicates: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    duplicates.append(k)
                seen.add(k)
        return out

    try:  # orjson keeps the last of duplicate keys silently; the stdlib parser can tell
        doc = json.loads(text, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError) as exc:
        raise ContractError("invalid_json", str(strict_error or exc)) from exc
    if strict_error is not None:
        try:  # refused by orjson for more than NaN/Infinity (e.g. a lone surrogate)
            orjson.dumps(doc)
        except orjson.JSONEncodeError as exc:
            raise ContractError("invalid_json", str(strict_error)) from exc
        if not _has_non_finite(doc):
            raise ContractError("invalid_json", str(strict_error))
    if duplicates:
        raise ContractError("duplicate_key", f"key {duplicates[0]!r} appears more than once")
    return doc


def _has_non_finite(doc: Any) -> bool:
    walk: list[Any] = [doc]
    while walk:
        x = walk.pop()
        if isinstance(x, float) and not math.isfinite(x):
            return True
        if isinstance(x, dict):
            walk.extend(x.values())
        elif isinstance(x, list):
            walk.extend(x)
    return False


def _short_validation_error(exc: ValueError) -> str:
    errors: Callable[[], list[dict[str, Any]]] | None = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg')}")
        return "; ".join(parts)
    return str(exc)
