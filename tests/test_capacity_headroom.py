"""Capacity headroom (issue 27) on a hand-built site against hand-computed figures."""

from __future__ import annotations

import math

import polars as pl
import pytest

from domain.plant import plant_capacity_factor
from domain.site import Site
from twin.capacity.headroom import headroom

PSU_EFF = 0.94  # domain/capacity.py PSU_EFF_AT_MAX_LOAD


def hand_site() -> Site:
    """1 hall, 2 rows of 2 racks; row 1 on a 2N PDU with a breaker, row 2 on a single feed."""
    return Site.model_validate(
        {
            "site": {"id": "s"},
            "templates": {
                "t": {
                    "nodes": 2,
                    "gpus_per_node": 8,
                    "gpu_tdp_w": 700.0,
                    "gpu_idle_w": 70.0,
                    "node_overhead_w": 2000.0,
                    "psus": 6,
                    "psu_rated_w": 3300.0,
                    "psu_redundancy": 1,
                    "rack_breaker_kw": 20.0,
                    "liquid_fraction": 0.75,
                }
            },
            "ups": {"rated_kw": 120.0, "modules": 3, "efficiency": 0.95},
            "plant": {"rated_kw": 100.0, "design_wetbulb_c": 28.0},
            "meters": [{"id": "u", "role": "facility_input"}],
            "halls": [
                {
                    "id": "h",
                    "rows": [
                        {
                            "id": "r1",
                            "template": "t",
                            "racks": ["a", "b"],
                            "pdu": "p1",
                            "cdu": "c1",
                        },
                        {
                            "id": "r2",
                            "template": "t",
                            "racks": ["c", "d"],
                            "pdu": "p2",
                            "cdu": "c2",
                        },
                    ],
                    "pdus": [
                        {
                            "id": "p1",
                            "rated_kw": 50.0,
                            "breaker_kw": 40.0,
                            "feeds": 2,
                            "efficiency": 0.98,
                        },
                        {"id": "p2", "rated_kw": 30.0, "efficiency": 0.96},
                    ],
                    "cdus": [
                        {"id": "c1", "rated_kw": 40.0, "nominal_flow_lpm": 100.0},
                        {"id": "c2", "rated_kw": 30.0, "nominal_flow_lpm": 100.0},
                    ],
                    "crahs": [
                        {"id": "a1", "rated_kw": 10.0, "fan_rated_w": 1000.0},
                        {"id": "a2", "rated_kw": 8.0, "fan_rated_w": 1000.0},
                    ],
                }
            ],
        }
    )


POWER = {"a": 10.0, "b": 12.0, "c": 14.0, "d": 16.0}


def state(**extra: float) -> pl.DataFrame:
    ids = [f"s/h/r{1 if r in 'ab' else 2}/{r}" for r in POWER]
    rows = {"id": ids, "metric": ["power_kw"] * 4, "value": list(POWER.values())}
    for key, v in extra.items():
        dev, metric = key.split("__")
        rows["id"].append(dev.replace("_", "/"))
        rows["metric"].append(metric)
        rows["value"].append(v)
    return pl.DataFrame(rows)


def row(df: pl.DataFrame, kind: str, id_: str, resource: str, weather: str | None = None) -> dict:
    sel = df.filter(
        (pl.col("kind") == kind) & (pl.col("id") == id_) & (pl.col("resource") == resource)
    )
    if weather is not None:
        sel = sel.filter(pl.col("weather") == weather)
    assert sel.height == 1, (kind, id_, resource, sel)
    return sel.row(0, named=True)


