"""Issue 26 parts that need no running demo: scenarios (files, live injection through the
control topic), runbooks (one per default rule, served), the on-call receiver."""

from __future__ import annotations

import fnmatch
import json
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
from kafka import KafkaProducer

from api.app import create_app
from api.keys import KeyStore, Role
from api.routes_demo import RUNBOOK_DIR
from api.scenarios import ScenarioError, UnknownScenarioError
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from dctwin.oncall import OnCallReceiver, PageLog
from dctwin.scenario import (
    ScenarioRunner,
    check_against_site,
    find_scenario,
    load_scenario,
    scenario_names,
)
from ingest.store import Store
from simulator.batch import BatchRun, ReadSchedule, catch_up
from simulator.model import SiteSimulator
from tests.apihelpers import bearer, serve
from tests.simtools import JAN, small_site
from twin.alerts.rules import load_rules
from twin.alerts.webhook import signed_headers
from twin.state import Twin


def test_shipped_scenarios_fit_the_example_site(site):
    names = scenario_names()
    assert {"default", "utility-dip"} <= set(names)
    for name in names:
        spec = check_against_site(find_scenario(name), site)
        assert spec.count("@") == len(find_scenario(name).faults)
    default = find_scenario("default")
    kinds = {f.kind for f in default.faults}
    assert kinds == {
        "pump_degradation",
        "tim_degradation",
        "psu_aging",
        "crah_fan_failure",
        "utility_dip",
    }
    # all five play within the first five minutes
    assert (
        "onset=180" in default.spec()
        and max(
            float(item.split("onset=")[1].split(",")[0]) for item in default.spec().splitlines()
        )
        <= 300
    )


