"""The live optimizer end to end (issue 19): `Server` with a real broker, a simulated site
whose BMS is a real pymodbus TCP server bound to the simulator, a small trained model.

A live recommendation appears; an operator accepts it over the HTTP API; the setpoints are
written over Modbus TCP and read back; the plant's published setpoint telemetry moves to
them. With a guard limit the plant is already past, the change is reverted automatically.
The simulator runs faster than the wall clock (each collector round steps it 20 s), so the
ramps finish in seconds.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from api.keys import Role
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources.modbus.writer import writer_toml
from collectors.sources.simulated.bms import bms_writer_config
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from dctwin.broker import free_port
from dctwin.server import Server
from dctwin.settings import Settings
from domain.plant import CONTROL_METRICS
from domain.site import load_site
from simulator.model import SiteSimulator
from simulator.sitegen import site_toml
from tests.apihelpers import bearer, serve
from tests.helpers import wait_for
from tests.optimizer_fixtures import START, trained
from twin.optimizer.space import SETPOINTS

SIM_STEP_S = 20.0  # simulated seconds per collector round (every 0.25 s of wall clock)
# register resolution of each control in the shipped maps (what a read-back can show)
RESOLUTION = {
    "chw_supply_setpoint_c": 0.1,
    "cw_supply_setpoint_c": 0.1,
    "economizer_enabled": 1.0,
    "cdu_supply_setpoint_c": 0.01,
    "cdu_dp_setpoint_kpa": 0.1,
    "crah_supply_setpoint_c": 0.1,
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("optimizer")
    models, _rows = trained(d / "history.duckdb")  # trained() returns the rows, not a con
    return models.save(d / "model.pkl")


@dataclass
class LiveSite:
    server: Server
    source: SimulatedSource
    sim: SiteSimulator
    url: str
    token: str
    settings: Settings

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=bearer(self.token), timeout=10)

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(self.url + path, headers=bearer(self.token), json=body, timeout=30)

    def published(self, control: str) -> float | None:
        """The control's latest published (active) value in the twin's store."""
        device_class, metric = CONTROL_METRICS[control]
        kind = {"plant": "facility", "cdu": "cooling", "crah": "air"}[device_class]
        row = (
            self.server.store.cursor()
            .execute("SELECT avg(value) FROM latest WHERE kind = ? AND metric = ?", [kind, metric])
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])


@pytest.fixture
def live_site(settings, tmp_path, unique, model_path) -> Iterator[LiveSite]:
    site_file = tmp_path / "site.toml"
    site_file.write_text(site_toml(64, racks_per_row=2))  # tests/optimizer_fixtures' site
    site = load_site(site_file)
    bms_port = free_port()
    writer_file = tmp_path / "writer.toml"
    writer_file.write_text(writer_toml(bms_writer_config(site, "127.0.0.1", bms_port)))
    settings.site_file = site_file
    settings.apikey_db = tmp_path / "keys.duckdb"
    settings.optimizer_model = model_path
    settings.optimizer_interval_s = 2.5
    settings.optimizer_guard_interval_s = 0.5
    settings.optimizer_state_max_age_s = 30.0
    settings.optimizer_advisory_only = False
    settings.optimizer_writer_file = writer_file
    settings.live_interval_s = 0.5
    # the trained weather and load: the exploration run's seed, half a day in
    sim = SiteSimulator(site, seed=11, start_time_s=(START + timedelta(hours=12)).timestamp())
    source = SimulatedSource(
        SimulatedSourceConfig(site_file=site_file, seed=11, bms_port=bms_port), simulator=sim
    )
    cfg = CollectorConfig(
        name=f"sim-{unique}",
        site=site.site.id,
        interval_s=1.0,
        kafka={"bootstrap": settings.kafka_bootstrap, "compression": "lz4"},
        sources=[{"type": "simulated", "site_file": str(site_file)}],
    )
    daemon = CollectorDaemon(cfg, sources=[source])
    server = Server(settings)
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            sim.step(SIM_STEP_S)  # fast-forward: ramps and plant dynamics in seconds
            daemon.run_once()
            stop.wait(0.25)

    collector = threading.Thread(target=collect, name="collector", daemon=True)
    try:
        server.start_ingest()
        collector.start()
        _, token = server.keys.create("op-ada", Role.operator)
        with serve(server.uvicorn_server().config.app) as url:
            yield LiveSite(server, source, sim, url, token, settings)
    finally:
        stop.set()
        collector.join(10)
        daemon.close()
        server.stop()


def _accept_live(s: LiveSite, timeout_s: float = 60.0) -> dict:
    """Accept the newest live proposal; a proposal superseded between listing and
    accepting (409) is retried with the next one."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        props = s.get("/v1/recommendations?status=proposed").json()
        if props:
            r = s.post(f"/v1/recommendations/{props[0]['id']}/accept", {"note": "e2e"})
            if r.status_code == 200:
                return r.json()
            last = r
            assert r.status_code == 409, r.text  # superseded or expired meanwhile
        time.sleep(0.3)
    status = s.get("/v1/recommendations/status").json()
    raise AssertionError(f"no live proposal accepted: {status}; last answer {last and last.text}")


def _changed(rec: dict) -> list[str]:
    cur, new = rec["current_setpoints"], rec["applied_setpoints"]
    return [k for k in SETPOINTS if abs(new[k] - cur[k]) >= 2 * RESOLUTION[k]]


