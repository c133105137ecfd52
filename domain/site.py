"""Site model: the physical layout of a data center, loaded from TOML.

The site file is the single source of device ids. Collectors use it to name what they
read, ingest to reject ids it does not know, and the twin to build topology.
Light on purpose (pydantic + tomllib): rack collectors import it.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_log = logging.getLogger("dctwin.site")
EXAMPLE_SITE = Path(__file__).resolve().parent / "sites" / "example.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeterRole(StrEnum):
    """Where a meter sits in the power path. ISO/IEC 30134-2 categories follow from it:
    IT energy at UPS output -> PUE1, at PDU output -> PUE2, at IT input -> PUE3."""

    facility_input = "facility_input"  # utility / total facility energy
    ups_output = "ups_output"
    pdu_output = "pdu_output"
    it_input = "it_input"
    cooling_plant = "cooling_plant"


class Meter(_Strict):
    id: str = Field(min_length=1)
    role: MeterRole
    description: str = ""
    energy_rollover_kwh: float | None = Field(
        None,
        gt=0,
        description="value at which the energy register wraps to zero (e.g. "
        "999999.9 kWh); a drop near it is a wrap, any other drop a reset",
    )


class RackTemplate(_Strict):
    nodes: int = Field(ge=1, le=64)
    gpus_per_node: int = Field(ge=0, le=16)
    gpu_model: str = "H100-SXM5-80GB"
    gpu_tdp_w: float = Field(gt=0, le=2000)
    gpu_idle_w: float = Field(gt=0)
    node_overhead_w: float = Field(ge=0, description="CPUs, NICs, fans, drives per node")
    psus: int = Field(ge=1, le=64, description="PSUs feeding the rack's DC bus")
    psu_rated_w: float = Field(gt=0, description="continuous DC output rating of one PSU")
    psu_redundancy: int = Field(
        0,
        ge=0,
        description="PSUs the rack can lose and still carry its maximum load (N+r); "
        "a DGX H100 node's 4+2 is 2 per node",
    )
    rack_breaker_kw: float | None = Field(
        None, gt=0, description="continuous rating of the rack feed (breaker), kW at PSU inputs"
    )
    liquid_fraction: float = Field(
        ge=0, le=1, description="share of rack heat removed by the liquid loop"
    )

    @model_validator(mode="after")
    def _idle_below_tdp(self) -> RackTemplate:
        if self.gpu_idle_w >= self.gpu_tdp_w:
            raise ValueError(f"gpu_idle_w ({self.gpu_idle_w}) must be below gpu_tdp_w")
        return self


class Row(_Strict):
    id: str = Field(min_length=1)
    template: str
    racks: list[str] = Field(min_length=1)
    pdu: str
    cdu: str


class Fluid(_Strict):
    name: str = "water"
    cp_kj_per_kg_k: float = Field(4.186, gt=0)
    density_kg_per_m3: float = Field(997.0, gt=0)


class Cdu(_Strict):
    id: str = Field(min_length=1)
    rated_kw: float = Field(gt=0)
    nominal_flow_lpm: float = Field(gt=0)
    secondary_supply_setpoint_c: float = Field(32.0, ge=10, le=50)
    fluid: Fluid = Fluid()


class Pdu(_Strict):
    id: str = Field(min_length=1)
    rated_kw: float = Field(gt=0)
    efficiency: float = Field(0.985, gt=0.5, le=1.0)
    # issue 27 (capacity): the PDU's upstream breaker and its feeds (2 = 2N A/B feeds, each
    # rated for the whole load: losing one feed leaves the other carrying everything)
    breaker_kw: float | None = Field(
        None, gt=0, description="continuous rating of the PDU's input breaker, kW; None: rated_kw"
    )
    feeds: int = Field(1, ge=1, le=4, description="independent feeds, each rated_kw (2 = 2N)")


class Crah(_Strict):
    id: str = Field(min_length=1)
    rated_kw: float = Field(gt=0)
    fan_rated_w: float = Field(gt=0)
    supply_air_setpoint_c: float = Field(22.0, ge=10, le=35)
    rated_airflow_m3h: float | None = Field(
        None,
        gt=0,
        description="airflow at 100% fan speed; lets the twin estimate air-side "
        "heat from fan speed when the unit reports neither cooling_kw nor airflow_m3h",
    )


class Hall(_Strict):
    id: str = Field(min_length=1)
    rows: list[Row] = Field(min_length=1)
    cdus: list[Cdu] = Field(default_factory=list)
    pdus: list[Pdu] = Field(default_factory=list)
    crahs: list[Crah] = Field(default_factory=list)


class BatteryChemistry(StrEnum):
    vrla = "VRLA"  # valve-regulated lead-acid
    li_ion = "Li-ion"


# typical design life (years) when the site file gives no replacement date
DESIGN_LIFE_YEARS = {BatteryChemistry.vrla: 5.0, BatteryChemistry.li_ion: 12.0}
# double-conversion inverter efficiency on battery (DC -> AC); sizes energy from runtime
BATTERY_INVERTER_EFFICIENCY = 0.95
# Peukert-like exponent: at a lighter load a battery delivers more than its rated-load
# energy (lead-acid markedly, lithium-ion barely). Fitted to VRLA UPS-block runtime tables
# (e.g. 2x the load -> ~2.3x shorter runtime) and Li-ion rack data sheets.
PEUKERT_EXPONENT = {BatteryChemistry.vrla: 1.2, BatteryChemistry.li_ion: 1.05}
MIN_LOAD_FRACTION = 0.05  # below it runtime is quoted at 5 % load (tables stop there)


class UpsBattery(_Strict):
    """The UPS's battery string. Give its size as `usable_energy_kwh` (DC energy available
    at the rated-load discharge rate, new) or as `nominal_runtime_s` (runtime at the UPS's
    rated load, new, as on the data sheet), not both."""

    chemistry: BatteryChemistry = BatteryChemistry.vrla
    usable_energy_kwh: float | None = Field(None, gt=0)
    nominal_runtime_s: float | None = Field(None, gt=0, le=86400)
    required_ride_through_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="runtime the site needs on battery until the generators carry the load",
    )
    nominal_voltage_v: float = Field(480.0, gt=0, le=1500, description="string voltage")
    installed: date | None = None
    replace_by: date | None = Field(
        None, description="replacement due; default installed + the chemistry's design life"
    )

    @model_validator(mode="after")
    def _size_and_dates(self) -> UpsBattery:
        if (self.usable_energy_kwh is None) == (self.nominal_runtime_s is None):
            raise ValueError(
                "give the battery's size as usable_energy_kwh or nominal_runtime_s (one of them)"
            )
        if self.installed and self.replace_by and self.replace_by <= self.installed:
            raise ValueError(
                f"replace_by ({self.replace_by}) must be after installed ({self.installed})"
            )
        return self

    def design_life_years(self) -> float:
        return DESIGN_LIFE_YEARS[self.chemistry]

    def replacement_due(self) -> date | None:
        """replace_by, or installed + design life; None when neither date is known."""
        if self.replace_by is not None:
            return self.replace_by
        if self.installed is None:
            return None
        days = round(self.design_life_years() * 365.25)
        return date.fromordinal(self.installed.toordinal() + days)


class Ups(_Strict):
    id: str = "ups"
    rated_kw: float = Field(gt=0)
    # issue 27 (capacity): parallel modules sharing rated_kw; N-1 = one module lost
    modules: int = Field(1, ge=1, le=32, description="parallel power modules sharing rated_kw")
    efficiency: float = Field(0.96, gt=0.5, le=1.0)
    input_voltage_v: float = Field(480.0, gt=0, le=50_000, description="nominal, line-line")
    frequency_hz: float = Field(60.0, ge=45, le=65)
    battery: UpsBattery = Field(
        default_factory=lambda: UpsBattery(nominal_runtime_s=600.0),
        description="default: VRLA, 10 minutes at rated load, 300 s ride-through",
    )

    def battery_energy_kwh(self) -> float:
        """Usable DC energy of the new battery at the rated-load discharge rate."""
        b = self.battery
        if b.usable_energy_kwh is not None:
            return b.usable_energy_kwh
        assert b.nominal_runtime_s is not None  # the validator requires one of the two
        return self.rated_kw / BATTERY_INVERTER_EFFICIENCY * b.nominal_runtime_s / 3600.0

    def battery_runtime_s(
        self, load_kw: float, state_of_health: float = 1.0, charge: float = 1.0
    ) -> float:
        """Runtime on battery at an output load: the usable energy (scaled by state of
        health and charge) through the inverter, stretched at light loads by the
        chemistry's Peukert-like exponent k: t = t_rated * (rated / load)^k."""
        load = max(load_kw, MIN_LOAD_FRACTION * self.rated_kw)
        energy_kj = self.battery_energy_kwh() * 3600.0 * state_of_health * charge
        k = PEUKERT_EXPONENT[self.battery.chemistry]
        t_at_load_s = energy_kj * BATTERY_INVERTER_EFFICIENCY / load
        return t_at_load_s * (self.rated_kw / load) ** (k - 1.0)


