"""How Redfish resources become contract metrics and events (tables for `source.py`).

Pure functions over parsed JSON: no HTTP here, so the mapping can be read and tested on
its own. A resource is dispatched on its `@odata.type` (e.g. `#Pump.v1_2_0.Pump` -> `Pump`).
Properties are Redfish "excerpts" (`{"Reading": 42, "DataSourceUri": ...}`); the value sent
is `Reading` exactly as the service reported it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domain.contract import EventKind, Kind, Severity

# Placeholder for "the kind of whatever owns this resource" (a CDU's cabinet temperature is
# cooling, a server's is power); resolved by the walker.
OWNER = "owner"

# resource type -> [(property, field inside the excerpt, kind, metric)]
PROPERTIES: dict[str, list[tuple[str, str, Kind | str, str]]] = {
    "PowerSupplyMetrics": [
        ("InputPowerWatts", "Reading", Kind.power, "input_power_w"),
        ("OutputPowerWatts", "Reading", Kind.power, "output_power_w"),
        ("InputVoltage", "Reading", Kind.power, "input_voltage_v"),
        ("InputCurrentAmps", "Reading", Kind.power, "input_current_a"),
        ("EnergykWh", "Reading", Kind.power, "energy_kwh"),
        ("FrequencyHz", "Reading", Kind.power, "frequency_hz"),
        ("TemperatureCelsius", "Reading", Kind.power, "temp_c"),
        ("FanSpeedPercent", "Reading", Kind.power, "fan_speed_pct"),
    ],
    "CoolantConnector": [
        ("FlowLitersPerMinute", "Reading", Kind.cooling, "flow_lpm"),
        ("SupplyTemperatureCelsius", "Reading", Kind.cooling, "supply_temp_c"),
        ("ReturnTemperatureCelsius", "Reading", Kind.cooling, "return_temp_c"),
        ("SupplyPressurekPa", "Reading", Kind.cooling, "supply_pressure_kpa"),
        ("ReturnPressurekPa", "Reading", Kind.cooling, "return_pressure_kpa"),
        ("DeltaPressurekPa", "Reading", Kind.cooling, "diff_pressure_kpa"),
        ("HeatRemovedkW", "Reading", Kind.cooling, "heat_removed_kw"),
    ],
    "Pump": [("PumpSpeedPercent", "Reading", Kind.cooling, "pump_speed_pct")],
    "Reservoir": [
        ("FluidLevelPercent", "Reading", Kind.cooling, "reservoir_level_pct"),
        ("InternalPressurekPa", "Reading", Kind.cooling, "pressure_kpa"),
    ],
    "EnvironmentMetrics": [
        ("TemperatureCelsius", "Reading", OWNER, "temp_c"),
        ("HumidityPercent", "Reading", Kind.air, "humidity_pct"),
        ("PowerWatts", "Reading", Kind.power, "power_w"),
        ("EnergykWh", "Reading", Kind.power, "energy_kwh"),
    ],
    "PowerDistributionMetrics": [
        ("PowerWatts", "Reading", Kind.power, "power_w"),
        ("PowerWatts", "PowerFactor", Kind.power, "power_factor"),
        ("EnergykWh", "Reading", Kind.power, "energy_kwh"),
        ("TemperatureCelsius", "Reading", Kind.power, "temp_c"),
    ],
    "Outlet": [
        ("PowerWatts", "Reading", Kind.power, "power_w"),
        ("PowerWatts", "PowerFactor", Kind.power, "power_factor"),
        ("CurrentAmps", "Reading", Kind.power, "current_a"),
        ("Voltage", "Reading", Kind.power, "voltage_v"),
        ("EnergykWh", "Reading", Kind.power, "energy_kwh"),
        ("FrequencyHz", "Reading", Kind.power, "frequency_hz"),
    ],
}
PROPERTIES["Circuit"] = PROPERTIES["Outlet"]  # mains and branch circuits of a PDU
# ThermalSubsystem/Fans/*: a fan belongs to its chassis (the walker gives it `chassis_kind`)
PROPERTIES["Fan"] = [
    ("SpeedPercent", "Reading", OWNER, "fan_speed_pct"),
    ("SpeedPercent", "SpeedRPM", OWNER, "fan_speed_rpm"),
]

# A CDU's single secondary (rack-side) connector is its loop: its readings are also sent
# under the CDU's own device id, primary (facility-side) ones with a `primary_` prefix.
CDU_LOOP = {
    "SecondaryCoolantConnectors": {m: m for _, _, _, m in PROPERTIES["CoolantConnector"]},
    "PrimaryCoolantConnectors": {
        "supply_temp_c": "primary_supply_temp_c",
        "return_temp_c": "primary_return_temp_c",
        "flow_lpm": "primary_flow_lpm",
    },
}

# Sensor.ReadingType -> (kind, metric); ReadingUnits stands in when ReadingType is missing.
SENSOR_TYPES: dict[str, tuple[Kind | str, str]] = {
    "Temperature": (OWNER, "temp_c"),
    "Power": (Kind.power, "power_w"),
    "EnergykWh": (Kind.power, "energy_kwh"),
    "Current": (Kind.power, "current_a"),
    "Voltage": (Kind.power, "voltage_v"),
    "Frequency": (Kind.power, "frequency_hz"),
    "Humidity": (Kind.air, "humidity_pct"),
    "LiquidFlowLPM": (Kind.cooling, "flow_lpm"),
    "PressurekPa": (Kind.cooling, "pressure_kpa"),
    "Heat": (Kind.cooling, "heat_removed_kw"),
    "Rotational": (OWNER, "fan_speed_rpm"),  # fan tachometers
    "Percent": (OWNER, "fan_speed_pct"),  # only for fan sensors (see sensor_reading)
}
# ReadingType -> factor to the mapped metric's unit
SENSOR_SCALE = {"EnergyWh": 0.001, "LiquidFlow": 60.0}  # Wh -> kWh, L/s -> L/min
SENSOR_TYPES["EnergyWh"] = SENSOR_TYPES["EnergykWh"]
SENSOR_TYPES["LiquidFlow"] = SENSOR_TYPES["LiquidFlowLPM"]
UNIT_TYPES = {
    "Cel": "Temperature",
    "W": "Power",
    "kW.h": "EnergykWh",
    "A": "Current",
    "V": "Voltage",
    "Hz": "Frequency",
    "L/min": "LiquidFlowLPM",
    "kPa": "PressurekPa",
    "kW": "Heat",
    "RPM": "Rotational",
    "{rev}/min": "Rotational",
}


def resource_type(doc: dict[str, Any]) -> str:
    """`#Pump.v1_2_0.Pump` -> `Pump`; `#SensorCollection.SensorCollection` -> `SensorCollection`."""
    return str(doc.get("@odata.type", "")).rsplit(".", 1)[-1]


def _number(value: Any) -> float | None:
    # bool is an int subclass; a Reading of true/false is not a number we send
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def property_readings(
    rtype: str, doc: dict[str, Any], owner_kind: Kind
) -> tuple[list[tuple[Kind, str, float]], set[str]]:
    """(kind, metric, value) for every mapped excerpt present, and the DataSourceUris the
    excerpts cite (so the walker need not read those sensors again)."""
    out: list[tuple[Kind, str, float]] = []
    cited: set[str] = set()
    for prop, fld, kind, metric in PROPERTIES.get(rtype, ()):
        excerpt = doc.get(prop)
        if not isinstance(excerpt, dict):
            continue
        value = _number(excerpt.get(fld))
        if value is None:
            continue
        out.append((owner_kind if kind == OWNER else Kind(kind), metric, value))
    for excerpt in doc.values():  # unmapped excerpts (e.g. delta T) cite sensors too
        if isinstance(excerpt, dict) and isinstance(excerpt.get("DataSourceUri"), str):
            cited.add(excerpt["DataSourceUri"].rstrip("/"))
    if rtype == "Pump":
        status = doc.get("Status") or {}
        running = status.get("State") == "Enabled" and status.get("Health") != "Critical"
        out.append((Kind.cooling, "pump_running", 1.0 if running else 0.0))
    return out, cited


def sensor_reading(doc: dict[str, Any], owner_kind: Kind) -> tuple[Kind, str, float] | None:
    """A Sensor resource's reading, or None if absent, null or of a type we do not map."""
    if (doc.get("Status") or {}).get("State") == "Absent":
        return None
    value = _number(doc.get("Reading"))
    if value is None:
        return None
    rtype = doc.get("ReadingType") or UNIT_TYPES.get(str(doc.get("ReadingUnits")), "")
    mapped = SENSOR_TYPES.get(rtype)
    if mapped is None:
        return None
    kind, metric = mapped
    if rtype == "Temperature" and str(doc.get("PhysicalContext", "")).startswith("Liquid"):
        return Kind.cooling, "coolant_temp_c", value
    if rtype == "Percent" and not is_fan_sensor(doc):
        return None  # battery health, utilisation, valve position: no contract metric
    value *= SENSOR_SCALE.get(rtype, 1.0)
    return (owner_kind if kind == OWNER else Kind(kind)), metric, value


