"""Capacity check of a site at its maximum load: every GPU at its TDP and every node's
overhead at full activity. Errors name the element and the overload; warnings name what
loses its redundancy when one unit (a PSU, a CRAH) fails (N-1).

Deliberately conservative and simple (no simulator imports: the domain layer imports
nothing of the project): PSU input = DC load / PSU_EFF_AT_MAX_LOAD, PDU input = output /
PDU efficiency, liquid heat = rack input x liquid fraction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from domain.site import Site

# 80 PLUS Titanium PSUs are >= 94 % efficient over 20-100 % load; the lower end is the
# conservative figure for sizing what is upstream of them
PSU_EFF_AT_MAX_LOAD = 0.94


@dataclass
class CapacityReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # figures at maximum load, for docs and tests
    rack_dc_max_kw: dict[str, float] = field(default_factory=dict)  # per template
    psu_load_max: dict[str, float] = field(default_factory=dict)  # fraction of rating


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f}%"


def check_capacity(site: Site) -> CapacityReport:
    rep = CapacityReport()
    rack_in_kw: dict[str, float] = {}  # template -> rack input at max load
    for name, t in site.templates.items():
        dc_kw = t.nodes * (t.gpus_per_node * t.gpu_tdp_w + t.node_overhead_w) / 1000.0
        rated_kw = t.psu_rated_w / 1000.0
        per_psu = dc_kw / t.psus
        rep.rack_dc_max_kw[name] = dc_kw
        rep.psu_load_max[name] = per_psu / rated_kw
        rack_in_kw[name] = dc_kw / PSU_EFF_AT_MAX_LOAD
        where = f"templates.{name}"
        if per_psu > rated_kw:
            rep.errors.append(
                f"{where}: PSU overload at the site's maximum load: each of the rack's "
                f"{t.psus} PSUs (psu_rated_w = {t.psu_rated_w:.0f} W) would carry "
                f"{per_psu * 1000:.0f} W, {_pct(per_psu / rated_kw)} of its rating "
                f"(rack DC load {dc_kw:.1f} kW > {t.psus} x {rated_kw:.2f} kW); "
                f"needs at least {int(-(-dc_kw // rated_kw))} PSUs of that rating"
            )
            continue
        if t.psu_redundancy >= t.psus:
            rep.errors.append(f"{where}: psu_redundancy {t.psu_redundancy} >= psus {t.psus}")
        elif dc_kw > (t.psus - t.psu_redundancy) * rated_kw:
            rep.errors.append(
                f"{where}: PSU redundancy N+{t.psu_redundancy} not met at the site's maximum "
                f"load: {t.psus - t.psu_redundancy} PSUs would carry {dc_kw:.1f} kW, "
                f"{_pct(dc_kw / ((t.psus - t.psu_redundancy) * rated_kw))} of their rating"
            )
        elif t.psus == 1 or dc_kw > (t.psus - 1) * rated_kw:
            rep.warnings.append(
                f"{where}: no PSU redundancy (N-1): with one of {t.psus} PSUs failed the "
                f"rest carry {_pct(dc_kw / max(t.psus - 1, 1e-9) / rated_kw)} of rating"
            )
        if t.rack_breaker_kw is not None and rack_in_kw[name] > t.rack_breaker_kw:
            rep.errors.append(
                f"{where}: rack feed (breaker) overload at the site's maximum load: "
                f"{rack_in_kw[name]:.1f} kW > rack_breaker_kw {t.rack_breaker_kw:.1f} kW"
            )
    if rep.errors:  # upstream figures would only repeat the PSU error
        return rep
    pdu_out: dict[str, float] = defaultdict(float)
    cdu_heat: dict[str, float] = defaultdict(float)
    hall_air: dict[str, float] = defaultdict(float)
    for hall in site.halls:
        for row in hall.rows:
            t = site.templates[row.template]
            kw = rack_in_kw[row.template] * len(row.racks)
            pdu_out[f"{hall.id}/{row.pdu}"] += kw
            cdu_heat[f"{hall.id}/{row.cdu}"] += kw * t.liquid_fraction
            hall_air[hall.id] += kw * (1.0 - t.liquid_fraction)
    ups_out = 0.0
    for hall in site.halls:
        for p in hall.pdus:
            out = pdu_out.get(f"{hall.id}/{p.id}", 0.0)
            ups_out += out / p.efficiency
            if p.breaker_kw is not None and out > p.breaker_kw:  # issue 27 (capacity)
                rep.errors.append(
                    f"halls.{hall.id}.pdus.{p.id}: PDU breaker overload at the site's maximum "
                    f"load: {out:.1f} kW > breaker_kw {p.breaker_kw:.1f} kW"
                )
            if out > p.rated_kw:
                rep.errors.append(
                    f"halls.{hall.id}.pdus.{p.id}: PDU overload at the site's maximum load: "
                    f"{out:.1f} kW > rated_kw {p.rated_kw:.1f} kW ({_pct(out / p.rated_kw)})"
                )
        for c in hall.cdus:
            q = cdu_heat.get(f"{hall.id}/{c.id}", 0.0)
            if q > c.rated_kw:
                rep.errors.append(
                    f"halls.{hall.id}.cdus.{c.id}: CDU capacity overload at the site's maximum "
                    f"load: {q:.1f} kW of liquid heat > rated_kw {c.rated_kw:.1f} kW "
                    f"({_pct(q / c.rated_kw)})"
                )
        air = hall_air.get(hall.id, 0.0)
        if hall.crahs and air > 0:
            total = sum(a.rated_kw for a in hall.crahs)
            if air > total:
                rep.errors.append(
                    f"halls.{hall.id}.crahs: air-side overload at the site's maximum load: "
                    f"{air:.1f} kW > {total:.1f} kW of CRAH capacity"
                )
            elif air > total - max(a.rated_kw for a in hall.crahs):
                rep.warnings.append(
                    f"halls.{hall.id}.crahs: no CRAH redundancy (N-1): {air:.1f} kW of air "
                    f"heat > {total - max(a.rated_kw for a in hall.crahs):.1f} kW with the "
                    "largest unit failed"
                )
    if ups_out > site.ups.rated_kw:
        rep.errors.append(
            f"ups.{site.ups.id}: UPS overload at the site's maximum load: {ups_out:.1f} kW > "
            f"rated_kw {site.ups.rated_kw:.1f} kW ({_pct(ups_out / site.ups.rated_kw)})"
        )
    else:  # a new, full battery must carry the maximum load through the ride-through
        bat = site.ups.battery
        runtime = site.ups.battery_runtime_s(ups_out)
        if ups_out > 0 and runtime < bat.required_ride_through_s:
            rep.errors.append(
                f"ups.{site.ups.id}.battery: runtime {runtime:.0f} s at the site's maximum "
                f"load ({ups_out:.1f} kW, new battery) is below required_ride_through_s "
                f"{bat.required_ride_through_s:.0f} s: a larger battery is needed"
            )
    heat = ups_out / site.ups.efficiency
    if heat > site.plant.rated_kw:
        rep.errors.append(
            f"plant.{site.plant.id}: cooling overload at the site's maximum load: "
            f"{heat:.1f} kW of heat > rated_kw {site.plant.rated_kw:.1f} kW"
        )
    return rep
