"""Power usage effectiveness (The Green Grid; ISO/IEC 30134-2), partial PUE and DCiE.

PUE = total facility energy / IT equipment energy over the same interval. The category
follows from where IT energy is metered: UPS output -> PUE1, PDU output -> PUE2, IT
equipment input -> PUE3. Partial PUE of a zone or subsystem = (IT + its infrastructure)
/ IT. A figure whose inputs are missing or too sparse is unknown with the reason; one
computed from stale or partial inputs is flagged. Both instantaneous (latest power
readings) and energy-based over any interval (twin.energy). See docs/twin.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from domain.site import MeterRole, Site
from twin.energy import Curve, bucket_energies

# Most specific IT metering first: PUE3 is closest to the IT load.
IT_METER_PREFERENCE = (
    (MeterRole.it_input, "PUE3"),
    (MeterRole.pdu_output, "PUE2"),
    (MeterRole.ups_output, "PUE1"),
)


@dataclass(frozen=True, slots=True)
class MeterReading:
    device_id: str
    metric: str
    value: float
    read_time: datetime

    def age_s(self, now: datetime) -> float:
        return (now - self.read_time).total_seconds()


@dataclass
class Quality:
    """What every figure carries about its inputs."""

    status: str = "ok"  # ok | flagged (stale/partial inputs) | unknown
    coverage: float | None = None  # share of the interval where every input is known
    missing_meters: list[str] = field(default_factory=list)
    stale_inputs: list[str] = field(default_factory=list)
    counter_resets: int = 0
    counter_wraps: int = 0
    gaps: int = 0
    methods: dict[str, str] = field(default_factory=dict)  # input -> counter|power_integration
    input_coverage: dict[str, float] = field(default_factory=dict)


@dataclass
class PueFigure:
    value: float | None
    category: str | None
    time: datetime | None
    inputs: list[MeterReading] = field(default_factory=list)
    stale_inputs: list[str] = field(default_factory=list)
    reason: str | None = None  # why value is None
    scope: str = "site"
    figure: str = "PUE"  # PUE or pPUE
    method: str = "instantaneous"  # instantaneous | energy
    total: float | None = None  # numerator: kW (instantaneous) or kWh (energy)
    it: float | None = None  # denominator, same unit
    start: datetime | None = None
    end: datetime | None = None
    quality: Quality = field(default_factory=Quality)

    @property
    def dcie(self) -> float | None:
        return None if not self.value else 1.0 / self.value


# -- scopes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One energy input: a meter (by device id) or a twin rollup column of a scope."""

    source: str  # "meter" | "rollup"
    id: str
    column: str = "power_kw"


@dataclass(frozen=True, slots=True)
class ScopeDef:
    name: str
    figure: str
    category: str | None
    it: Term | None
    extra: tuple[Term, ...]  # numerator terms besides IT (pPUE) or the facility (PUE)
    includes_it: bool  # numerator = IT + extra (pPUE) rather than extra alone (PUE)
    reason: str | None = None  # why the scope cannot be computed at all


def it_meter(site: Site) -> tuple[str, str] | None:
    for role, category in IT_METER_PREFERENCE:
        m = site.meter(role)
        if m is not None:
            return site.meter_id(m), category
    return None


def scopes(site: Site) -> dict[str, ScopeDef]:
    sid = site.site.id
    it = it_meter(site)
    it_term = Term("meter", it[0]) if it else None
    category = it[1] if it else None
    no_it = (
        None if it else ("site declares no IT energy meter (it_input, pdu_output or ups_output)")
    )
    fac = site.meter(MeterRole.facility_input)
    out = {
        "site": ScopeDef(
            "site",
            "PUE",
            category,
            it_term,
            (Term("meter", site.meter_id(fac)),) if fac else (),
            False,
            no_it
            or (None if fac else "site declares no facility_input meter (total facility energy)"),
        )
    }
    plant = site.meter(MeterRole.cooling_plant)
    subsystem_terms = {
        "chiller_plant": (Term("meter", site.meter_id(plant)),) if plant else (),
        "cdu_pumps": (Term("rollup", sid, "cdu_pump_kw"),),
        "crah_fans": (Term("rollup", sid, "crah_fan_kw"),),
    }
    subsystem_terms["all"] = sum(subsystem_terms.values(), ())
    for name, terms in subsystem_terms.items():
        why = no_it or (None if terms else "site declares no cooling_plant meter")
        out[f"cooling:{name}"] = ScopeDef(
            f"cooling:{name}", "pPUE", None, it_term, terms, True, why
        )
    for hall in site.halls:
        hid = f"{sid}/{hall.id}"
        out[f"hall:{hall.id}"] = ScopeDef(
            f"hall:{hall.id}",
            "pPUE",
            None,
            Term("rollup", hid, "power_kw"),
            (Term("rollup", hid, "cdu_pump_kw"), Term("rollup", hid, "crah_fan_kw")),
            True,
        )
    return out


def _label(t: Term) -> str:
    return t.id if t.source == "meter" else f"{t.id}:{t.column}"


# -- instantaneous ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TermValue:
    value_kw: float
    read_time: datetime
    stale: bool
    reading: MeterReading | None = None  # for meters: the reading itself


