"""PUE on hand-computed cases, through the real store: readings are written as telemetry
batches into DuckDB and the twin integrates them. Every expected figure below is worked
out by hand from the readings; agreement is to 1e-9 relative."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from domain.contract import Kind, SampleColumns, TelemetryBatch
from domain.site import Site, load_site
from ingest.store import Store
from twin.state import Twin
from twin.twin_config import TwinConfig

T0 = datetime(2025, 3, 1, 12, 0, 0)
FAC = "sv1/facility/utility"
IT = "sv1/facility/ups-out"
REL = 1e-9


def ms(t_s: float) -> int:
    return int((T0 - datetime(1970, 1, 1)).total_seconds() * 1000 + round(t_s * 1000))


def write(store: Store, device: str, metric: str, t_s, values) -> None:
    t_s, values = list(t_s), list(values)
    cols = SampleColumns(
        device_id=[device] * len(t_s),
        metric=[metric] * len(t_s),
        value=[float(v) for v in values],
        read_time_ms=[ms(t) for t in t_s],
    )
    store.write(
        [
            TelemetryBatch(
                collector="hand",
                kind=Kind.facility,
                site="sv1",
                rack="facility",
                seq=0,
                interval_s=10,
                sent_time_ms=ms(0),
                samples=cols,
            )
        ],
        [],
        {},
    )


@pytest.fixture
def twin(tmp_path, site) -> Twin:
    store = Store(tmp_path / "pue.duckdb")
    yield Twin(site, store, config=TwinConfig(telemetry_interval_s=10, stale_intervals=3))
    store.close()


def interval(twin: Twin, a_s: float, b_s: float, step_s: float | None = None, now_s=None):
    now = T0 + timedelta(seconds=b_s if now_s is None else now_s)
    return twin.pue_interval(
        "site", T0 + timedelta(seconds=a_s), T0 + timedelta(seconds=b_s), step_s, now=now
    )


T = np.arange(0, 3601, 10.0)  # one reading every 10 s for an hour


def test_constant_loads_power_only(twin):
    write(twin.store, FAC, "power_kw", T, np.full(T.size, 1500.0))
    write(twin.store, IT, "power_kw", T, np.full(T.size, 1000.0))
    res = interval(twin, 0, 3600, step_s=900)
    o = res.overall
    assert o.value == pytest.approx(1.5, rel=REL)
    assert o.total == pytest.approx(1500.0, rel=REL)  # kWh over the hour
    assert o.it == pytest.approx(1000.0, rel=REL)
    assert o.dcie == pytest.approx(1 / 1.5, rel=REL)
    assert o.category == "PUE1" and o.method == "energy"
    assert o.quality.status == "ok" and o.quality.coverage == 1.0
    assert o.quality.methods == {IT: "power_integration", FAC: "power_integration"}
    assert [f.value for f in res.series] == pytest.approx([1.5] * 4, rel=REL)
    assert [f.it for f in res.series] == pytest.approx([250.0] * 4, rel=REL)


def test_constant_loads_counters(twin):
    write(twin.store, FAC, "energy_kwh", T, 12_000.0 + 1500.0 * T / 3600)
    write(twin.store, IT, "energy_kwh", T, 7_000.0 + 1000.0 * T / 3600)
    o = interval(twin, 0, 3600).overall
    assert o.value == pytest.approx(1.5, rel=REL)
    assert o.quality.methods == {IT: "counter", FAC: "counter"}
    # a sub-interval whose ends fall between readings: counters interpolate linearly
    o = interval(twin, 5, 3595).overall
    assert o.value == pytest.approx(1.5, rel=REL)
    assert o.it == pytest.approx(1000.0 * 3590 / 3600, rel=REL)


def test_step_change_power_is_trapezoid(twin):
    fac = np.where(T < 1800, 1200.0, 1800.0)  # steps at the reading at t = 1800 s
    write(twin.store, FAC, "power_kw", T, fac)
    write(twin.store, IT, "power_kw", T, np.full(T.size, 1000.0))
    res = interval(twin, 0, 3600, step_s=1800)
    # 179 steps at 1200 kW, one ramp step (1200+1800)/2, 180 steps at 1800 kW; 10 s each
    e_fac = (1200 * 179 + 1500 + 1800 * 180) * 10 / 3600
    assert res.overall.total == pytest.approx(e_fac, rel=REL)
    assert res.overall.value == pytest.approx(e_fac / 1000.0, rel=REL)
    assert res.series[0].total == pytest.approx((1200 * 179 + 1500) * 10 / 3600, rel=REL)
    assert res.series[1].total == pytest.approx(1800 * 180 * 10 / 3600, rel=REL)
    assert res.series[1].value == pytest.approx(1.8, rel=REL)


def test_step_change_counters_exact(twin):
    e = np.where(T <= 1800, 1200.0 * T / 3600, 600.0 + 1800.0 * (T - 1800) / 3600)
    write(twin.store, FAC, "energy_kwh", T, e)
    write(twin.store, IT, "energy_kwh", T, 1000.0 * T / 3600)
    res = interval(twin, 0, 3600, step_s=1800)
    assert res.overall.value == pytest.approx(1.5, rel=REL)
    assert [f.value for f in res.series] == pytest.approx([1.2, 1.8], rel=REL)


def test_counter_reset_mid_interval_filled_from_power(twin):
    # the register restarts from 0 at t = 1805 s; power readings cover that step
    e = np.where(T <= 1800, 5000.0 + 1500.0 * T / 3600, 1500.0 * (T - 1805) / 3600)
    write(twin.store, FAC, "energy_kwh", T, e)
    write(twin.store, FAC, "power_kw", T, np.full(T.size, 1500.0))
    write(twin.store, IT, "energy_kwh", T, 1000.0 * T / 3600)
    o = interval(twin, 0, 3600).overall
    assert o.quality.counter_resets == 1
    assert o.total == pytest.approx(1500.0, rel=REL)
    assert o.value == pytest.approx(1.5, rel=REL)
    assert o.quality.coverage == 1.0


def test_counter_reset_without_power_loses_only_that_step(twin):
    e = np.where(T <= 1800, 5000.0 + 1500.0 * T / 3600, 1500.0 * (T - 1805) / 3600)
    write(twin.store, FAC, "energy_kwh", T, e)
    write(twin.store, IT, "energy_kwh", T, 1000.0 * T / 3600)
    o = interval(twin, 0, 3600).overall
    # the 60 s cell holding the reset step is unknown; both meters drop it
    assert o.quality.coverage == pytest.approx(3540 / 3600, rel=REL)
    assert o.total == pytest.approx(1500.0 * 3540 / 3600, rel=REL)
    assert o.it == pytest.approx(1000.0 * 3540 / 3600, rel=REL)
    assert o.value == pytest.approx(1.5, rel=REL)
    assert o.quality.status == "flagged"


def test_counter_wrap_with_declared_rollover(tmp_path):
    site = load_site_with_rollover(10_000.0)
    store = Store(tmp_path / "wrap.duckdb")
    try:
        twin = Twin(site, store, config=TwinConfig())
        write(store, FAC, "energy_kwh", T, (9_700.0 + 1500.0 * T / 3600) % 10_000.0)
        write(store, IT, "energy_kwh", T, 1000.0 * T / 3600)
        o = interval(twin, 0, 3600).overall
        assert o.quality.counter_wraps == 1 and o.quality.counter_resets == 0
        assert o.value == pytest.approx(1.5, rel=REL)
    finally:
        store.close()


def load_site_with_rollover(rollover: float) -> Site:
    from domain.site import EXAMPLE_SITE

    site = load_site(EXAMPLE_SITE)
    meters = [m.model_copy(update={"energy_rollover_kwh": rollover}) for m in site.meters]
    return site.model_copy(update={"meters": meters})


def test_missing_it_meter_is_unknown_with_reason(twin):
    write(twin.store, FAC, "power_kw", T, np.full(T.size, 1500.0))
    o = interval(twin, 0, 3600).overall
    assert o.value is None and o.dcie is None
    assert o.quality.status == "unknown"
    assert o.quality.missing_meters == [IT]
    assert IT in o.reason and "no readings" in o.reason


def test_site_without_it_meter_declared(tmp_path, site):
    no_it = site.model_copy(
        update={"meters": [m for m in site.meters if m.role.value != "ups_output"]}
    )
    store = Store(tmp_path / "noit.duckdb")
    try:
        twin = Twin(no_it, store)
        o = twin.pue_interval("site", T0, T0 + timedelta(hours=1)).overall
        assert o.value is None and "declares no IT energy meter" in o.reason
        tick = twin.tick(ms(0))
        assert tick.pue["site"].value is None
        assert "declares no IT energy meter" in tick.pue["site"].reason
    finally:
        store.close()


def test_stale_facility_meter_is_flagged(twin):
    # the facility meter stops reporting at t = 3000 s; the IT meter goes on to 3300 s
    tf = T[T <= 3000]
    ti = T[T <= 3300]
    write(twin.store, FAC, "power_kw", tf, np.full(tf.size, 1500.0))
    write(twin.store, IT, "power_kw", ti, np.full(ti.size, 1000.0))
    o = interval(twin, 0, 3300).overall
    assert o.value == pytest.approx(1.5, rel=REL)  # over the 3000 s both cover
    assert o.quality.coverage == pytest.approx(3000 / 3300, rel=REL)
    assert o.quality.stale_inputs == [FAC] and o.stale_inputs == [FAC]
    assert o.quality.status == "flagged"
    assert o.it == pytest.approx(1000.0 * 3000 / 3600, rel=REL)
    # over the whole hour too little is covered: unknown, and the reason says why
    o = interval(twin, 0, 3600).overall
    assert o.value is None and "covered" in o.reason and FAC in o.reason

    # instantaneous: the latest facility reading is 300 s old at t = 3300 s
    fig = twin.pue(T0 + timedelta(seconds=3300))
    assert fig.value == pytest.approx(1.5, rel=REL)
    assert fig.stale_inputs == [FAC] and fig.quality.status == "flagged"


def test_instantaneous_step_change_and_missing(twin):
    write(twin.store, FAC, "power_kw", [0, 10], [1200.0, 1800.0])
    fig = twin.pue(T0 + timedelta(seconds=10))
    assert fig.value is None and IT in fig.reason and fig.quality.status == "unknown"
    write(twin.store, IT, "power_kw", [0, 10], [1000.0, 1100.0])
    fig = twin.pue(T0 + timedelta(seconds=12))
    assert fig.value == pytest.approx(1800.0 / 1100.0, rel=REL)
    assert fig.category == "PUE1" and fig.quality.status == "ok" and not fig.stale_inputs
    assert {r.device_id: r.value for r in fig.inputs} == {FAC: 1800.0, IT: 1100.0}
