"""CUE (ISO/IEC 30134-8) and WUE (ISO/IEC 30134-9), issue 27 item 4: analytic cases to 1e-9,
the intensity format, flexible-load advice, the tower's make-up water, and the figures end
to end (simulated telemetry in a real store, the intensity served over real HTTP)."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import polars as pl
import pytest

from api.app import create_app
from api.keys import Role
from ingest.store import Store
from simulator.plant import PlantModel, makeup_water_lpm
from tests.apihelpers import bearer, keys_per_role, serve
from tests.twin_sim import SimHarness
from twin.state import Twin
from twin.sustainability import (
    FlexibleLoad,
    IntensityError,
    SustainabilityService,
    cue,
    flexible_advice,
    intensity_at,
    parse_intensity,
    wue,
)


def test_cue_and_wue_match_hand_computed_values():
    facility = np.array([1200.0, 1100.0, 1300.0])  # kWh per hour
    it = np.array([1000.0, 1000.0, 1000.0])
    ci = np.array([400.0, 100.0, 250.0])  # gCO2e/kWh
    # (1200*400 + 1100*100 + 1300*250) g / 1000 / 3000 kWh = 915 kg / 3000 kWh
    assert abs(cue(facility, ci, it) - 915.0 / 3000.0) < 1e-9
    # constant intensity: CUE = PUE x CI / 1000
    assert abs(cue(facility, np.full(3, 300.0), it) - 3600.0 / 3000.0 * 0.3) < 1e-9
    water = np.array([1800.0, 600.0, 0.0])  # L
    assert abs(wue(water, it) - 2400.0 / 3000.0) < 1e-9
    assert np.isnan(cue(facility, ci, np.zeros(3))) and np.isnan(wue(water, np.zeros(3)))


def test_makeup_water_is_evaporation_plus_blowdown():
    # 1000 kW rejected: 0.8 latent -> 800/2430 kg/s evaporated; CoC 4: blowdown E/3
    expected = 800.0 / 2430.0 * (4.0 / 3.0) / 997.0 * 1000.0 * 60.0
    assert abs(makeup_water_lpm(1000.0) - expected) < 1e-9
    assert makeup_water_lpm(0.0) == 0.0
    plant = PlantModel(1000.0, 18.0, 27.0)
    o = plant.step(60.0, 500.0, 100.0, 18.0, 27.0, 20.0, True, 0.0, 0)
    assert o.makeup_water_lpm == pytest.approx(makeup_water_lpm(o.rejected_kw), abs=1e-12)
    assert o.makeup_water_lpm > 0


def test_intensity_format_and_step_semantics():
    text = (
        "timestamp,gco2e_per_kwh\n2026-01-01T00:00:00Z,100\n"
        "2026-01-01T01:00:00+01:00,300\n2026-01-01T01:00:00Z,200\n"
    )
    # 01:00+01:00 is 00:00Z, the same instant as line 2
    with pytest.raises(IntensityError, match="line 3: timestamps must rise"):
        parse_intensity(text, "ci.csv")
    s = parse_intensity(text.replace("2026-01-01T01:00:00+01:00,300\n", ""), "ci.csv")
    t0 = datetime(2026, 1, 1)
    got = intensity_at(
        s,
        [
            t0,
            t0 + timedelta(minutes=59),
            t0 + timedelta(hours=1, minutes=30),
            t0 + timedelta(hours=3),
        ],
    )
    assert got[:3].tolist() == [100.0, 100.0, 200.0] and np.isnan(got[3])
    for bad, msg in [
        ("time,value\n", "header"),
        ("timestamp,gco2e_per_kwh\nyesterday,1\n", "line 2"),
        ("timestamp,gco2e_per_kwh\n2026-01-01T00:00:00Z,-5\n", "line 2"),
    ]:
        with pytest.raises(IntensityError, match=msg):
            parse_intensity(bad, "ci.csv")


def test_flexible_load_advice_picks_the_cleanest_window():
    t0 = datetime(2026, 3, 1)
    ci = [500.0] * 24
    ci[12:15] = [100.0, 120.0, 110.0]  # the sunny noon
    s = pl.DataFrame({"time": [t0 + timedelta(hours=h) for h in range(24)], "gco2e_per_kwh": ci})
    advice = flexible_advice(s, FlexibleLoad(kw=200.0, hours=3, start_hour=1), pue=1.2)
    assert len(advice) == 1
    a = advice[0]
    assert a["best_start_hour"] == 12 and a["scheduled_start_hour"] == 1 and a["shift"]
    # 200 kW x 1.2 x (3*500 - 330) g/kWh / 1000
    assert abs(a["saving_kgco2e"] - 200.0 * 1.2 * (1500.0 - 330.0) / 1000.0) < 1e-9


class _Csv(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def test_daily_figures_end_to_end(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    sim = SimHarness(store)
    start = datetime.fromtimestamp(sim.sim.time_s, UTC).replace(tzinfo=None)
    sim.write()
    for _ in range(31):  # an hour and a bit, a read every 2 minutes
        sim.step(120.0)
    # a constant grid: CUE must be PUE x 0.35 exactly (same energy, same interval)
    _Csv.body = (
        f"timestamp,gco2e_per_kwh\n{(start - timedelta(hours=1)).isoformat()}Z,350\n".encode()
    )
    for h in range(4):
        _Csv.body += f"{(start + timedelta(hours=h)).isoformat()}Z,350\n".encode()
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Csv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/ci.csv"
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    twin = Twin(sim.site, store)
    sus = SustainabilityService(twin, url, FlexibleLoad(100.0, 2, 0))
    end = start + timedelta(hours=1)
    try:
        with serve(create_app(twin, keys=keys, sustainability=sus)) as base:
            r = httpx.get(
                f"{base}/v1/sustainability",
                params={
                    "period": "day",
                    "start": start.isoformat() + "Z",
                    "end": end.isoformat() + "Z",
                },
                headers=bearer(tokens[Role.viewer]),
            )
            bad = httpx.get(
                f"{base}/v1/sustainability",
                params={"period": "week"},
                headers=bearer(tokens[Role.viewer]),
            )
    finally:
        srv.shutdown()
        store.close()
    assert r.status_code == 200, r.text
    assert bad.status_code == 422
    day = r.json()["figures"][0]
    pue = day["facility_energy_kwh"] / day["it_energy_kwh"]
    assert day["cue_kgco2e_per_kwh"] == pytest.approx(pue * 0.35, rel=1e-6)
    # the make-up water meter integrates to what the simulated tower used (hourly means)
    assert day["water_l"] == pytest.approx(sim.sim.makeup_water_l, rel=0.05)
    assert day["wue_l_per_kwh"] == pytest.approx(
        day["water_l"] / day["it_energy_kwh"], rel=1e-4
    )  # both rounded