def instantaneous(scope: ScopeDef, lookup: Callable[[Term], TermValue | None]) -> PueFigure:
    fig = PueFigure(None, scope.category, None, scope=scope.name, figure=scope.figure)
    if scope.reason or scope.it is None:
        return _unknown(fig, scope.reason or "no IT term")
    values = {t: lookup(t) for t in (scope.it, *scope.extra)}
    fig.inputs = [v.reading for v in values.values() if v is not None and v.reading]
    fig.stale_inputs = [_label(t) for t, v in values.items() if v is not None and v.stale]
    fig.quality.stale_inputs = list(fig.stale_inputs)
    missing = [_label(t) for t, v in values.items() if v is None]
    if missing:
        fig.quality.missing_meters = missing
        what = (
            "power_kw reading yet from meter(s)"
            if all(t.source == "meter" for t, v in values.items() if v is None)
            else "value yet for"
        )
        return _unknown(fig, f"no {what} {missing}")
    it = values[scope.it]
    assert it is not None
    extra = sum(v.value_kw for t, v in values.items() if t != scope.it and v is not None)
    total = it.value_kw + extra if scope.includes_it else extra
    fig.total, fig.it = total, it.value_kw
    fig.time = min(v.read_time for v in values.values() if v is not None)
    if it.value_kw <= 0:
        return _unknown(fig, f"IT power is {it.value_kw} kW; {scope.figure} undefined")
    fig.value = total / it.value_kw
    fig.quality.status = "flagged" if fig.stale_inputs else "ok"
    return fig


def _unknown(fig: PueFigure, reason: str) -> PueFigure:
    fig.value, fig.reason = None, reason
    fig.quality.status = "unknown"
    return fig


# -- energy-based over an interval -----------------------------------------------------


@dataclass
class IntervalPue:
    overall: PueFigure
    series: list[PueFigure]


def interval_pue(
    scope: ScopeDef,
    curve_for: Callable[[Term], Curve],
    start: datetime,
    end: datetime,
    step_s: float | None,
    resolution_s: float,
    min_coverage: float,
    stale_after_s: float,
    now: datetime | None = None,
) -> IntervalPue:
    """Energy-based (p)PUE over [start, end), and per step when `step_s` is given."""

    def blank(a: datetime, b: datetime) -> PueFigure:
        return PueFigure(
            None,
            scope.category,
            None,
            scope=scope.name,
            figure=scope.figure,
            method="energy",
            start=a,
            end=b,
        )

    overall = blank(start, end)
    if scope.reason or scope.it is None:
        return IntervalPue(_unknown(overall, scope.reason or "no IT term"), [])
    terms = (scope.it, *scope.extra)
    curves = {_label(t): curve_for(t) for t in terms}
    span_s = (end - start).total_seconds()
    q = overall.quality
    q.methods = {k: c.method for k, c in curves.items()}
    q.counter_resets = sum(c.resets for c in curves.values())
    q.counter_wraps = sum(c.wraps for c in curves.values())
    q.gaps = sum(c.gaps for c in curves.values())
    ref_s = min(span_s, ((now or end) - start).total_seconds())
    q.stale_inputs = [
        k for k, c in curves.items() if c.n and ref_s - float(c.t_s[-1]) > stale_after_s
    ]
    q.missing_meters = [k for k, c in curves.items() if c.n == 0]
    overall.stale_inputs = list(q.stale_inputs)
    it_key = _label(scope.it)

    def fill(
        fig: PueFigure, energy: dict[str, float], covered: float, span: float, own: dict[str, float]
    ) -> PueFigure:
        fig.quality.coverage = covered / span if span > 0 else 0.0
        fig.quality.input_coverage = {k: v / span for k, v in own.items()} if span > 0 else {}
        if fig is not overall and q.missing_meters:
            fig.quality.missing_meters = list(q.missing_meters)
        if q.missing_meters:
            return _unknown(fig, f"no readings from {q.missing_meters} in [{start}, {end})")
        if fig.quality.coverage < min_coverage:
            detail = ", ".join(f"{k} {v:.1%}" for k, v in fig.quality.input_coverage.items())
            return _unknown(
                fig,
                f"only {fig.quality.coverage:.1%} of the interval is covered "
                f"by all inputs ({detail}); at least {min_coverage:.0%} needed",
            )
        it = energy[it_key]
        extra = sum(v for k, v in energy.items() if k != it_key)
        fig.total = it + extra if scope.includes_it else extra
        fig.it = it
        if it <= 0:
            return _unknown(fig, f"IT energy is {it} kWh; {scope.figure} undefined")
        fig.value = fig.total / it
        partial = fig.quality.coverage < 1.0 or q.stale_inputs or q.gaps
        fig.quality.status = "flagged" if partial else "ok"
        return fig

    whole = bucket_energies(curves, np.array([0.0, span_s]), resolution_s)
    fill(
        overall,
        {k: float(v[0]) for k, v in whole.energy_kwh.items()},
        float(whole.covered_s[0]),
        span_s,
        {k: float(v[0]) for k, v in whole.source_covered_s.items()},
    )
    series: list[PueFigure] = []
    if step_s:
        edges = np.append(np.arange(0.0, span_s, step_s), span_s)
        b = bucket_energies(curves, edges, min(resolution_s, step_s))
        for i in range(edges.size - 1):
            fig = blank(
                start + timedelta(seconds=float(edges[i])),
                start + timedelta(seconds=float(edges[i + 1])),
            )
            fig.quality.methods = q.methods
            fill(
                fig,
                {k: float(v[i]) for k, v in b.energy_kwh.items()},
                float(b.covered_s[i]),
                float(edges[i + 1] - edges[i]),
                {k: float(v[i]) for k, v in b.source_covered_s.items()},
            )
            series.append(fig)
    return IntervalPue(overall, series)