class ChillerPlant(_Strict):
    id: str = "chiller-plant"
    rated_kw: float = Field(gt=0)
    # issue 27 (capacity): the design-day outdoor wet-bulb (e.g. ASHRAE 0.4 % annual)
    design_wetbulb_c: float = Field(
        24.0, ge=-10, le=40, description="design-day outdoor wet-bulb the plant must cope with"
    )
    chw_supply_setpoint_c: float = Field(18.0, ge=5, le=30)
    cw_supply_setpoint_c: float = Field(27.0, ge=10, le=40)


class Electrical(_Strict):
    """Losses upstream of the UPS: the MV/LV transformer and the LV switchgear/busway.
    Transformer loss/rated = no_load + load_loss * x^2 (x = load/rated): core loss is
    constant, copper loss goes with the square of the current."""

    transformer_rated_kw: float | None = Field(None, gt=0, description="None: not modeled")
    transformer_no_load_loss: float = Field(0.002, ge=0, lt=0.1, description="of rating")
    transformer_load_loss: float = Field(0.011, ge=0, lt=0.1, description="of rating, at rated")
    switchgear_loss: float = Field(0.0, ge=0, lt=0.05, description="fraction of throughput")


class SiteInfo(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    timezone: str = "UTC"
    misc_load_kw: float = Field(0.0, ge=0, description="lighting, offices, security")


class Site(_Strict):
    site: SiteInfo
    templates: dict[str, RackTemplate]
    ups: Ups
    plant: ChillerPlant
    electrical: Electrical = Electrical()
    meters: list[Meter] = Field(min_length=1)
    halls: list[Hall] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self) -> Site:
        seen: set[str] = set()
        for hall in self.halls:
            cdus = {c.id for c in hall.cdus}
            pdus = {p.id for p in hall.pdus}
            for row in hall.rows:
                if row.template not in self.templates:
                    raise ValueError(
                        f"halls.{hall.id}.rows.{row.id}.template: unknown template "
                        f"{row.template!r} (defined: {sorted(self.templates)})"
                    )
                if row.cdu not in cdus:
                    raise ValueError(f"halls.{hall.id}.rows.{row.id}.cdu: no CDU {row.cdu!r}")
                if row.pdu not in pdus:
                    raise ValueError(f"halls.{hall.id}.rows.{row.id}.pdu: no PDU {row.pdu!r}")
                for rack in row.racks:
                    if rack in seen:
                        raise ValueError(f"halls.{hall.id}.rows.{row.id}.racks: duplicate {rack!r}")
                    seen.add(rack)
        return self

    # -- derived views ---------------------------------------------------------------

    def racks(self) -> list[RackRef]:
        out = []
        for hall in self.halls:
            for row in hall.rows:
                tpl = self.templates[row.template]
                for rack in row.racks:
                    out.append(RackRef(self.site.id, hall.id, row.id, rack, tpl, row.pdu, row.cdu))
        return out

    def meter(self, role: MeterRole) -> Meter | None:
        return next((m for m in self.meters if m.role == role), None)

    def meter_id(self, meter: Meter) -> str:
        return f"{self.site.id}/facility/{meter.id}"

    def plant_id(self) -> str:
        return f"{self.site.id}/plant/{self.plant.id}"

    def devices(self) -> list[DeviceRef]:
        """Every device the site declares, with its class and rack (partition key)."""
        sid = self.site.id
        out: list[DeviceRef] = []
        for m in self.meters:
            out.append(DeviceRef(self.meter_id(m), "meter", "facility", "facility"))
        out.append(DeviceRef(self.plant_id(), "chiller_plant", "facility", "facility"))
        out.append(DeviceRef(f"{sid}/facility/{self.ups.id}", "ups", "power", "facility"))
        for hall in self.halls:
            for c in hall.cdus:
                out.append(DeviceRef(f"{sid}/{hall.id}/{c.id}", "cdu", "cooling", hall.id))
            for p in hall.pdus:
                out.append(DeviceRef(f"{sid}/{hall.id}/{p.id}", "pdu", "power", hall.id))
            for a in hall.crahs:
                out.append(DeviceRef(f"{sid}/{hall.id}/{a.id}", "crah", "air", hall.id))
        for r in self.racks():
            for i in range(r.template.psus):
                out.append(DeviceRef(r.psu_id(i), "psu", "power", r.rack))
            for n in range(r.template.nodes):
                for g in range(r.template.gpus_per_node):
                    out.append(DeviceRef(r.gpu_id(n, g), "gpu", "gpu", r.rack))
        return out

    def gpu_count(self) -> int:
        return sum(r.template.nodes * r.template.gpus_per_node for r in self.racks())