def test_scenario_errors_name_file_and_field(tmp_path, site):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[fault]]\nat = "10s"\nkind = "utility_dip"\ndevice = "sv1/h1/nope"\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: .*sv1/h1/nope.* not in site sv1"):
        check_against_site(load_scenario(bad), site)
    bad.write_text('[[fault]]\nat = "10s"\nkind = "warp_core"\ndevice = "any"\n')
    with pytest.raises(ScenarioError, match="unknown fault kind"):
        load_scenario(bad).spec()
    bad.write_text('[[fault]]\nat = "10s"\nkind = "sensor_stuck"\ndevice = "any"\nseverity=1\n')
    with pytest.raises(ScenarioError, match="takes no severity"):
        load_scenario(bad).spec()
    bad.write_text('[[fault]]\nwhen = "10s"\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: fault.0"):
        load_scenario(bad)
    with pytest.raises(UnknownScenarioError, match="known: .*default"):
        find_scenario("no-such")


def test_injected_fault_acts_from_now_on():
    sim = SiteSimulator(small_site(64), seed=1, start_time_s=JAN)
    sim.step(60)
    ups = sim.layout.ups_id
    plan = sim.telemetry
    idx = next(
        i
        for b in plan.blocks
        if ups in b.devices and "on_battery" in b.metrics
        for i in [b.start + b.metrics.index("on_battery") * len(b.devices) + b.devices.index(ups)]
    )
    assert plan.read(sim)[0][idx] == 0.0
    added = sim.inject("utility_dip@" + ups + ":onset=5,duration=60,depth=1")
    assert [f.fault_id for f in added] == ["F000"] and added[0].onset_s == sim.time_s + 5
    sim.step(10)
    assert plan.read(sim)[0][idx] == 1.0, "the UPS runs on battery during the dip"
    sim.step(120)
    assert plan.read(sim)[0][idx] == 0.0, "and back on mains after it"
    assert [lab["fault"] for lab in sim.labels()] == ["utility_dip"]


def test_live_source_continues_the_batch_history(site):
    """The demo's seam: the live source catches up from the history's start in the
    history's steps, so at the history's last read it is the very same simulation."""
    start = time.time() - 1800.0
    batch = SiteSimulator(site, seed=7, start_time_s=start, horizon_s=1800.0)
    plan = batch.telemetry
    plan.read(batch)
    for _ in range(5):  # BatchRun: read, then step + read: 6 reads, the last at +25 min
        batch.step(300.0)
        plan.read(batch)
    source = SimulatedSource(
        SimulatedSourceConfig(seed=7, catch_up_from_s=start, catch_up_step_s=300.0)
    )
    assert abs(source.sim.time_s - time.time()) < 60, "caught up to now"
    batch.step(300.0)  # the batch run's next step: where the catch-up passed through
    replay = SiteSimulator(site, seed=7, start_time_s=start)
    for _ in range(6):
        replay.step(300.0)
    # stepping without reads (the catch-up) reaches the same state as the batch run's
    # reads and steps: same physics, same workload, same sensor noise
    np.testing.assert_array_equal(plan.read(batch)[0], replay.telemetry.read(replay)[0])


def test_catch_up_replays_a_history_with_fine_bursts(site):
    """The demo's history reads every 5 min and, the last 2 min of every 30, every 10 s;
    the live source's catch-up steps the same way, so at every read of the history it is
    the very same simulation, and each chunk of the run says its step (interval_s)."""
    start, hours = 1_736_900_000.0, 1.0
    schedule = ReadSchedule(300.0, fine_burst_s=60.0, fine_every_s=1800.0, fine_step_s=10.0)
    offsets = np.cumsum(schedule.steps(hours))
    coarse = [0.0, 300.0, 600.0, 900.0, 1200.0, 1500.0]
    burst = [1750.0, 1760.0, 1770.0, 1780.0, 1790.0]
    assert list(offsets) == coarse + burst + [1800.0, 2100.0, 2400.0, 2700.0, 3000.0, 3300.0] + [
        t + 1800.0 for t in burst
    ]
    batch = SiteSimulator(site, seed=7, start_time_s=start, horizon_s=hours * 3600)
    run = BatchRun(batch, hours, chunk_rows=10**9, schedule=schedule)
    chunks = list(run.chunks())
    assert [(c.reads, c.step_s) for c in chunks] == [
        (6, 300.0), (1, 250.0), (5, 10.0), (5, 300.0), (1, 250.0), (4, 10.0)
    ]  # fmt: skip
    size = run.plan.size
    assert chunks[-1].read_time_ms[-1] == round((start + 3590.0) * 1000)
    live = SiteSimulator(site, seed=7, start_time_s=start)
    catch_up(live, start, start + 1780.0, schedule)  # in the first burst
    assert live.time_s == pytest.approx(start + 1780.0)
    np.testing.assert_array_equal(
        live.telemetry.read(live)[0], chunks[2].value[2 * size : 3 * size]
    )
    catch_up(live, start, start + 3590.0, schedule)  # on from there: the history's last read
    last = chunks[-1].value[-size:]
    np.testing.assert_array_equal(live.telemetry.read(live)[0], last)
    # the catch-up of a plain 5-min history (no bursts) is another simulation
    plain = SiteSimulator(site, seed=7, start_time_s=start)
    catch_up(plain, start, start + 3590.0, ReadSchedule(300.0))
    plain.step(start + 3590.0 - plain.time_s)
    assert not np.array_equal(plain.telemetry.read(plain)[0], last)


def test_scenario_reaches_the_simulated_source_through_kafka(kafka_bootstrap, unique, site):
    topic = f"sim.control.{unique}"
    source = SimulatedSource(
        SimulatedSourceConfig(
            seed=3, control_topic=topic, control_bootstrap=kafka_bootstrap, climate="temperate"
        )
    )
    try:
        runner = ScenarioRunner(site, kafka_bootstrap, topic)
        out = runner.run("utility-dip")
        runner.close()
        assert out["faults"] == 1
        deadline = time.monotonic() + 20
        while not source.sim.fault_plan.faults and time.monotonic() < deadline:
            source.read()
            time.sleep(0.2)
        faults = source.sim.fault_plan.faults
        assert [(f.type, f.device_id) for f in faults] == [("utility_dip", "sv1/facility/ups")]
        source.sim.step(10)  # onset 5 s after the scenario reached the site
        r = source.snapshot(0)
        on_battery = [
            v
            for d, m, v in zip(r.device_id, r.metric, r.value, strict=True)
            if d == "sv1/facility/ups" and m == "on_battery"
        ]
        assert on_battery == [1.0], "the fault shows in the source's telemetry"
        # a malformed control message is logged and skipped, never stops the collector
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        p.send(topic, b"{not json").get(10)
        p.send(topic, json.dumps({"faults": "warp@x"}).encode()).get(10)
        p.close()
        for _ in range(5):
            source.read()
        assert len(source.sim.fault_plan.faults) == 1
    finally:
        source.close()


def test_every_default_rule_has_a_served_runbook(tmp_path):
    rules = load_rules(None)
    names = {r.name for r in rules.rules}
    files = {p.stem for p in RUNBOOK_DIR.glob("*.md")}
    assert names <= files, f"rules without a runbook: {sorted(names - files)}"
    # and an installed wheel carries them: the package data of twin.alerts matches each
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    for p in RUNBOOK_DIR.glob("*.md"):
        rel = p.relative_to(RUNBOOK_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in data["twin.alerts"]), rel
    for r in rules.rules:
        assert r.annotations.runbook_url == "{runbook_base}/" + r.name
        text = (RUNBOOK_DIR / f"{r.name}.md").read_text()
        for section in ("What it means", "How to confirm", "What to do", "When to escalate"):
            assert f"## {section}" in text, (r.name, section)
    store = Store(tmp_path / "t.duckdb")
    keys = KeyStore(tmp_path / "k.duckdb")
    token = keys.create("t", Role.viewer)[1]
    app = create_app(Twin(load_site_example(), store), keys=keys)
    with serve(app) as url:
        md = httpx.get(f"{url}/v1/runbooks/UpsOnBattery", headers=bearer(token))
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        assert md.text.startswith("# UpsOnBattery")
        page = httpx.get(f"{url}/runbooks/CduPumpFailed")  # open: linked from pages
        assert page.status_code == 200 and "<h2>What to do</h2>" in page.text
        assert httpx.get(f"{url}/runbooks/..%2F..%2Fpyproject").status_code == 404
        for path in ("/v1/runbooks/NoSuchRule", "/runbooks/No.Such", "/runbooks/NoSuchRule"):
            r = httpx.get(url + path, headers=bearer(token))
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json"
            assert "no runbook for rule" in r.json()["detail"]
        # a viewer may not play scenarios (operator), whatever the site
        r = httpx.post(f"{url}/v1/scenarios/default/run", headers=bearer(token))
        assert r.status_code == 403
    store.close()


def load_site_example():
    from domain.site import EXAMPLE_SITE, load_site

    return load_site(EXAMPLE_SITE)


def test_scenario_api_answers_409_404_422_as_problems(tmp_path, kafka_bootstrap, unique):
    site = load_site_example()
    store = Store(tmp_path / "t.duckdb")
    keys = KeyStore(tmp_path / "k.duckdb")
    op = keys.create("op", Role.operator)[1]
    viewer = keys.create("v", Role.viewer)[1]
    sdir = tmp_path / "scenarios"
    sdir.mkdir()
    (sdir / "ok.toml").write_text(
        '[[fault]]\nat = "5s"\nkind = "utility_dip"\ndevice = "sv1/facility/ups"\n'
    )
    (sdir / "wrong-device.toml").write_text(
        '[[fault]]\nat = "5s"\nkind = "utility_dip"\ndevice = "sv1/h1/crah1"\n'
    )
    runner = ScenarioRunner(site, kafka_bootstrap, f"sim.control.{unique}", sdir)
    real = create_app(Twin(site, store), keys=keys)
    sim = create_app(Twin(site, store), keys=keys, scenarios=runner)
    with serve(real) as url:
        r = httpx.post(f"{url}/v1/scenarios/ok/run", headers=bearer(op))
        assert r.status_code == 409 and "not simulated" in r.json()["detail"]
        assert r.headers["content-type"] == "application/problem+json"
    with serve(sim) as url:
        listed = httpx.get(f"{url}/v1/scenarios", headers=bearer(viewer)).json()
        assert [s["name"] for s in listed] == ["ok", "wrong-device"]
        assert httpx.post(f"{url}/v1/scenarios/ok/run", headers=bearer(viewer)).status_code == 403
        r = httpx.post(f"{url}/v1/scenarios/nope/run", headers=bearer(op))
        assert r.status_code == 404 and "known: ok, wrong-device" in r.json()["detail"]
        r = httpx.post(f"{url}/v1/scenarios/wrong-device/run", headers=bearer(op))
        assert r.status_code == 422
        assert "applies to a ups" in r.json()["detail"], r.json()
        r = httpx.post(f"{url}/v1/scenarios/ok/run", headers=bearer(op))
        assert r.status_code == 200 and r.json()["spec"].startswith("utility_dip@sv1/facility/ups")
        r = httpx.get(f"{url}/v1/oncall/pages", headers=bearer(viewer))
        assert r.json() == {"receiver_running": False, "pages": []}
    runner.close()
    store.close()


def test_oncall_receiver_verifies_signatures_over_real_http():
    log = PageLog(b"s3cret")
    rx = OnCallReceiver(log).start()
    try:
        doc = {
            "version": "4",
            "status": "firing",
            "receiver": "demo-oncall",
            "alerts": [{"status": "firing", "labels": {"alertname": "UpsOnBattery"}}],
        }
        body = json.dumps(doc).encode()
        good = httpx.post(rx.url, content=body, headers=signed_headers(b"s3cret", body, "k1"))
        assert good.status_code == 204
        forged = httpx.post(rx.url, content=body, headers=signed_headers(b"other", body, "k2"))
        assert forged.status_code == 401
        stale = signed_headers(b"s3cret", body, "k3", now_s=time.time() - 3600)
        assert httpx.post(rx.url, content=body, headers=stale).status_code == 401
        assert httpx.post(rx.url, content=b"[1, 2").status_code == 400
        pages = log.pages()
        assert [p.signature_valid for p in pages] == [False, False, True]  # newest first
        assert pages[-1].alerts[0]["labels"]["alertname"] == "UpsOnBattery"
    finally:
        rx.stop()


def test_scenario_cli_lists_the_files():
    from typer.testing import CliRunner

    from dctwin.cli.main import app

    out = CliRunner().invoke(app, ["scenario", "list"])
    assert out.exit_code == 0, out.output
    assert "default:" in out.output and "utility_dip on sv1/facility/ups" in out.output
