"""Capacity headroom of every power and cooling element of a site, N and N-1.

`headroom(site, state)` is a plain function over the site model and a state frame, so the
live service (twin/capacity/service.py) and what-if runs call the same code.

State frame (long form, columns `id: str`, `metric: str`, `value: f64`):

| id | metric | meaning |
|---|---|---|
| rack id (`site/hall/row/rack`) | `power_kw` | rack input power (PSU inputs); required for power |
| CDU id (`site/hall/cdu`) | `heat_kw` | liquid heat the CDU removes (measured); else derived |
| CRAH id (`site/hall/crah`) | `heat_kw` | air heat the unit removes (measured); else derived |
| plant id (`site/plant/<id>`) | `heat_kw` | chilled-water load (measured); else derived |
| plant id | `outdoor_wetbulb_c` | outdoor wet-bulb now (current-weather plant capacity) |

Derived loads: a CDU's heat = its racks' power x liquid fraction; a hall's air heat =
its racks' power x (1 - liquid fraction), shared evenly by its CRAHs; the plant's load =
the IT power of the site. A rack with no power reading makes every figure above it
unknown (null), never silently low.

Capacities (kW). N: every unit healthy. N-1: the element's largest redundant unit lost
(a PSU of the rack, a PDU feed, a UPS module, a chiller; for a hall, its largest CDU or
CRAH); a single unit without a spare (one CDU, one CRAH) has N-1 capacity 0.

| kind | resource | N | N-1 |
|---|---|---|---|
| rack | power | min(breaker, PSUs x rating / PSU efficiency) | min(breaker, (PSUs - 1) x ...) |
| pdu | power | feeds x min(rated, breaker) | (feeds - 1) x min(rated, breaker) |
| row | power | min(sum of its racks' N, its PDU's N) | min(sum of its racks' N-1, its PDU's N-1) |
| ups | power | rated | rated x (modules - 1) / modules |
| hall | power | sum of its PDUs' N | sum of its PDUs' N-1 |
| cdu | cooling | rated | 0 |
| crah | cooling | rated | 0 |
| hall | cooling_liquid / cooling_air | sum of CDUs / CRAHs | sum less the largest unit |
| plant | cooling (current, design_day) | units x share x rated x derating(wet-bulb) | units - 1 |

Used power: PDU output = its racks' input; UPS output = PDU outputs / PDU efficiency.
Headroom = capacity - used (negative: over capacity).
"""

from __future__ import annotations

import polars as pl

from domain.capacity import PSU_EFF_AT_MAX_LOAD
from domain.plant import CHILLER_UNIT_FRACTION, CHILLER_UNITS, plant_capacity_factor
from domain.site import Site

KINDS = ("rack", "row", "pdu", "ups", "hall", "cdu", "crah", "plant")
RESOURCES = ("power", "cooling", "cooling_liquid", "cooling_air")
WEATHERS = ("current", "design_day")
SCHEMA = {
    "kind": pl.String,
    "id": pl.String,
    "parent": pl.String,
    "resource": pl.String,
    "weather": pl.String,  # plant rows only: capacity at the current or design-day wet-bulb
    "used_kw": pl.Float64,
    "capacity_n_kw": pl.Float64,
    "capacity_n1_kw": pl.Float64,
    "headroom_n_kw": pl.Float64,
    "headroom_n1_kw": pl.Float64,
    "limiting": pl.String,  # what sets the N capacity
}
STATE_SCHEMA = {"id": pl.String, "metric": pl.String, "value": pl.Float64}


def _racks(site: Site) -> pl.DataFrame:
    sid = site.site.id
    rows = []
    for r in site.racks():
        t = r.template
        psu_kw = t.psu_rated_w / 1000.0 / PSU_EFF_AT_MAX_LOAD  # at the PSU inputs
        breaker = t.rack_breaker_kw if t.rack_breaker_kw is not None else float("inf")
        rows.append(
            {
                "id": r.prefix,
                "row": f"{sid}/{r.hall}/{r.row}",
                "hall": f"{sid}/{r.hall}",
                "pdu": f"{sid}/{r.hall}/{r.pdu}",
                "cdu": f"{sid}/{r.hall}/{r.cdu}",
                "liquid_fraction": t.liquid_fraction,
                "cap_n": min(breaker, t.psus * psu_kw),
                "cap_n1": min(breaker, (t.psus - 1) * psu_kw),
                "limiting": "rack_breaker" if breaker <= t.psus * psu_kw else "psus",
            }
        )
    return pl.DataFrame(rows)


def _state_value(state: pl.DataFrame, metric: str) -> pl.DataFrame:
    return state.filter(pl.col("metric") == metric).group_by("id").agg(pl.col("value").last())


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


def _finish(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        headroom_n_kw=pl.col("capacity_n_kw") - pl.col("used_kw"),
        headroom_n1_kw=pl.col("capacity_n1_kw") - pl.col("used_kw"),
    ).select(list(SCHEMA))


