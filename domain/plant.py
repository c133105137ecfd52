"""Hard limits of the cooling plant: each controllable setpoint's envelope and the CRAH coil
approach. The simulator obeys them and the optimizer never recommends outside them, so both
read them from here (one source of truth, not the simulator's internals)."""

from __future__ import annotations

from dataclasses import dataclass

# a CRAH coil holds supply air at least this far above the chilled-water supply
COIL_APPROACH_K = 3.0


@dataclass(frozen=True)
class Envelope:
    name: str
    unit: str
    min: float
    max: float
    ramp_per_min: float  # how fast the active setpoint follows a change
    scope: str  # "site", "cdu" or "crah"
    description: str


ENVELOPES: dict[str, Envelope] = {
    e.name: e
    for e in (
        Envelope(
            "chw_supply_setpoint_c",
            "Cel",
            7.0,
            27.0,
            0.5,
            "site",
            "chilled-water supply temperature leaving the plant",
        ),
        Envelope(
            "cw_supply_setpoint_c",
            "Cel",
            15.0,
            35.0,
            1.0,
            "site",
            "condenser-water supply temperature from the cooling tower",
        ),
        Envelope(
            "cdu_supply_setpoint_c",
            "Cel",
            17.0,
            45.0,
            0.5,
            "cdu",
            "CDU secondary (technology cooling system) supply temperature; "
            "ASHRAE TC9.9 liquid classes W17..W45",
        ),
        Envelope(
            "cdu_dp_setpoint_kpa",
            "kPa",
            5.0,
            150.0,
            30.0,
            "cdu",
            "CDU secondary pump minimum differential pressure (the rack flow floor)",
        ),
        Envelope(
            "cdu_dt_setpoint_k",
            "K",
            3.0,
            12.0,
            1.0,
            "cdu",
            "CDU secondary delta-T the pump speed holds above the flow floor",
        ),
        Envelope(
            "crah_supply_setpoint_c",
            "Cel",
            18.0,
            27.0,
            0.5,
            "crah",
            "CRAH supply air; ASHRAE TC9.9 recommended inlet range 18-27 degC",
        ),
        Envelope(
            "economizer_enabled",
            "bool",
            0.0,
            1.0,
            1e9,
            "site",
            "waterside economizer allowed (1) or locked out (0)",
        ),
    )
}

# issue 19 (opt-live): where each optimizer control travels as telemetry and sits in a
# register map: (device class, contract metric). Telemetry carries the active (ramped)
# value the equipment runs at; a writable (holding) register takes the command.
CONTROL_METRICS: dict[str, tuple[str, str]] = {
    "chw_supply_setpoint_c": ("plant", "chw_supply_setpoint_c"),
    "cw_supply_setpoint_c": ("plant", "cw_supply_setpoint_c"),
    "economizer_enabled": ("plant", "economizer_enabled"),
    "cdu_supply_setpoint_c": ("cdu", "supply_setpoint_c"),
    "cdu_dp_setpoint_kpa": ("cdu", "dp_setpoint_kpa"),
    "crah_supply_setpoint_c": ("crah", "supply_air_setpoint_c"),
}
