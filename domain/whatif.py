"""What-if scenarios (issue 27, items 3-4): the request, its validation against the site, and
the plain data a run starts from (the twin's live state) and returns.

Light on purpose (pydantic + dataclasses): the twin builds `LiveState` from telemetry, the
simulator (`simulator/whatif.py`) runs a scenario from it, and neither imports the other.
A scenario that does not fit the site (an unknown row, rack, template, component or
setpoint; an added rack that overloads a breaker, PDU, CDU, UPS or the plant) raises
`ScenarioError` naming the element; the API answers it with 422.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.capacity import check_capacity
from domain.plant import ENVELOPES
from domain.site import Row, Site

MAX_HORIZON_H = 24.0 * 14
FAILABLE = ("cdu", "crah", "chiller_plant", "psu", "gpu")  # device classes a scenario may fail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddRacks(_Strict):
    """New racks of one template ("profile") at named positions in an existing row."""

    row: str = Field(description="existing row id, e.g. row1 (rows are unique per hall)")
    racks: list[str] = Field(min_length=1, description="new rack names, e.g. ['r09', 'r10']")
    template: str = Field(description="a template of the site file (the rack profile)")
    utilisation: float = Field(0.9, ge=0, le=1, description="GPU utilisation of the new racks")


class SetpointChange(_Strict):
    name: str = Field(description="a control of domain/plant.py ENVELOPES")
    value: float
    device: str | None = Field(None, description="a CDU or CRAH id (e.g. cdu1); none: all")
    at_h: float = Field(0.0, ge=0, description="hours after the start of the run")


class Failure(_Strict):
    component: str = Field(description="device id: a CDU, CRAH, PSU or GPU, or the plant")
    at_h: float = Field(0.0, ge=0, description="hours after the start of the run")


class WeatherChange(_Strict):
    """Outdoor conditions from `at_h` on: an offset on the forecast (a heat wave) and/or
    fixed values."""

    drybulb_offset_k: float = Field(0.0, ge=-30, le=30)
    drybulb_c: float | None = Field(None, ge=-50, le=60, description="fixed dry-bulb")
    rh_pct: float | None = Field(None, ge=1, le=100, description="fixed relative humidity")
    at_h: float = Field(0.0, ge=0)


class UtilisationChange(_Strict):
    value: float = Field(ge=0, le=1, description="GPU utilisation (fraction) from at_h on")
    racks: list[str] | None = Field(None, description="rack names; none: every rack")
    at_h: float = Field(0.0, ge=0)


class Scenario(_Strict):
    """A what-if: changes to the site and its operation, run from the live state."""

    name: str = Field("", max_length=200)
    horizon_h: float = Field(24.0, gt=0, le=MAX_HORIZON_H)
    step_s: float = Field(30.0, ge=1, le=600, description="simulator step")
    add_racks: list[AddRacks] = Field(default_factory=list)
    remove_racks: list[str] = Field(default_factory=list, description="rack names")
    setpoints: list[SetpointChange] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)
    weather: WeatherChange | None = None
    utilisation: list[UtilisationChange] = Field(default_factory=list)
    climate: Literal["temperate", "hot-humid", "hot-dry", "cold"] = Field(
        "temperate", description="the site's climate: the shape of the weather forecast"
    )
    seed: int = Field(0, ge=0, description="seed of the what-if simulator's own noise")


class ScenarioError(ValueError):
    """A scenario that does not fit the site; `element` is the offending field path."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}")
        self.element = element
        self.message = message


def scenario_site(site: Site, sc: Scenario) -> Site:
    """The site with the scenario's racks added and removed (a new Site; the given one is
    unchanged). Raises ScenarioError naming the row, rack or template that does not fit,
    or the breaker / PDU / CDU / UPS / plant the new racks would overload."""
    data = site.model_copy(deep=True)
    rows: dict[str, tuple[str, Row]] = {}
    for hall in data.halls:
        for row in hall.rows:
            rows.setdefault(row.id, (hall.id, row))
    racks = {r for hall in data.halls for row in hall.rows for r in row.racks}
    for i, rack in enumerate(sc.remove_racks):
        if rack not in racks:
            raise ScenarioError(f"remove_racks[{i}]", f"no rack {rack!r} in site {site.site.id}")
        for hall in data.halls:
            for row in hall.rows:
                if rack in row.racks:
                    row.racks.remove(rack)
        racks.discard(rack)
    for i, add in enumerate(sc.add_racks):
        where = f"add_racks[{i}]"
        if add.row not in rows:
            raise ScenarioError(f"{where}.row", f"no row {add.row!r} (rows: {sorted(rows)})")
        if add.template not in data.templates:
            raise ScenarioError(
                f"{where}.template",
                f"unknown template {add.template!r} (defined: {sorted(data.templates)})",
            )
        _hall, row = rows[add.row]
        if add.template != row.template:
            raise ScenarioError(
                f"{where}.template",
                f"row {add.row!r} holds racks of template {row.template!r}; a row has one "
                "template (its power and cooling feed are sized for it)",
            )
        for j, rack in enumerate(add.racks):
            if rack in racks:
                raise ScenarioError(f"{where}.racks[{j}]", f"rack position {rack!r} is taken")
            row.racks.append(rack)
            racks.add(rack)
    if not racks:
        raise ScenarioError("remove_racks", "the scenario removes every rack")
    if sc.add_racks:  # a new rack must fit its breaker, PDU, CDU, the UPS and the plant
        report = check_capacity(data)
        if report.errors:
            first = report.errors[0]
            raise ScenarioError(first.split(":", 1)[0], first.split(":", 1)[1].strip())
    for hall in data.halls:
        for row in hall.rows:
            if not row.racks:
                raise ScenarioError("remove_racks", f"row {row.id!r} would have no rack left")
    return data


