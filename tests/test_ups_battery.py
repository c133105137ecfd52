"""UPS battery health (issue 22): the site model's battery, the simulator's battery model
and faults, the twin's battery node, and the default UPS rules firing through the
pipeline (simulated source -> batcher -> store -> twin -> alert engine, simulated time,
tests/twin_sim.py) and resolving after recovery."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from domain.site import EXAMPLE_SITE, SiteFileError, Ups, load_site
from ingest.store import Store
from simulator.faults import FaultSpecError, parse_faults
from simulator.layout import SiteLayout
from simulator.model import SiteSimulator
from tests.simtools import Recorder
from tests.twin_sim import SMALL_SITE, START_S, SimHarness
from twin.alerts.grouping import site_topology
from twin.alerts.providers import twin_providers
from twin.alerts.rules import load_rules, parse_rules
from twin.alerts.service import AlertService
from twin.alerts.yaml_files import ConfigError
from twin.state import Twin
from twin.topology import Topology
from twin.twin_config import TwinConfig

UPS = "t1/facility/ups"
EX_UPS = "sv1/facility/ups"
STEP_S = 60.0

# -- site model -------------------------------------------------------------------------


def _site_with_battery(tmp_path: Path, battery: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(SMALL_SITE.read_text() + "\n[ups.battery]\n" + battery)
    return path


def test_example_site_battery_and_defaults():
    site = load_site(EXAMPLE_SITE)
    b = site.ups.battery
    assert (b.chemistry.value, b.required_ride_through_s) == ("VRLA", 300.0)
    assert b.replacement_due() == date(2029, 3, 1)
    assert site.ups.battery_runtime_s(site.ups.rated_kw) == pytest.approx(480.0)
    # a site file without [ups.battery]: 10 minutes at rated load, VRLA, no dates
    small = load_site(SMALL_SITE)
    assert small.ups.battery_runtime_s(small.ups.rated_kw) == pytest.approx(600.0)
    assert small.ups.battery.replacement_due() is None


@pytest.mark.parametrize(
    ("battery", "message"),
    [
        ("required_ride_through_s = 300\n", "usable_energy_kwh or nominal_runtime_s"),
        ("nominal_runtime_s = 600\nusable_energy_kwh = 50\n", "one of them"),
        (
            "nominal_runtime_s = 600\ninstalled = 2024-01-01\nreplace_by = 2023-01-01\n",
            "replace_by (2023-01-01) must be after installed",
        ),
        ('nominal_runtime_s = 600\nchemistry = "NiCd"\n', "ups.battery.chemistry"),
        ("nominal_runtime_s = 600\ncolour = 1\n", "ups.battery.colour: Extra inputs"),
        # a new battery too small for the ride-through at the site's maximum load
        ("nominal_runtime_s = 120\n", "runtime"),
    ],
)
def test_invalid_battery_is_a_clear_error(tmp_path, battery, message):
    with pytest.raises(SiteFileError, match="ups.*battery|battery") as err:
        load_site(_site_with_battery(tmp_path, battery))
    assert message in str(err.value)


def test_runtime_falls_with_load_fade_and_charge():
    ups = Ups(rated_kw=400.0, battery={"nominal_runtime_s": 600.0})
    full, half = ups.battery_runtime_s(400.0), ups.battery_runtime_s(200.0)
    # Peukert-like: half the load lasts more than twice as long (VRLA, k = 1.2)
    assert full == pytest.approx(600.0) and half == pytest.approx(600.0 * 2**1.2)
    assert ups.battery_runtime_s(200.0, state_of_health=0.5) == pytest.approx(half / 2)
    assert ups.battery_runtime_s(200.0, charge=0.25) == pytest.approx(half / 4)
    li = Ups(rated_kw=400.0, battery={"nominal_runtime_s": 600.0, "chemistry": "Li-ion"})
    assert 2.0 * full < li.battery_runtime_s(200.0) < half  # Li-ion barely stretches


# -- simulator --------------------------------------------------------------------------


def _recorder(faults: str, hours: float, site=None) -> Recorder:
    site = site or load_site(SMALL_SITE)
    sim = SiteSimulator(site, seed=1, start_time_s=START_S, faults=faults, constant_util=0.6)
    return Recorder(sim).run(hours, STEP_S)


def test_utility_dip_discharges_then_recharges():
    r = _recorder(f"utility_dip@{UPS}:onset=10m,duration=4m,depth=0.5", 1.5)
    t = np.round(r.t_h() * 60.0)  # minutes
    on = r.series(UPS, "on_battery")
    charge = r.series(UPS, "battery_charge_pct")
    runtime = r.series(UPS, "battery_runtime_s")
    during = (t >= 10) & (t < 14)  # from the onset, until the dip's end
    assert on[during].all() and not on[~during].any()
    assert set(r.series(UPS, "input_voltage_v")[during]) == {240.0}
    assert (r.series(UPS, "input_voltage_v")[~during] == 480.0).all()
    assert r.series(UPS, "input_line_bads_total")[-1] == 1.0  # one excursion, counted once
    assert (r.series(UPS, "battery_current_a")[during] > 0).all()  # discharging
    assert (r.series(UPS, "battery_current_a")[~during] < 0).all()  # charging / float
    assert r.series(UPS, "battery_time_on_battery_s")[during][-1] == 240.0  # counted per step
    assert charge[t < 10].min() == 100.0
    low = charge[during][-1]
    assert low < 90.0 and runtime[during][-1] < runtime[0]
    after = charge[t >= 14]
    assert (np.diff(after) >= 0).all() and after[-1] > low + 5  # recharging, slowly
    assert r.series(UPS, "battery_status")[0] == 2.0  # normal


def test_fade_test_failure_and_overtemp_show_in_the_readings():
    faults = (
        f"ups_battery_fade@{UPS}:onset=5m,duration=20m,severity=85%; "
        f"ups_battery_test_failed@{UPS}:onset=10m; "
        f"ups_battery_overtemp@{UPS}:onset=5m,duration=10m,severity=20"
    )
    r = _recorder(faults, 1.0)
    t = np.round(r.t_h() * 60.0)
    runtime = r.series(UPS, "battery_runtime_s")
    assert runtime[t <= 5].min() > 900 and runtime[-1] < 300  # below the ride-through
    test = r.series(UPS, "battery_test_result")
    assert set(test[t < 10]) <= {1.0, 5.0} and set(test[t >= 10]) == {3.0}
    temp = r.series(UPS, "battery_temp_c")
    assert temp[0] <= 26 and temp[-1] > 35
    assert r.series(UPS, "alarms_present")[-1] >= 1  # the failed test
    assert r.series(UPS, "battery_charge_pct")[-1] == 100.0  # fade is capacity, not charge


def test_ups_faults_need_the_ups():
    lay = SiteLayout(load_site(SMALL_SITE))
    with pytest.raises(FaultSpecError, match="applies to a ups"):
        parse_faults("utility_dip@t1/plant/chiller-plant", lay, START_S)
    plan = parse_faults("utility_dip@any:duration=30s", lay, START_S)
    assert plan.faults[0].device_id == UPS and plan.faults[0].params["duration"] == 30.0
    # a site has one UPS: the random catalog leaves its faults to explicit specs
    drawn = {f.type for f in parse_faults("random:n=40", lay, START_S).faults}
    assert not {t for t in drawn if t.startswith("ups_") or t == "utility_dip"}


# -- twin and rules ---------------------------------------------------------------------


def test_battery_node_in_the_power_chain():
    topo = Topology(load_site(EXAMPLE_SITE))
    node = topo.get(f"{EX_UPS}/battery")
    assert node is not None and node.cls == "ups_battery"
    assert node.attrs == {
        "chemistry": "VRLA",
        "usable_energy_kwh": pytest.approx(449.123),
        "nominal_runtime_s": 480.0,
        "required_ride_through_s": 300.0,
        "nominal_voltage_v": 480.0,
        "installed": "2024-03-01",
        "replace_by": "2029-03-01",
    }
    assert topo.children(node.id, "power") == [EX_UPS]
    assert f"{EX_UPS}/battery" in topo.upstream(EX_UPS, "power")
    # the UPS's alert attributes carry the battery's, for relative thresholds
    attrs = site_topology(load_site(EXAMPLE_SITE)).attributes[EX_UPS]
    assert attrs["required_ride_through_s"] == 300.0 and attrs["replace_by"] == "2029-03-01"


def test_rule_validation_for_equality_and_relative_thresholds():
    base = (
        "rules:\n  - {name: X, kind: threshold, metric: battery_test_result, %s "
        "annotations: {summary: s}}\n"
    )
    parse_rules(base % "op: '==', value: 3,")
    with pytest.raises(ConfigError, match="clear has no meaning"):
        parse_rules(base % "op: '==', value: 3, clear: 2,")
    with pytest.raises(ConfigError, match="relative_to"):
        parse_rules(base % "op: '<', value: 1, relative_to: 'Bad Name',")


def _run(site_file: Path, faults: str, minutes: float, tmp_path: Path):
    """Fired and resolved (alertname, device) per simulated minute, default rules."""
    store = Store(tmp_path / "ups.duckdb")
    try:
        h = SimHarness(store, site_file=site_file, seed=1, faults=faults)
        twin = Twin(h.site, store, config=TwinConfig(telemetry_interval_s=STEP_S))
        svc = AlertService(
            store, h.site, load_rules(None), [], providers=twin_providers(twin, 3 * STEP_S)
        )
        fired: dict[str, float] = {}
        resolved: dict[str, float] = {}
        summaries: dict[str, str] = {}
        for i in range(int(minutes * 60 / STEP_S)):
            t_ms = h.step(STEP_S)
            twin.tick(t_ms)
            now = datetime.fromtimestamp(t_ms / 1000, UTC).replace(tzinfo=None)
            result = svc.evaluate(now)
            for a in result.new:
                if a.labels.get("device_id") == UPS:
                    fired.setdefault(a.labels["alertname"], (i + 1) * STEP_S / 60)
                    summaries[a.labels["alertname"]] = a.annotations["summary"]
            for a in result.resolved:
                if a.labels.get("device_id") == UPS:
                    resolved.setdefault(a.labels["alertname"], (i + 1) * STEP_S / 60)
        errors = {n: s.error for n, s in svc.engine.status.items() if s.error}
        assert not errors, errors
        return fired, resolved, summaries
    finally:
        store.close()


@pytest.mark.slow
def test_battery_faults_fire_the_ups_rules_and_resolve(tmp_path):
    site_file = _site_with_battery(
        tmp_path,
        'chemistry = "VRLA"\nnominal_runtime_s = 600\nrequired_ride_through_s = 300\n'
        "installed = 2020-07-01\nreplace_by = 2025-07-15\n",
    )
    faults = (
        f"utility_dip@{UPS}:onset=4m,duration=3m,depth=1; "
        f"ups_battery_test_failed@{UPS}:onset=12m; "
        f"ups_battery_fade@{UPS}:onset=15m,duration=10m,severity=85%; "
        f"ups_battery_overtemp@{UPS}:onset=15m,duration=5m,severity=25"
    )
    fired, resolved, summaries = _run(site_file, faults, 45.0, tmp_path)
    assert set(fired) == {
        "UpsOnBattery",
        "UpsBatteryTestFailed",
        "UpsRuntimeBelowRideThrough",
        "UpsBatteryTemperatureHigh",
        "UpsBatteryReplacementDue",
    }, fired
    assert fired["UpsBatteryReplacementDue"] == 1.0  # 44 days to 2025-07-15, within 90 d
    assert "due 2025-07-15 (44 days)" in summaries["UpsBatteryReplacementDue"]
    assert 4 <= fired["UpsOnBattery"] <= 5 and 7 <= resolved["UpsOnBattery"] <= 8
    assert 12 <= fired["UpsBatteryTestFailed"] <= 13
    assert fired["UpsRuntimeBelowRideThrough"] > 15  # the fade, not the short outage
    assert "below the 300 s ride-through" in summaries["UpsRuntimeBelowRideThrough"]
    assert fired["UpsBatteryTemperatureHigh"] > 20
    assert "UpsBatteryTestFailed" not in resolved  # a weak string stays weak


@pytest.mark.slow
def test_a_healthy_ups_is_quiet(tmp_path):
    site_file = _site_with_battery(
        tmp_path, "nominal_runtime_s = 600\ninstalled = 2024-07-01\nreplace_by = 2029-07-01\n"
    )
    fired, _, _ = _run(site_file, "", 20.0, tmp_path)
    assert fired == {}


# -- through the real broker ------------------------------------------------------------


def _ups_rules(path: Path, url: str) -> str:
    """The packaged UpsOnBattery rule, delivered to a webhook receiver."""
    rule = next(r for r in load_rules(None).rules if r.name == "UpsOnBattery")
    got = rule.model_dump(include={"kind", "select", "metric", "op", "value", "severity"})
    assert got == {  # the same condition as the packaged rule, written out below
        "kind": "threshold",
        "select": {"device_class": ["ups"], "device": None},
        "metric": "on_battery",
        "op": ">",
        "value": 0.5,
        "severity": "critical",
    }
    path.write_text(f"""