def is_fan_sensor(doc: dict[str, Any]) -> bool:
    """A percent sensor is a fan's speed when its context or name says fan (Redfish has no
    fan ReadingType; DMTF's mockups name them `FanBay1`, `CPUFan1`, `PS1Fan`)."""
    if doc.get("PhysicalContext") == "Fan" or doc.get("PhysicalSubContext") == "Fan":
        return True
    return any("fan" in str(doc.get(k, "")).lower() for k in ("Id", "Name"))


# -- legacy Chassis/{id}/Power and Chassis/{id}/Thermal (deprecated, still widely served) --
# Their readings sit in arrays of objects, each a "member" with its own id (MemberId) and
# Status; a member becomes a device `<chassis>/Power/PowerSupplies/<MemberId>`.
LEGACY_ARRAYS = {
    "Power": ("PowerControl", "PowerSupplies", "Voltages"),
    "Thermal": ("Temperatures", "Fans"),
}
# member property -> metric; for PowerSupplies the first present of each metric wins
LEGACY_PSU = [
    ("PowerInputWatts", "input_power_w"),
    ("PowerOutputWatts", "output_power_w"),
    ("LastPowerOutputWatts", "output_power_w"),  # older services: the only output figure
    ("LineInputVoltage", "input_voltage_v"),
]


