"""GET /v1/capacity, /v1/capacity/forecast and the capacity metrics over real HTTP, on a
twin fed by the simulator harness (issue 27), and the server's capacity job."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from api.app import create_app
from api.keys import Role
from dctwin.settings import Settings
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role, serve
from tests.test_dashboard_chromium import CHROMIUM, _dashboard
from tests.twin_sim import SMALL_SITE, SimHarness
from twin.capacity.service import CapacityService
from twin.state import Twin
from twin.twin_config import TwinConfig

HISTORY_DAYS = 40
HALL_KW_AT_ORIGIN = 370.0  # twin-small: hall power capacity N = 2 PDUs x 200 kW
GROWTH_KW_PER_DAY = 3.0  # -> 400 kW ten days after the origin


def _history(twin: Twin, origin: datetime) -> None:
    """Hourly rollup rows for the hall and the site: a steady growth with a daily swing
    (the day's peak is the level)."""
    hours = np.arange(-HISTORY_DAYS * 24, 0)
    times = [origin + timedelta(hours=int(h)) for h in hours]
    level = HALL_KW_AT_ORIGIN + GROWTH_KW_PER_DAY * hours / 24.0
    swing = 10.0 * (np.cos(2 * np.pi * (hours % 24) / 24.0) - 1.0)  # peak 0 at midnight
    power = level + swing
    rows = []
    for scope, level_name in ((twin.layout.hall_ids[0], "hall"), (twin.layout.site_id, "site")):
        cols: dict[str, object] = {
            "time": pa.array(times, pa.timestamp("us")),
            "scope_id": [scope] * hours.size,
            "level": [level_name] * hours.size,
        }
        for name, v in (
            ("power_kw", power),
            ("heat_liquid_kw", 0.8 * power),
            ("heat_air_kw", 0.2 * power),
        ):
            cols |= {f"{name}_sum": v, f"{name}_n": np.ones(hours.size, np.int32)}
            cols |= {f"{name}_min": v, f"{name}_max": v, f"{name}_last": v}
        rows.append(pa.table(cols))
    frame = pa.concat_tables(rows)
    names = ", ".join(frame.column_names)
    # older than the tick table keeps: compacted minute rows, as the twin leaves them
    twin.store.cursor().execute(f"INSERT INTO twin_rollups_1m ({names}) SELECT * FROM frame")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("cap") / "cap.duckdb")
    h = SimHarness(store)
    # never stale, never re-ticked by reads: the harness's clock lies in the past
    twin = Twin(
        h.site,
        store,
        config=TwinConfig(telemetry_interval_s=10, stale_intervals=1e9, tick_interval_s=1e9),
    )
    h.write()
    for _ in range(6):
        twin.tick(h.step(10.0))
    origin = twin.last.time.replace(minute=0, second=0, microsecond=0)  # type: ignore[union-attr]
    _history(twin, origin)
    keys, tokens = keys_per_role(tmp_path_factory.mktemp("keys") / "keys.duckdb")
    svc = CapacityService(twin)
    app = create_app(twin, keys=keys, capacity=svc)
    with serve(app) as url, httpx.Client(base_url=url, headers=bearer(tokens[Role.viewer])) as c:
        c.dashboard = (url, tokens[Role.viewer])  # type: ignore[attr-defined]
        yield c, twin, origin
    store.close()