def test_power_headroom_n_and_n1_by_hand() -> None:
    df = headroom(hand_site(), state())
    # rack: 6 PSUs x 3.3 kW / 0.94 = 21.06 kW > breaker 20 -> breaker binds; N-1: 5 x 3.3 /
    # 0.94 = 17.55 kW < 20 -> PSUs bind
    rk = row(df, "rack", "s/h/r2/d", "power")
    assert rk["used_kw"] == 16.0
    assert rk["capacity_n_kw"] == pytest.approx(20.0)
    assert rk["capacity_n1_kw"] == pytest.approx(5 * 3.3 / PSU_EFF)
    assert rk["headroom_n1_kw"] == pytest.approx(5 * 3.3 / PSU_EFF - 16.0)
    assert rk["limiting"] == "rack_breaker"
    # PDU 1: 2N feeds of min(50, breaker 40) -> N 80, N-1 40; used 22
    p1 = row(df, "pdu", "s/h/p1", "power")
    assert (p1["used_kw"], p1["capacity_n_kw"], p1["capacity_n1_kw"]) == (22.0, 80.0, 40.0)
    assert p1["limiting"] == "pdu_breaker"
    # PDU 2: one feed of 30 kW -> N-1 = 0; used 30 -> headroom 0 and -30
    p2 = row(df, "pdu", "s/h/p2", "power")
    assert (p2["headroom_n_kw"], p2["headroom_n1_kw"]) == (0.0, -30.0)
    # row 2: min(racks 2 x 20, PDU 30) = 30; N-1: min(2 x 17.55, 0) = 0
    r2 = row(df, "row", "s/h/r2", "power")
    assert (r2["capacity_n_kw"], r2["capacity_n1_kw"], r2["limiting"]) == (30.0, 0.0, "pdu")
    # row 1: min(40, 80) = 40 (racks); N-1: min(35.1, 40)
    r1 = row(df, "row", "s/h/r1", "power")
    assert r1["capacity_n_kw"] == 40.0
    assert r1["capacity_n1_kw"] == pytest.approx(2 * 5 * 3.3 / PSU_EFF)
    # UPS: output = 22 / 0.98 + 30 / 0.96; 3 modules of 40 kW -> N-1 = 80
    ups = row(df, "ups", "s/facility/ups", "power")
    assert ups["used_kw"] == pytest.approx(22 / 0.98 + 30 / 0.96)
    assert (ups["capacity_n_kw"], ups["capacity_n1_kw"]) == (120.0, 80.0)
    # hall: PDUs 80 + 30, N-1 40 + 0
    hall = row(df, "hall", "s/h", "power")
    assert (hall["used_kw"], hall["capacity_n_kw"], hall["capacity_n1_kw"]) == (52.0, 110.0, 40.0)


def test_cooling_headroom_derived_and_measured() -> None:
    df = headroom(hand_site(), state())
    # CDU 1 takes 0.75 x (10 + 12) = 16.5 kW; single unit: N-1 = 0
    c1 = row(df, "cdu", "s/h/c1", "cooling")
    assert (c1["used_kw"], c1["headroom_n_kw"], c1["headroom_n1_kw"]) == (16.5, 23.5, -16.5)
    # hall air 0.25 x 52 = 13 kW shared by 2 CRAHs; group N 18, N-1 18 - 10 = 8
    assert row(df, "crah", "s/h/a2", "cooling")["used_kw"] == pytest.approx(6.5)
    air = row(df, "hall", "s/h", "cooling_air")
    assert (air["used_kw"], air["capacity_n_kw"], air["capacity_n1_kw"]) == (13.0, 18.0, 8.0)
    liq = row(df, "hall", "s/h", "cooling_liquid")
    assert (liq["used_kw"], liq["capacity_n_kw"], liq["capacity_n1_kw"]) == (39.0, 70.0, 30.0)
    # measured readings win over derived ones
    df = headroom(hand_site(), state(s_h_c1__heat_kw=18.0, s_h_a1__heat_kw=9.0))
    assert row(df, "cdu", "s/h/c1", "cooling")["used_kw"] == 18.0
    assert row(df, "crah", "s/h/a1", "cooling")["used_kw"] == 9.0
    assert row(df, "hall", "s/h", "cooling_liquid")["used_kw"] == pytest.approx(18.0 + 22.5)


def test_plant_at_current_and_design_day_wetbulb() -> None:
    site = hand_site()
    df = headroom(site, state(**{"s_plant_chiller-plant__outdoor_wetbulb_c": 15.0}))
    # 3 units of 50 kW; at 15 degC wet-bulb the condenser water (19 degC) is below the
    # rating condition: no derating
    cur = row(df, "plant", "s/plant/chiller-plant", "cooling", "current")
    assert (cur["capacity_n_kw"], cur["capacity_n1_kw"], cur["used_kw"]) == (150.0, 100.0, 52.0)
    # design day 28 degC: ECWT 32 degC, 2.6 K above 29.4 -> 1 - 0.015 x 2.6 = 0.961
    des = row(df, "plant", "s/plant/chiller-plant", "cooling", "design_day")
    assert des["capacity_n_kw"] == pytest.approx(150.0 * 0.961)
    assert des["capacity_n1_kw"] == pytest.approx(100.0 * 0.961)
    assert plant_capacity_factor(28.0) == pytest.approx(0.961)


def test_missing_reading_is_unknown_not_low() -> None:
    st = state().filter(pl.col("id") != "s/h/r1/a")
    df = headroom(hand_site(), st)
    assert row(df, "rack", "s/h/r1/a", "power")["used_kw"] is None
    for kind, id_, res in (("pdu", "s/h/p1", "power"), ("ups", "s/facility/ups", "power")):
        assert row(df, kind, id_, res)["headroom_n_kw"] is None
    # the other row is still known
    assert row(df, "pdu", "s/h/p2", "power")["used_kw"] == 30.0
    cur = row(df, "plant", "s/plant/chiller-plant", "cooling", "current")
    assert cur["capacity_n_kw"] is None  # no wet-bulb reading
    assert not math.isnan(row(df, "cdu", "s/h/c2", "cooling")["used_kw"])