rules:
  - name: UpsOnBattery
    kind: threshold
    select: {{device_class: ups}}
    metric: on_battery
    op: ">"
    value: 0.5
    severity: critical
    annotations:
      summary: "UPS {{device_id}} on battery"
      runbook_url: "{{runbook_base}}/ups-on-battery"
receivers:
  - name: oncall
    type: webhook
    url: {url}
""")
    return str(path)


@pytest.mark.slow
def test_utility_dip_through_the_broker_fires_and_resolves(settings, unique, tmp_path):
    """Simulated source with a 4-second outage -> collector -> Kafka -> ingest -> twin ->
    UpsOnBattery webhook, then resolved once the utility is back."""
    from collectors.daemon import CollectorDaemon
    from collectors.daemon_config import CollectorConfig
    from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
    from dctwin.server import Server
    from tests.alerting import AmWebhookV4, HttpReceiver

    rx = HttpReceiver()
    settings.alert_rules_file = _ups_rules(tmp_path / "rules.yaml", rx.url)
    settings.site_file = SMALL_SITE
    src_cfg = SimulatedSourceConfig(
        site_file=SMALL_SITE, seed=2, faults=f"utility_dip@{UPS}:onset=0s,duration=4s,depth=1"
    )
    cfg = CollectorConfig(
        name=f"ups-{unique}",
        site="t1",
        interval_s=1.0,
        kafka={"bootstrap": settings.kafka_bootstrap, "compression": "lz4"},
        sources=[src_cfg.model_dump(mode="json")],
    )
    source = SimulatedSource(src_cfg)
    daemon = CollectorDaemon(cfg, sources=[source])
    server = Server(settings)
    try:
        server.start_ingest()
        daemon.run_once()  # the outage shows from the first read
        (req,) = rx.wait_for(1, timeout_s=90)
        fired = AmWebhookV4.model_validate_json(req.body)
        assert fired.status == "firing"
        (alert,) = fired.alerts
        assert alert.labels["alertname"] == "UpsOnBattery"
        assert alert.labels["device_id"] == UPS and alert.labels["severity"] == "critical"
        while source.sim.time_s - source.sim.start_time_s < 5.0:
            time.sleep(0.5)  # wall time moves the simulator: wait out the outage
            daemon.run_once()
        resolved = AmWebhookV4.model_validate_json(rx.wait_for(2, timeout_s=60)[1].body)
        assert resolved.status == "resolved"
        assert resolved.alerts[0].fingerprint == alert.fingerprint
    finally:
        daemon.close()
        server.stop()
        rx.close()