def validate_scenario(site: Site, sc: Scenario) -> Site:
    """Everything a run needs checked before it starts: the changed site (scenario_site),
    setpoints against their envelopes, failed components and utilisation racks. Returns
    the changed site; raises ScenarioError naming the element."""
    changed = scenario_site(site, sc)
    cdus = {c.id for h in changed.halls for c in h.cdus}
    crahs = {a.id for h in changed.halls for a in h.crahs}
    for i, sp in enumerate(sc.setpoints):
        where = f"setpoints[{i}]"
        env = ENVELOPES.get(sp.name)
        if env is None:
            raise ScenarioError(
                f"{where}.name", f"unknown control {sp.name!r} ({sorted(ENVELOPES)})"
            )
        if not env.min <= sp.value <= env.max:
            raise ScenarioError(
                f"{where}.value",
                f"{sp.name} = {sp.value} {env.unit} is outside its envelope [{env.min}, {env.max}]",
            )
        if sp.device is not None:
            known = {"cdu": cdus, "crah": crahs}.get(env.scope)
            if known is None:
                raise ScenarioError(
                    f"{where}.device", f"{sp.name} is site-wide; it takes no device"
                )
            if sp.device not in known:
                raise ScenarioError(f"{where}.device", f"no {env.scope} {sp.device!r} in the site")
    devices = {d.id: d.device_class for d in changed.devices()}
    short = {d.rsplit("/", 1)[-1]: d for d, c in devices.items() if c in ("cdu", "crah")}
    for i, f in enumerate(sc.failures):
        dev = short.get(f.component, f.component)
        cls = devices.get(dev)
        if cls is None:
            raise ScenarioError(f"failures[{i}].component", f"no component {f.component!r}")
        if cls not in FAILABLE:
            raise ScenarioError(
                f"failures[{i}].component",
                f"{f.component!r} is a {cls}; a scenario can fail a {', '.join(FAILABLE)}",
            )
    racks = {r.rack for r in changed.racks()}
    for i, u in enumerate(sc.utilisation):
        for j, rack in enumerate(u.racks or []):
            if rack not in racks:
                raise ScenarioError(f"utilisation[{i}].racks[{j}]", f"no rack {rack!r}")
    for name, at in [
        *((f"setpoints[{i}].at_h", s.at_h) for i, s in enumerate(sc.setpoints)),
        *((f"failures[{i}].at_h", f.at_h) for i, f in enumerate(sc.failures)),
        *((f"utilisation[{i}].at_h", u.at_h) for i, u in enumerate(sc.utilisation)),
        *([("weather.at_h", sc.weather.at_h)] if sc.weather else []),
    ]:
        if at >= sc.horizon_h:
            raise ScenarioError(name, f"{at} h is not within the horizon ({sc.horizon_h} h)")
    return changed


def failed_device_id(site: Site, component: str) -> str:
    """The full device id of a scenario's failure (CDUs and CRAHs may be named short)."""
    for d in site.devices():
        if d.id == component or (
            d.device_class in ("cdu", "crah") and d.id.rsplit("/", 1)[-1] == component
        ):
            return d.id
    raise ScenarioError("failures", f"no component {component!r}")


@dataclass
class LiveState:
    """What the twin knows now, as plain data keyed by device id (missing: not reported).
    Times are Unix seconds; utilisation is a fraction."""

    time_s: float
    gpu_util: dict[str, float] = field(default_factory=dict)
    gpu_temp_c: dict[str, float] = field(default_factory=dict)
    gpu_power_w: dict[str, float] = field(default_factory=dict)
    setpoints: dict[str, float] = field(default_factory=dict)  # site controls by name
    crah_supply_setpoint_c: dict[str, float] = field(default_factory=dict)
    outdoor_drybulb_c: float | None = None
    outdoor_wetbulb_c: float | None = None
    chw_supply_c: float | None = None
    cw_supply_c: float | None = None
    cdu_supply_c: dict[str, float] = field(default_factory=dict)
    pue: float | None = None  # the twin's current PUE, for reference
    # each GPU's recent readings (twin.whatif.live_state.CALIBRATION_WINDOW_S), oldest
    # first, one entry per read that has both: its thermal resistance is fitted over them
    gpu_temp_window_c: dict[str, list[float]] = field(default_factory=dict)
    gpu_power_window_w: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class WhatIfResult:
    """Predicted figures over the horizon (energy-based PUE, as ISO/IEC 30134-2)."""

    pue: float
    it_energy_kwh: float
    facility_energy_kwh: float
    peak_gpu_temp_c: float
    peak_gpu_id: str
    peak_cdu_supply_c: float
    peak_crah_supply_c: float
    peak_chw_supply_c: float
    makeup_water_l: float
    violations: list[dict] = field(default_factory=list)  # limit, device, first time, peak
    first_breach: dict | None = None
    # rating minus the run's peak load per CDU, PDU, the UPS and the plant
    peak_load: list[dict] = field(default_factory=list)
    # the state at the run's peak IT power (long form: id, metric, value), for headroom
    peak_state: dict[str, list] = field(default_factory=dict)
    # twin/capacity headroom (N, N-1, current and design-day weather) at that state
    headroom: list[dict] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)  # hourly: pue, it_kw, ...
    seconds: float = 0.0  # wall time of the run