@dataclass(frozen=True)
class LegacyMember:
    uri: str  # `<resource>/<array>/<MemberId>`: a path the service never serves, an id
    array: str
    doc: dict[str, Any]


def legacy_members(uri: str, doc: dict[str, Any]) -> list[LegacyMember]:
    out = []
    for array in LEGACY_ARRAYS.get(resource_type(doc), ()):
        for i, m in enumerate(doc.get(array) or []):
            if isinstance(m, dict):
                mid = str(m.get("MemberId") or i).strip("/") or str(i)
                out.append(LegacyMember(f"{uri}/{array}/{mid}", array, m))
    return out


def legacy_readings(
    member: LegacyMember, owner_kind: Kind, single_control: bool
) -> list[tuple[str | None, Kind, str, float]]:
    """(device uri or None for the chassis itself, kind, metric, value) of one member.
    `single_control`: the resource has one PowerControl, whose power is the chassis's."""
    m = member.doc
    if (m.get("Status") or {}).get("State") == "Absent":
        return []
    out: list[tuple[str | None, Kind, str, float]] = []
    if member.array == "PowerControl":
        v = _number(m.get("PowerConsumedWatts"))
        if v is not None:
            out.append((None if single_control else member.uri, Kind.power, "power_w", v))
    elif member.array == "PowerSupplies":
        for prop, metric in LEGACY_PSU:
            v = _number(m.get(prop))
            if v is not None and not any(o[2] == metric for o in out):
                out.append((member.uri, Kind.power, metric, v))
    elif member.array == "Voltages":
        v = _number(m.get("ReadingVolts"))
        if v is not None:
            out.append((member.uri, Kind.power, "voltage_v", v))
    elif member.array == "Temperatures":
        v = _number(m.get("ReadingCelsius"))
        if v is not None:
            liquid = str(m.get("PhysicalContext", "")).startswith("Liquid")
            metric = "coolant_temp_c" if liquid else "temp_c"
            out.append((member.uri, Kind.cooling if liquid else owner_kind, metric, v))
    elif member.array == "Fans":
        v = _number(m.get("Reading"))
        units = m.get("ReadingUnits")
        if v is None and _number(m.get("ReadingRPM")) is not None:  # Thermal v1_0, v1_1
            v, units = _number(m.get("ReadingRPM")), "RPM"
        if v is not None and units in ("RPM", "Percent"):
            metric = "fan_speed_rpm" if units == "RPM" else "fan_speed_pct"
            out.append((member.uri, owner_kind, metric, v))
    return out


