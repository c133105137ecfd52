"""What-if runs (issue 27, item 3) through the real API: live state from simulated telemetry
in a real DuckDB store, runs on the service's executor, every 422 case, cancellation, the
comparison; and the accuracy evaluation in small."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.keys import Role
from domain.site import load_site
from domain.whatif import Scenario, ScenarioError, validate_scenario
from experiments.whatif_eval import evaluate
from ingest.store import Store
from simulator.whatif import run as run_whatif
from tests.apihelpers import bearer, keys_per_role, serve
from tests.twin_sim import SMALL_SITE, SimHarness
from twin.state import Twin
from twin.whatif.service import WhatIfService

FAST = {"horizon_h": 1.0, "step_s": 120.0}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("whatif")
    store = Store(tmp_path / "whatif.duckdb")
    sim = SimHarness(store)
    for _ in range(3):
        sim.step(10.0)
    site = sim.site
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    svc = WhatIfService(site, store, run_whatif, stale_after_s=60.0)
    svc.start()
    try:
        with (
            serve(create_app(Twin(site, store), keys=keys, whatif=svc)) as base,
            httpx.Client(base_url=base, headers=bearer(tokens[Role.operator])) as client,
        ):
            yield client, tokens, sim
    finally:
        svc.stop()
        store.close()


def _wait(client: httpx.Client, run_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/v1/what-if/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def test_runs_from_the_live_state_are_stored_and_compared(api):
    client, _tokens, sim = api
    base = client.post("/v1/what-if", json={"name": "as is", **FAST})
    assert base.status_code == 202, base.text
    assert base.headers["location"] == f"/v1/what-if/{base.json()['id']}"
    warm = client.post(
        "/v1/what-if",
        json={
            "name": "CDU 1 fails",
            "failures": [{"component": "cdu1"}],
            **FAST,
        },
    )
    a, b = _wait(client, base.json()["id"]), _wait(client, warm.json()["id"])
    assert a["status"] == b["status"] == "done" and a["progress"] == 1.0
    # the run started from the telemetry's time, not from the simulator's own clock
    assert a["live"]["gpus_reporting"] == sim.sim.layout.n_gpu
    ra, rb = a["result"], b["result"]
    assert 1.0 < ra["pue"] < 2.0 and ra["it_energy_kwh"] > 0
    # pumps stopped: GPUs on that loop run hotter and some limit is breached
    assert rb["peak_gpu_temp_c"] > ra["peak_gpu_temp_c"] + 5.0
    assert rb["first_breach"] is not None and rb["violations"]
    assert {h["kind"] for h in ra["peak_load"]} == {"cdu", "pdu", "ups", "plant"}
    # the capacity module's headroom at the run's peak state: every element, N and N-1
    kinds = {h["kind"] for h in ra["headroom"]}
    assert {"rack", "pdu", "ups", "cdu", "plant"} <= kinds
    cdu1 = next(h for h in ra["headroom"] if h["kind"] == "cdu" and h["id"].endswith("cdu1"))
    assert cdu1["used_kw"] > 0 and cdu1["headroom_n_kw"] == pytest.approx(
        cdu1["capacity_n_kw"] - cdu1["used_kw"]
    )
    cmp = client.get("/v1/what-if/compare", params={"ids": f"{a['id']},{b['id']}"})
    assert cmp.status_code == 200
    fig = cmp.json()["figures"]
    assert fig["pue"] == [ra["pue"], rb["pue"]]
    assert fig["peak_gpu_temp_c"] == [ra["peak_gpu_temp_c"], rb["peak_gpu_temp_c"]]
    listed = client.get("/v1/what-if").json()
    assert {a["id"], b["id"]} <= {r["id"] for r in listed}
    missing = client.get("/v1/what-if/compare", params={"ids": f"{a['id']},nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert client.get("/v1/what-if/nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "element", "words"),
    [
        (
            {"add_racks": [{"row": "row9", "racks": ["r19"], "template": "hgx"}]},
            "add_racks[0].row",
            "row9",
        ),
        (
            {"add_racks": [{"row": "row1", "racks": ["r12"], "template": "hgx"}]},
            "add_racks[0].racks[0]",
            "r12",
        ),
        (
            {"add_racks": [{"row": "row1", "racks": ["r14"], "template": "b200"}]},
            "add_racks[0].template",
            "b200",
        ),
        # two more racks overload row 1's feed: PDU pdu1 (200 kW) at the site's maximum load
        (
            {"add_racks": [{"row": "row1", "racks": ["r14", "r15"], "template": "hgx"}]},
            "halls.h1.pdus.pdu1",
            "overload",
        ),
        ({"remove_racks": ["r99"]}, "remove_racks[0]", "r99"),
        ({"failures": [{"component": "cdu7"}]}, "failures[0].component", "cdu7"),
        ({"failures": [{"component": "t1/facility/utility"}]}, "failures[0].component", "meter"),
        (
            {"setpoints": [{"name": "chw_supply_setpoint_c", "value": 40}]},
            "setpoints[0].value",
            "envelope",
        ),
        ({"setpoints": [{"name": "warp_drive", "value": 1}]}, "setpoints[0].name", "warp_drive"),
        (
            {"setpoints": [{"name": "cdu_supply_setpoint_c", "value": 33, "device": "cdu9"}]},
            "setpoints[0].device",
            "cdu9",
        ),
        ({"utilisation": [{"value": 0.5, "racks": ["r77"]}]}, "utilisation[0].racks[0]", "r77"),
        (
            {"horizon_h": 2, "failures": [{"component": "cdu1", "at_h": 3}]},
            "failures[0].at_h",
            "horizon",
        ),
    ],
)
def test_invalid_scenario_is_422_naming_the_element(api, body, element, words):
    client, _tokens, _sim = api
    before = len(client.get("/v1/what-if").json())
    r = client.post("/v1/what-if", json={**FAST, **body})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    doc = r.json()
    assert doc["errors"][0]["parameter"] == element
    assert words in doc["detail"]
    assert len(client.get("/v1/what-if").json()) == before  # nothing was started


def test_malformed_scenario_is_422_from_the_model(api):
    client, _tokens, _sim = api
    r = client.post("/v1/what-if", json={"horizon_h": -1, "teleport": True})
    assert r.status_code == 422
    params = {e["parameter"] for e in r.json()["errors"]}
    assert {"horizon_h", "teleport"} <= params


def test_a_long_run_reports_progress_and_is_cancelled(api):
    client, tokens, _sim = api
    r = client.post("/v1/what-if", json={"name": "long", "horizon_h": 24 * 14, "step_s": 10})
    assert r.status_code == 202
    run_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/what-if/{run_id}").json()["progress"] < 0.001:
        assert time.monotonic() < deadline, "no progress reported"
        time.sleep(0.05)
    viewer = {"Authorization": f"Bearer {tokens[Role.viewer]}"}
    assert client.delete(f"/v1/what-if/{run_id}", headers=viewer).status_code == 403
    assert client.delete(f"/v1/what-if/{run_id}").status_code == 200
    run = _wait(client, run_id, timeout_s=30)
    assert run["status"] == "cancelled"
    assert 0.0 < run["progress"] < 0.5 and run["result"] is None
    # a later run still runs: cancelling one does not stop the executor
    done = _wait(client, client.post("/v1/what-if", json=FAST).json()["id"])
    assert done["status"] == "done"


def test_no_live_state_is_409(tmp_path):
    store = Store(tmp_path / "empty.duckdb")
    site = load_site(SMALL_SITE)
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    svc = WhatIfService(site, store, run_whatif)
    svc.start()
    try:
        with serve(create_app(Twin(site, store), keys=keys, whatif=svc)) as base:
            r = httpx.post(f"{base}/v1/what-if", json=FAST, headers=bearer(tokens[Role.operator]))
            assert r.status_code == 409 and "live state" in r.json()["detail"]
    finally:
        svc.stop()
        store.close()


def test_scenario_site_adds_and_removes_racks():
    site = load_site(SMALL_SITE)
    sc = Scenario.model_validate(
        {
            "add_racks": [{"row": "row2", "racks": ["r24"], "template": "hgx"}],
            "remove_racks": ["r11"],
        }
    )
    changed = validate_scenario(site, sc)
    racks = [r.rack for r in changed.racks()]
    assert "r24" in racks and "r11" not in racks and len(racks) == 6
    assert "r11" in [r.rack for r in site.racks()]  # the live site is unchanged
    with pytest.raises(ScenarioError) as exc:
        validate_scenario(site, Scenario(remove_racks=["r11", "r12", "r13"]))
    assert "row1" in str(exc.value)


def test_evaluation_in_small_meets_the_targets():
    """`dctwin what-if evaluate` on the small site, two scenarios, 1 h horizon."""
    site = load_site(SMALL_SITE)
    out = evaluate(
        site, horizon_h=1.0, only=["setpoint_change", "utilisation_step"], history_min=20
    )
    assert [c.scenario for c in out] == ["setpoint_change", "utilisation_step"]
    for c in out:
        assert c.pue_error_pct <= 2.0, c
        assert c.peak_gpu_error_k <= 1.5, c
    again = evaluate(site, horizon_h=1.0, only=["setpoint_change"], history_min=20)
    assert again[0].pue_whatif == out[0].pue_whatif  # seeded: the same numbers twice


def test_cli_runs_a_scenario_file_against_the_api(api, tmp_path):
    from typer.testing import CliRunner

    from dctwin.cli.main import app

    client, tokens, _sim = api
    path = tmp_path / "warmer.toml"
    path.write_text(
        'name = "warmer water"\nhorizon_h = 1.0\nstep_s = 120.0\n'
        '[[setpoints]]\nname = "chw_supply_setpoint_c"\nvalue = 20.0\n'
    )
    url = str(client.base_url).rstrip("/")
    res = CliRunner().invoke(
        app, ["what-if", "run", str(path), "--url", url, "--key", tokens[Role.operator]]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{") :])
    assert doc["status"] == "done" and doc["scenario"]["setpoints"][0]["value"] == 20.0
    path.write_text("horizon_h = 1.0\n[[failures]]\ncomponent = 'cdu7'\n")
    res = CliRunner().invoke(
        app, ["what-if", "run", str(path), "--url", url, "--key", tokens[Role.operator]]
    )
    assert res.exit_code == 1 and "cdu7" in res.output


def test_a_rack_more_in_a_full_example_row_trips_the_pdu_breaker():
    from domain.site import EXAMPLE_SITE

    site = load_site(EXAMPLE_SITE)
    sc = Scenario.model_validate(
        {"add_racks": [{"row": "row1", "racks": ["rk109"], "template": "hgx-h100"}]}
    )
    with pytest.raises(ScenarioError) as exc:
        validate_scenario(site, sc)
    assert exc.value.element == "halls.h1.pdus.pdu-row1" and "breaker" in exc.value.message


def test_server_runs_whatif_in_the_background(tmp_path):
    """`dctwin serve`'s Server owns the what-if executor: started with the other jobs, a
    POST runs from the telemetry in its store, its probe is in /healthz's registry, and
    stopping the server cancels what still runs."""
    from dctwin.server import Server
    from dctwin.settings import Settings

    s = Settings()
    s.site_file = SMALL_SITE
    s.db_path = tmp_path / "twin.duckdb"
    s.apikey_db = tmp_path / "keys.duckdb"
    s.failure_models = tmp_path / "models"
    s.alerts_topic = ""
    server = Server(s)
    try:
        sim = SimHarness(server.store)
        for _ in range(3):
            sim.step(10.0)
        server.start_jobs()
        token = server.keys.create("ops", Role.operator)[1]
        with (
            serve(server.uvicorn_server().config.app) as url,
            httpx.Client(base_url=url, headers=bearer(token)) as c,
        ):
            done = _wait(c, c.post("/v1/what-if", json=FAST).json()["id"])
            assert done["status"] == "done" and done["result"]["pue"] > 1.0
            long = c.post("/v1/what-if", json={"horizon_h": 300, "step_s": 10}).json()["id"]
            assert server.health_registry.check()["whatif"].status == "ok"
    finally:
        server.stop()
    store = Store(s.db_path)
    try:
        status = store.cursor().execute("SELECT status FROM whatif_runs WHERE id = ?", [long])
        assert status.fetchone()[0] in ("cancelled", "interrupted")  # type: ignore[index]
    finally:
        store.close()


def test_cli_evaluate_prints_the_table_and_checks(tmp_path):
    from typer.testing import CliRunner

    from dctwin.cli.main import app

    out = tmp_path / "eval.json"
    args = ["what-if", "evaluate", "--site", str(SMALL_SITE), "--horizon-h", "0.25"]
    res = CliRunner().invoke(app, [*args, "--only", "utilisation_step", "--check", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "utilisation_step" in res.output and "1 of 1 within the targets" in res.output
    assert json.loads(out.read_text())[0]["scenario"] == "utilisation_step"


def test_sample_scenarios_fit_the_example_site():
    import tomllib

    from domain.site import EXAMPLE_SITE
    from tests.conftest import REPO

    site = load_site(EXAMPLE_SITE)
    files = sorted((REPO / "deploy" / "whatif").iterdir())
    assert files
    for f in files:
        doc = tomllib.loads(f.read_text()) if f.suffix == ".toml" else json.loads(f.read_text())
        validate_scenario(site, Scenario.model_validate(doc))


# -- issue 27 (whatif2): the workload's checkpoints, GPU substeps near the limits ----------


def _small_live(tmp_path, seed: int = 7):
    """A reference on the small site, its last reads through a real store: the live state."""
    from experiments.whatif_eval import START_S, _write_live
    from simulator.model import SiteSimulator
    from twin.whatif.live_state import live_state

    site = load_site(SMALL_SITE)
    truth = SiteSimulator(site, seed=seed, start_time_s=START_S, horizon_s=3 * 3600.0)
    while truth.time_s < START_S + 1200.0:
        truth.step(10.0)
    store = Store(tmp_path / "live.duckdb")
    try:
        _write_live(truth, store, 3, 10.0)
        return site, live_state(store, 60.0, known={d.id for d in site.devices()})
    finally:
        store.close()


def test_training_racks_pause_for_checkpoints_inference_is_held(tmp_path):
    import numpy as np

    from simulator.whatif import CKPT_S, CKPT_UTIL, TRAINING_ABOVE, whatif_simulator

    sc = Scenario(horizon_h=2.0)
    site, live = _small_live(tmp_path, seed=0)  # seed 0: four racks train, two serve
    sim = whatif_simulator(site, sc, live)
    wl, lay = sim.workload, sim.layout
    held = wl.held
    rack_median = np.array(  # the upper median
        [np.sort(held[lay.gpu_rack == r])[lay.rack_gpu_count[r] // 2] for r in range(lay.n_rack)]
    )
    assert (wl.training_rack == (rack_median >= TRAINING_ABOVE)).all()
    assert wl.training_rack.any() and (~wl.training_rack).any()
    rng = np.random.default_rng(0)
    t = live.time_s + np.arange(0.0, 2 * 3600.0, 10.0)
    util = np.array([wl.gpu_util(x, 10.0, rng) for x in t])  # (time, GPU)
    train = wl.training_rack[lay.gpu_rack]
    assert (util[:, ~train] == held[~train]).all()  # inference and idle: held
    assert (np.isclose(util[:, train], CKPT_UTIL) | np.isclose(util[:, train], held[train])).all()
    # each training rack pauses 2 min in every 30-60 min
    r = int(np.flatnonzero(wl.training_rack)[0])
    g = int(np.flatnonzero(lay.gpu_rack == r)[0])
    pause_s = 10.0 * np.isclose(util[:, g], CKPT_UTIL).sum()
    assert 2 * CKPT_S <= pause_s <= 4 * CKPT_S + 20.0


def test_gpu_substeps_near_the_limits_match_fine_site_steps(tmp_path):
    """A failed CDU: 30 s site steps with 10 s GPU substeps give the peak GPU temperature
    of 10 s steps of the whole site within 0.5 K."""
    from domain.whatif import Failure, scenario_site

    site = load_site(SMALL_SITE)
    cdu = site.halls[0].cdus[0].id
    sc = Scenario(horizon_h=1.5, failures=[Failure(component=cdu)], step_s=30.0)
    site, live = _small_live(tmp_path, seed=0)
    coarse = run_whatif(scenario_site(site, sc), sc, live)
    fine_sc = sc.model_copy(update={"step_s": 10.0})
    fine = run_whatif(scenario_site(site, fine_sc), fine_sc, live)
    assert fine.peak_gpu_temp_c > 85.0  # the loop's GPUs at their limits
    assert abs(coarse.peak_gpu_temp_c - fine.peak_gpu_temp_c) <= 0.5
    assert abs(coarse.pue - fine.pue) / fine.pue < 0.002


def test_cdu_failure_in_small_meets_the_targets_on_both_reference_sets():
    """`dctwin what-if evaluate [--fresh] --only cdu_failure` on the small site, 1 h: two
    different references (seed 7 / 31, July / August), the what-if within the targets on
    both (the small site's jobs are mostly idle then: the limits are tested above)."""
    site = load_site(SMALL_SITE)
    out = [
        evaluate(site, horizon_h=1.0, only=["cdu_failure"], history_min=20, fresh=fresh)[0]
        for fresh in (False, True)
    ]
    assert out[0].pue_truth != out[1].pue_truth  # another reference
    for c in out:
        assert c.pue_error_pct <= 2.0 and c.peak_gpu_error_k <= 1.5, c