def _sum_strict(col: str) -> pl.Expr:
    """Sum that is null when any input is null (unknown, not low)."""
    return _sum_strict_expr(pl.col(col))


def _elements(df: pl.DataFrame, kind: str, **columns: str | pl.Expr) -> pl.DataFrame:
    """`df`'s rows as capacity elements of `kind`: `columns` give id, parent, resource,
    capacity_n_kw, capacity_n1_kw and limiting (strings name columns of `df`, as in
    `select`); used_kw is `df`'s, weather is for the plant only."""
    return df.select(
        kind=pl.lit(kind),
        id=columns["id"],
        parent=columns["parent"],
        resource=columns["resource"],
        weather=pl.lit(None, pl.String),
        used_kw="used_kw",
        capacity_n_kw=columns["capacity_n_kw"],
        capacity_n1_kw=columns["capacity_n1_kw"],
        limiting=columns["limiting"],
    )


def headroom(site: Site, state: pl.DataFrame) -> pl.DataFrame:
    """One row per (element, resource[, weather]); columns as in SCHEMA."""
    state = state.select(
        pl.col("id").cast(pl.String), pl.col("metric").cast(pl.String), pl.col("value")
    ).with_columns(pl.col("value").cast(pl.Float64).fill_nan(None))
    sid = site.site.id
    racks = _racks(site).join(
        _state_value(state, "power_kw").rename({"value": "used_kw"}), on="id", how="left"
    )
    rack_out = _elements(
        racks,
        "rack",
        id="id",
        parent="row",
        resource=pl.lit("power"),
        capacity_n_kw="cap_n",
        capacity_n1_kw="cap_n1",
        limiting="limiting",
    )

    # PDUs: output = their racks' input; N = feeds x min(rated, breaker)
    pdu_rows, cdu_rows, crah_rows = [], [], []
    for hall in site.halls:
        hid = f"{sid}/{hall.id}"
        for p in hall.pdus:
            per_feed = min(p.rated_kw, p.breaker_kw or p.rated_kw)
            lim = "pdu_breaker" if per_feed < p.rated_kw else "pdu_rating"
            pdu_rows.append(
                {
                    "id": f"{hid}/{p.id}",
                    "hall": hid,
                    "efficiency": p.efficiency,
                    "cap_n": p.feeds * per_feed,
                    "cap_n1": (p.feeds - 1) * per_feed,
                    "limiting": lim,
                }
            )
        for c in hall.cdus:
            cdu_rows.append({"id": f"{hid}/{c.id}", "hall": hid, "cap_n": c.rated_kw})
        for a in hall.crahs:
            crah_rows.append({"id": f"{hid}/{a.id}", "hall": hid, "cap_n": a.rated_kw})
    pdus = pl.DataFrame(pdu_rows).join(
        racks.group_by("pdu").agg(used_kw=_sum_strict("used_kw")),
        left_on="id",
        right_on="pdu",
        how="left",
    )
    pdu_out = _elements(
        pdus,
        "pdu",
        id="id",
        parent="hall",
        resource=pl.lit("power"),
        capacity_n_kw="cap_n",
        capacity_n1_kw="cap_n1",
        limiting="limiting",
    )

    # rows: their racks, and their PDU's capacity
    rows = (
        racks.group_by("row", "hall", "pdu", maintain_order=True)
        .agg(
            used_kw=_sum_strict("used_kw"), rk_n=pl.col("cap_n").sum(), rk_n1=pl.col("cap_n1").sum()
        )
        .join(pdus.select("id", p_n="cap_n", p_n1="cap_n1"), left_on="pdu", right_on="id")
    )
    row_out = _elements(
        rows,
        "row",
        id="row",
        parent="hall",
        resource=pl.lit("power"),
        capacity_n_kw=pl.min_horizontal("rk_n", "p_n"),
        capacity_n1_kw=pl.min_horizontal("rk_n1", "p_n1"),
        limiting=pl.when(pl.col("p_n") < pl.col("rk_n"))
        .then(pl.lit("pdu"))
        .otherwise(pl.lit("racks")),
    )

    # UPS output = PDU inputs
    ups = site.ups
    ups_used = pdus.select(_sum_strict_expr(pl.col("used_kw") / pl.col("efficiency"))).item()
    ups_out = _frame(
        [
            {
                "kind": "ups",
                "id": f"{sid}/facility/{ups.id}",
                "parent": sid,
                "resource": "power",
                "weather": None,
                "used_kw": ups_used,
                "capacity_n_kw": ups.rated_kw,
                "capacity_n1_kw": ups.rated_kw * (ups.modules - 1) / ups.modules,
                "limiting": "ups_rating",
            }
        ]
    )

    # halls: power against their PDUs
    hall_power = pdus.group_by("hall", maintain_order=True).agg(
        used_kw=_sum_strict("used_kw"), cap_n=pl.col("cap_n").sum(), cap_n1=pl.col("cap_n1").sum()
    )
    hall_power_out = _elements(
        hall_power,
        "hall",
        id="hall",
        parent=pl.lit(sid),
        resource=pl.lit("power"),
        capacity_n_kw="cap_n",
        capacity_n1_kw="cap_n1",
        limiting=pl.lit("pdus"),
    )

    # CDUs: measured heat, else their racks' liquid share
    heat = _state_value(state, "heat_kw").rename({"value": "measured"})
    rack_liq = racks.group_by("cdu").agg(
        derived=_sum_strict_expr(pl.col("used_kw") * pl.col("liquid_fraction"))
    )
    cdus = (
        _cdu_frame(cdu_rows)
        .join(rack_liq, left_on="id", right_on="cdu", how="left")
        .join(heat, on="id", how="left")
        .with_columns(used_kw=pl.coalesce("measured", "derived"))
    )
    cdu_out = _elements(
        cdus,
        "cdu",
        id="id",
        parent="hall",
        resource=pl.lit("cooling"),
        capacity_n_kw="cap_n",
        capacity_n1_kw=pl.lit(0.0),
        limiting=pl.lit("cdu_rating"),
    )

    # CRAHs: measured, else the hall's air share split evenly
    hall_air = racks.group_by("hall").agg(
        air=_sum_strict_expr(pl.col("used_kw") * (1.0 - pl.col("liquid_fraction")))
    )
    crahs = (
        _cdu_frame(crah_rows).join(hall_air, on="hall", how="left").join(heat, on="id", how="left")
    )
    crahs = crahs.with_columns(
        used_kw=pl.coalesce("measured", pl.col("air") / pl.len().over("hall"))
    )
    crah_out = _elements(
        crahs,
        "crah",
        id="id",
        parent="hall",
        resource=pl.lit("cooling"),
        capacity_n_kw="cap_n",
        capacity_n1_kw=pl.lit(0.0),
        limiting=pl.lit("crah_rating"),
    )

    # halls: cooling per medium, N and N-1 (the largest unit lost)
    groups = []
    for resource, units in (("cooling_liquid", cdus), ("cooling_air", crahs)):
        if units.height:
            groups.append(
                units.group_by("hall", maintain_order=True).agg(
                    used_kw=_sum_strict("used_kw"),
                    capacity_n_kw=pl.col("cap_n").sum(),
                    capacity_n1_kw=pl.col("cap_n").sum() - pl.col("cap_n").max(),
                    resource=pl.lit(resource),
                )
            )
    hall_cool_out = (
        pl.concat(groups).select(
            kind=pl.lit("hall"),
            id="hall",
            parent=pl.lit(sid),
            resource="resource",
            weather=pl.lit(None, pl.String),
            used_kw="used_kw",
            capacity_n_kw="capacity_n_kw",
            capacity_n1_kw="capacity_n1_kw",
            limiting=pl.when(pl.col("resource") == "cooling_liquid")
            .then(pl.lit("cdus"))
            .otherwise(pl.lit("crahs")),
        )
        if groups
        else _frame([]).drop("headroom_n_kw", "headroom_n1_kw")
    )

    # plant: measured chilled-water load, else the site's IT power
    plant_id = site.plant_id()
    measured = heat.filter(pl.col("id") == plant_id)["measured"]
    plant_used = measured[0] if measured.len() else racks.select(_sum_strict("used_kw")).item()
    wb_now = _state_value(state, "outdoor_wetbulb_c").filter(pl.col("id") == plant_id)["value"]
    wetbulb = {
        "current": float(wb_now[0]) if wb_now.len() and wb_now[0] is not None else float("nan"),
        "design_day": site.plant.design_wetbulb_c,
    }
    unit_kw = CHILLER_UNIT_FRACTION * site.plant.rated_kw
    plant_rows = []
    for weather, wb in wetbulb.items():
        f = plant_capacity_factor(wb)
        plant_rows.append(
            {
                "kind": "plant",
                "id": plant_id,
                "parent": sid,
                "resource": "cooling",
                "weather": weather,
                "used_kw": plant_used,
                "capacity_n_kw": None if f != f else CHILLER_UNITS * unit_kw * f,
                "capacity_n1_kw": None if f != f else (CHILLER_UNITS - 1) * unit_kw * f,
                "limiting": "chillers",
            }
        )
    base_cols = [c for c in SCHEMA if not c.startswith("headroom")]
    parts = [
        f.select(base_cols).cast({c: SCHEMA[c] for c in base_cols})
        for f in (
            rack_out,
            row_out,
            pdu_out,
            ups_out,
            hall_power_out,
            cdu_out,
            crah_out,
            hall_cool_out,
            _frame(plant_rows),
        )
    ]
    return _finish(pl.concat(parts))


def _sum_strict_expr(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.is_null().any()).then(None).otherwise(expr.sum())


def _cdu_frame(rows: list[dict]) -> pl.DataFrame:
    schema = {"id": pl.String, "hall": pl.String, "cap_n": pl.Float64}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