@dataclass(frozen=True, slots=True)
class DeviceRef:
    id: str
    device_class: str  # gpu, psu, cdu, pdu, crah, ups, meter, chiller_plant
    kind: Literal["gpu", "cooling", "power", "air", "facility"]
    rack: str  # partition key


@dataclass(frozen=True, slots=True)
class RackRef:
    site: str
    hall: str
    row: str
    rack: str
    template: RackTemplate
    pdu: str
    cdu: str

    @property
    def prefix(self) -> str:
        return f"{self.site}/{self.hall}/{self.row}/{self.rack}"

    def node_id(self, node: int) -> str:
        return f"{self.prefix}/n{node + 1:02d}"

    def gpu_id(self, node: int, gpu: int) -> str:
        return f"{self.node_id(node)}/gpu{gpu}"

    def psu_id(self, psu: int) -> str:
        return f"{self.prefix}/shelf/psu{psu + 1}"


M = TypeVar("M", bound=BaseModel)


class SiteFileError(ValueError):
    """The site file is unreadable or invalid; the message names the field."""


def load_site(path: str | Path, check_capacity: bool = True) -> Site:
    """The site from a TOML file. With check_capacity, a PSU, rack feed, PDU, CDU, UPS,
    CRAH or plant overloaded at the site's maximum load is a SiteFileError naming the
    element; a lost redundancy (N-1) is logged as a warning (domain.capacity)."""
    site = load_toml_model(path, Site, SiteFileError)
    if check_capacity:
        from domain.capacity import check_capacity as _check

        report = _check(site)
        if report.errors:
            raise SiteFileError(f"{path}: " + "; ".join(report.errors))
        for w in report.warnings:
            _log.warning("%s: %s", path, w)
    return site


def load_toml_model(
    path: str | Path, model: type[M], error: type[Exception] = ValueError, prefix: str = ""
) -> M:
    """A pydantic model from a TOML file; `error("<prefix><path>: what is wrong")` else."""
    where = f"{prefix}{path}"
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise error(f"{where}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{where}: {format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """`field.path: what is wrong` per error, the form operators can act on."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)