def test_live_proposal_accepted_written_over_modbus_and_telemetry_follows(live_site):
    s = live_site
    rec = _accept_live(s)
    assert rec["status"] == "accepted" and rec["decided_by"] == "op-ada"
    assert rec["applied_at"] is not None and rec["why"]["setpoint_savings_kw"] is not None
    assert rec["predicted_savings_kw"] > 0 and rec["savings_low_kw"] is not None
    # written over Modbus TCP and read back at the registers' resolution
    for k in SETPOINTS:
        assert rec["applied_setpoints"][k] == pytest.approx(
            rec["recommended_setpoints"][k]
            if k != "economizer_enabled"
            else round(rec["recommended_setpoints"][k]),
            abs=RESOLUTION[k] / 2 + 1e-9,
        ), k
    bms = s.source.bms
    assert bms is not None and bms.writes, "the simulated BMS took the writes"
    ctl = s.sim.controls
    for k in SETPOINTS:
        assert ctl.get(k) == pytest.approx(rec["applied_setpoints"][k], abs=1e-9), k
    (write,) = s.get(f"/v1/recommendations/{rec['id']}/writes").json()
    assert write["action"] == "apply" and write["ok"] and write["who"] == "op-ada"
    assert write["writer"] == "simulated-bms"
    # the plant's telemetry: the published (active) setpoints ramp to the written values
    moved = _changed(rec)
    assert moved, f"a recommendation that changes nothing: {rec}"
    wait_for(
        lambda: all(
            abs((s.published(k) or -1e9) - rec["applied_setpoints"][k]) <= RESOLUTION[k]
            for k in moved
        ),
        # the ramp runs on simulator time, which a loaded CI machine advances slowly
        timeout_s=150,
        what=f"published setpoints {moved} reach {rec['applied_setpoints']}",
    )
    # one change in flight per plant: the next proposal cannot be applied in the window
    status = s.get("/v1/recommendations/status").json()
    assert status["running"] and status["writer"] == "simulated-bms"
    assert status["model_version"] and not status["advisory_only"]
    again = s.post(f"/v1/recommendations/{rec['id']}/accept")
    assert again.status_code == 409 and again.headers["content-type"].startswith(
        "application/problem+json"
    )


def test_guard_limit_crossed_after_the_change_reverts_it(live_site):
    s = live_site
    # GPUs run far above 30 degC: the first reading after the change crosses this limit
    opt = s.server.optimizer
    # the two CRAHs at different setpoints (their mean unchanged, so the proposals stay
    # current): the revert must put each back to its own, not both to their mean
    writer = opt.writer
    assert writer is not None
    crahs = sorted(k for k in writer.read_points() if k.startswith("crah_supply_setpoint_c@"))
    assert len(crahs) == 2, crahs
    mean = sum(writer.read_points()[k] for k in crahs) / 2
    own = {crahs[0]: mean - 0.5, crahs[1]: mean + 0.5}
    writer.write_points(own)
    opt.config = dataclasses.replace(opt.config, guard_gpu_temp_c=30.0)
    rec = _accept_live(s)
    before = rec["previous_setpoints"]
    assert rec["previous_points"][crahs[0]] == pytest.approx(mean - 0.5, abs=0.05)
    wait_for(
        lambda: s.get(f"/v1/recommendations/{rec['id']}").json()["status"] == "reverted",
        timeout_s=30,
        what="automatic revert",
    )
    done = s.get(f"/v1/recommendations/{rec['id']}").json()
    assert "GPU temperature" in done["status_note"] and done["reverted_at"] is not None
    ctl = s.sim.controls
    for k in SETPOINTS:
        assert ctl.get(k) == pytest.approx(before[k], abs=RESOLUTION[k] / 2 + 1e-9), k
    # unit by unit: each CRAH has its own setpoint back (the simulator's command and the
    # registers)
    assert list(ctl.commanded["crah_supply_setpoint_c"]) == pytest.approx(
        [own[k] for k in crahs], abs=0.05
    )
    back = writer.read_points()
    for k, v in own.items():
        assert back[k] == pytest.approx(v, abs=0.05), k
    actions = [w["action"] for w in s.get(f"/v1/recommendations/{rec['id']}/writes").json()]
    assert actions == ["revert", "apply"]  # newest first


def test_applied_recommendation_gets_a_realised_saving_from_metered_telemetry(live_site):
    """Issue 19/26 (opt-default): once the written setpoints have ramped and settled, the
    guard measures the realised saving from the metered facility power against the
    models' counterfactual at the previous setpoints, and the recommendation is
    `measured` with the figure beside its prediction."""
    s = live_site
    opt = s.server.optimizer
    # the rig runs the simulator 80x faster than the wall clock: settle 2 s, window 4 s
    opt.config = dataclasses.replace(opt.config, settle_s=2.0, outcome_window_s=4.0)
    rec = _accept_live(s)
    wait_for(
        lambda: s.get(f"/v1/recommendations/{rec['id']}").json()["status"] == "measured",
        timeout_s=60,
        what="realised saving measured",
    )
    done = s.get(f"/v1/recommendations/{rec['id']}").json()
    assert done["realised_savings_kw"] is not None and done["measured_at"] is not None
    assert "live, metered" in done["outcome_note"] and "rows" in done["outcome_note"]
    # a plausible figure: the models' scale, not a unit slip (site ~100 kW facility)
    assert abs(done["realised_savings_kw"]) < 50.0
    report = s.get("/v1/recommendations/report").json()
    assert report, "the report lists realised beside predicted"