def leak_readings(doc: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(detector URI or None for the resource itself, DetectorState) from a LeakDetector or
    from the detector excerpts in a LeakDetection resource's groups."""
    if resource_type(doc) == "LeakDetector":
        state = doc.get("DetectorState")
        return [(None, state)] if isinstance(state, str) else []
    out = []
    for group in doc.get("LeakDetectorGroups") or []:
        for det in group.get("Detectors") or []:
            if isinstance(det.get("DetectorState"), str) and det.get("DataSourceUri"):
                out.append((det["DataSourceUri"].rstrip("/"), det["DetectorState"]))
    return out


@dataclass(frozen=True)
class Finding:
    """A problem a resource reports. `key` identifies it across reads so that an event is
    sent when it appears and again when it clears, not every interval."""

    uri: str  # the resource the problem is about (OriginOfCondition when given)
    kind: EventKind
    severity: Severity
    message: str
    key: str
    attrs: dict[str, str] = field(default_factory=dict, compare=False)


_SEVERITY: dict[str, Severity] = {"Warning": "warning", "Critical": "critical"}


def _event_kind(rtype: str, message_id: str) -> EventKind:
    mid = message_id.rsplit(".", 1)[-1]
    if mid.endswith("SubsystemHealth"):  # a rollup; the failed part reports itself
        return EventKind.health_changed
    if rtype == "Pump" or mid.startswith("PumpFailed"):
        return EventKind.pump_failed
    if rtype in ("LeakDetector", "LeakDetection") or "Leak" in mid:
        return EventKind.leak_detected
    if rtype == "PowerSupply" or mid.startswith("PowerSupply"):
        return EventKind.psu_fault
    if rtype == "Fan" or mid.startswith("Fan"):
        return EventKind.fan_failed
    return EventKind.health_changed


_ARRAY_TYPES = {"PowerSupplies": "PowerSupply", "Fans": "Fan"}
# a path segment of an OriginOfCondition -> the resource type it names
_PATH_TYPES = {
    "Pumps": "Pump",
    "LeakDetectors": "LeakDetector",
    "PowerSupplies": "PowerSupply",
    "Fans": "Fan",
}


def origin_type(uri: str) -> str:
    """Best guess of a resource's type from its path (`.../Fans/Bay1` -> `Fan`), for
    events whose origin was not read; '' when the path says nothing."""
    parts = uri.replace("#", "").rstrip("/").split("/")
    return _PATH_TYPES.get(parts[-2], "") if len(parts) >= 2 else ""


def record_event_kind(origin: str, message_id: str) -> EventKind:
    """EventKind of a pushed or logged Redfish event record, from its origin and MessageId
    (e.g. `ResourceEvent.1.0.ResourceErrorsDetected` on `.../Fans/2` -> fan_failed)."""
    return _event_kind(origin_type(origin), message_id)


def legacy_findings(member: LegacyMember) -> list[Finding]:
    """Health of one legacy array member (a PSU, fan, temperature), as `status_findings`."""
    rtype = _ARRAY_TYPES.get(member.array, member.array.rstrip("s"))
    return status_findings(rtype, member.uri, member.doc)


def status_findings(rtype: str, uri: str, doc: dict[str, Any]) -> list[Finding]:
    """Status.Health (Warning/Critical) and active Status.Conditions of one resource.

    A condition names where it happened (OriginOfCondition); a CDU repeats its pump's
    condition, and both map to the same finding key, so one event is sent.
    """
    if rtype.endswith("Metrics"):  # a metrics resource repeats its owner's health
        return []
    status = doc.get("Status") or {}
    out: list[Finding] = []
    for cond in status.get("Conditions") or []:
        severity = _SEVERITY.get(str(cond.get("Severity")))
        if severity is None:  # "OK" conditions report health, not a problem
            continue
        origin = ((cond.get("OriginOfCondition") or {}).get("@odata.id") or uri).rstrip("/")
        mid = str(cond.get("MessageId", ""))
        origin_type = rtype if origin == uri else ""
        kind = _event_kind(origin_type, mid)
        out.append(
            Finding(
                origin,
                kind,
                severity,
                str(cond.get("Message", mid)),
                f"{origin}|{kind}|{mid.rsplit('.', 1)[-1]}|{cond.get('MessageArgs')}",
                {"redfish_uri": origin, "message_id": mid},
            )
        )
    for det_uri, state in leak_readings(doc):
        if state in _SEVERITY:
            where = det_uri or uri
            out.append(
                Finding(
                    where,
                    EventKind.leak_detected,
                    _SEVERITY[state],
                    f"leak detector {where} reports {state}",
                    f"{where}|{EventKind.leak_detected}|detector",
                    {"redfish_uri": where, "detector_state": state},
                )
            )
    health = _SEVERITY.get(str(status.get("Health")))
    if rtype == "Fan" and status.get("State") == "Absent":
        # a fan pulled from its bay stops cooling whatever its last health said
        out.append(
            Finding(
                uri,
                EventKind.fan_failed,
                "warning",
                f"Fan {doc.get('Name') or uri} is absent",
                f"{uri}|{EventKind.fan_failed}|absent",
                {"redfish_uri": uri, "state": "Absent"},
            )
        )
        return out
    if health is not None:
        kind = _event_kind(rtype, "")
        # a failed pump also carries a PumpFailed condition: that finding already says it
        if not any(f.uri == uri and f.kind == kind for f in out):
            out.append(
                Finding(
                    uri,
                    kind,
                    health,
                    f"{rtype} {doc.get('Name') or uri} health is "
                    f"{status.get('Health') or doc.get('DetectorState')}",
                    f"{uri}|{kind}|health",
                    {
                        "redfish_uri": uri,
                        "health": str(status.get("Health")),
                        "state": str(status.get("State")),
                    },
                )
            )
    return out
