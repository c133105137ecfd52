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


# -- issue 27 (capacity): chiller plant capacity vs outdoor wet-bulb -----------------------
# The plant is CHILLER_UNITS units of CHILLER_UNIT_FRACTION x rated_kw each (N+1: rated_kw
# is what the plant carries with one unit out), as in simulator/plant.py. A chiller's
# capacity falls as its entering condenser water warms; condenser water leaves the tower
# TOWER_APPROACH_K above the outdoor wet-bulb at full load. Documented derating (typical
# of centrifugal/screw chiller performance tables): CHILLER_DERATE_PER_K of capacity per K
# of entering condenser water above the AHRI 550/590 rating condition (29.4 degC, 85 degF),
# never above the rating in cooler weather (the economizer's extra is not counted).
CHILLER_UNITS = 3
CHILLER_UNIT_FRACTION = 0.5
TOWER_APPROACH_K = 4.0
RATING_ECWT_C = 29.4
CHILLER_DERATE_PER_K = 0.015
MIN_CAPACITY_FACTOR = 0.5


def plant_capacity_factor(wetbulb_c: float) -> float:
    """Share of its rating a chiller delivers at this outdoor wet-bulb (NaN in, NaN out)."""
    ecwt_c = wetbulb_c + TOWER_APPROACH_K
    factor = 1.0 - CHILLER_DERATE_PER_K * max(ecwt_c - RATING_ECWT_C, 0.0)
    return max(factor, MIN_CAPACITY_FACTOR) if factor == factor else float("nan")