def test_capacity_lists_every_element_with_live_loads(env):
    c, twin, _ = env
    r = c.get("/v1/capacity", params={"basis": "latest"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["basis"] == "latest" and body["time"].endswith("Z")
    els = body["elements"]
    kinds = {e["kind"] for e in els}
    assert kinds == {"rack", "row", "pdu", "ups", "hall", "cdu", "crah", "plant"}
    # rack loads are the twin's rack rollups of the same tick
    sc = twin.scope_index
    tick_kw = dict(zip(sc.ids, twin.last.rollups["power_kw"], strict=True))
    racks = [e for e in els if e["kind"] == "rack"]
    assert len(racks) == 6
    for e in racks:
        assert e["used_kw"] == pytest.approx(tick_kw[e["id"]])
        assert e["headroom_n_kw"] == pytest.approx(e["capacity_n_kw"] - e["used_kw"])
    # the hall's power is its racks' sum, against its PDUs (2 x 200 kW, single feeds)
    hall = next(e for e in els if e["kind"] == "hall" and e["resource"] == "power")
    assert hall["used_kw"] == pytest.approx(sum(e["used_kw"] for e in racks))
    assert (hall["capacity_n_kw"], hall["capacity_n1_kw"]) == (400.0, 0.0)
    # the plant at the simulator's reported wet-bulb and at the design day
    plant = {e["weather"]: e for e in els if e["kind"] == "plant"}
    assert set(plant) == {"current", "design_day"}
    assert plant["current"]["capacity_n_kw"] is not None


def test_capacity_filters(env):
    c, _, _ = env
    body = c.get("/v1/capacity", params=[("kind", "pdu"), ("kind", "ups")]).json()
    assert {e["kind"] for e in body["elements"]} == {"pdu", "ups"}
    assert len(body["elements"]) == 3
    body = c.get("/v1/capacity", params={"kind": "hall", "resource": "cooling_air"}).json()
    assert [e["resource"] for e in body["elements"]] == ["cooling_air"]
    body = c.get("/v1/capacity", params={"id": "t1/h1/row1/r11"}).json()
    assert [e["id"] for e in body["elements"]] == ["t1/h1/row1/r11"]
    # peak basis (default): never below the latest tick
    latest = c.get("/v1/capacity", params={"kind": "rack", "basis": "latest"}).json()
    peak = c.get("/v1/capacity", params={"kind": "rack"}).json()
    assert peak["basis"] == "peak"
    for a, b in zip(latest["elements"], peak["elements"], strict=True):
        assert b["used_kw"] >= a["used_kw"] - 1e-9


@pytest.mark.parametrize(
    ("params", "status", "names"),
    [
        ({"kind": "generator"}, 422, "kind"),
        ({"resource": "water"}, 422, "resource"),
        ({"basis": "average"}, 422, "basis"),
        ({"id": "t1/h1/row1/r99"}, 404, "t1/h1/row1/r99"),
    ],
)
def test_bad_capacity_filters_are_problems(env, params, status, names):
    c, _, _ = env
    r = c.get("/v1/capacity", params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert names in r.text


def test_forecast_reads_history_and_dates_the_runout(env):
    c, _, origin = env
    r = c.get("/v1/capacity/forecast", params={"scope": "t1/h1", "resource": "power"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["horizon_days"] == 30
    (s,) = body["series"]
    assert s["status"] == "ok" and len(s["points"]) == 30
    assert s["trend_kw_per_day"] == pytest.approx(GROWTH_KW_PER_DAY, rel=0.05)
    for p in s["points"]:
        assert p["lower_kw"] <= p["peak_kw"] <= p["upper_kw"]
    # daily peak 370 kW at the origin growing 3 kW/day: the 400 kW of the hall's PDUs
    # run out about ten days on; without a spare feed (N-1 = 0) at once
    assert s["capacity_n_kw"] == 400.0
    expected = datetime.fromisoformat(s["runout_n"]["expected"])
    assert abs((expected - origin.replace(tzinfo=UTC)).total_seconds() / 86400 - 10.0) <= 1.5
    assert s["runout_n1"]["expected"] is not None
    assert datetime.fromisoformat(s["runout_n1"]["expected"]) <= origin.replace(
        tzinfo=UTC
    ) + timedelta(days=1)
    # the site too, both resources
    body = c.get("/v1/capacity/forecast").json()
    assert {(s["scope"], s["resource"]) for s in body["series"]} == {
        ("t1/h1", "power"),
        ("t1/h1", "cooling"),
        ("t1", "power"),
        ("t1", "cooling"),
    }
    assert all(s["status"] == "ok" and len(s["points"]) == 30 for s in body["series"])


def test_forecast_bad_parameters(env):
    c, _, _ = env
    r = c.get("/v1/capacity/forecast", params={"scope": "h9"})
    assert r.status_code == 404 and "scope" in r.json()["detail"]
    r = c.get("/v1/capacity/forecast", params={"resource": "water"})
    assert r.status_code == 422 and "resource" in r.text


def test_prometheus_capacity_metrics(env):
    c, _, _ = env
    c.get("/v1/capacity/forecast")  # the run-out family needs a forecast
    text = c.get("/metrics").text
    assert (
        'dctwin_capacity_headroom_kw{id="t1/h1/pdu1",kind="pdu",redundancy="N",'
        'resource="power",weather=""}' in text
    )
    assert 'weather="design_day"' in text and 'redundancy="N-1"' in text
    assert 'dctwin_capacity_runout_days{redundancy="N",resource="power",scope="t1/h1"}' in text
    assert 'kind="rack"' not in text  # racks stay out of Prometheus (cardinality)


def test_server_runs_capacity_in_the_background(tmp_path):
    """`dctwin serve`'s Server owns the capacity job: started with the other jobs, it keeps
    headroom current and reports to /healthz's registry."""
    from dctwin.server import Server

    s = Settings()
    s.site_file = SMALL_SITE
    s.db_path = tmp_path / "twin.duckdb"
    s.apikey_db = tmp_path / "keys.duckdb"
    s.failure_models = tmp_path / "models"
    s.alerts_topic = ""
    s.twin_tick_s = 0.5
    s.capacity_refresh_s = 0.5
    server = Server(s)
    try:
        server.start_jobs()
        deadline = time.monotonic() + 30
        while server.capacity.kept_forecast() is None:  # a round: headroom, then forecast
            assert time.monotonic() < deadline, server.capacity_job.last_error
            time.sleep(0.1)
        assert server.capacity.kept_headroom().frame.height > 0  # type: ignore[union-attr]
        # no history yet: the forecast says so instead of failing the job
        fc = server.capacity.kept_forecast()
        assert fc is not None and all(x.error for x in fc.series)
        assert server.health_registry.check()["capacity"].status == "ok"
    finally:
        server.stop()


@pytest.mark.slow
def test_dashboard_capacity_card(env, tmp_path):
    """Debian's Chromium: the dashboard's capacity card lists the elements above the racks
    with the API's figures and the forecast's run-out dates."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (APT_PACKAGES in .ci/run)")
    from playwright.sync_api import expect

    c, _, _ = env
    url, key = c.dashboard
    api = c.get(
        "/v1/capacity", params=[("kind", k) for k in ("ups", "plant", "hall", "pdu", "cdu", "crah")]
    ).json()
    console: list[tuple[str, str]] = []
    with _dashboard(
        url, key, tmp_path / "profile", console, {"width": 1400, "height": 900}
    ) as page:
        rows = page.locator("[data-testid=capacity-table] tr")
        expect(rows).to_have_count(1 + len(api["elements"]), timeout=20_000)
        ups = page.locator("[data-testid=capacity-table] tr[data-kind=ups] td")
        used = next(e for e in api["elements"] if e["kind"] == "ups")["used_kw"]
        expect(ups.nth(1)).to_have_text(f"{round(used):,}")
        # single-feed PDUs: no N-1 capacity, shown as over (red)
        pdu_bad = page.locator("[data-testid=capacity-table] tr[data-kind=pdu] td.bad")
        expect(pdu_bad).to_have_count(2)
        cdu_n1 = page.locator("[data-testid=capacity-table] tr[data-kind=cdu] td:last-child")
        expect(cdu_n1).to_have_text(["no spare", "no spare"])
        runout = page.locator("[data-testid=capacity-runout]")
        expect(runout).to_contain_text("h1 power: ", timeout=20_000)
    # no alert engine in this app: the browser logs /v1/alerts' 503 itself
    errors = [
        (t, m)
        for t, m in console
        if t in ("error", "pageerror") and "status of 503 (Service Unavailable)" not in m
    ]
    assert not errors, f"console errors: {errors}"
