"""Alert engine on a real DuckDB file with constructed samples and events, evaluated at
chosen times (no sleeping): for/hysteresis, topology-aware inhibition, silences, flapping,
event kinds, provider-backed kinds, dedupe, acknowledgements and restarts."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from ingest.store import Store
from tests.alerting import write_events, write_samples
from twin.alerts.context import Providers
from twin.alerts.lifecycle import AlertFilter, ConflictError
from twin.alerts.outbox import utcnow
from twin.alerts.receivers import WebhookReceiver
from twin.alerts.rules import parse_rules
from twin.alerts.service import AlertService
from twin.alerts.yaml_files import Matcher

GPU101 = "sv1/h1/row1/rk101/n01/gpu0"  # row1: cdu-row1, pdu-row1
GPU102 = "sv1/h1/row1/rk102/n01/gpu0"
GPU201 = "sv1/h1/row2/rk201/n01/gpu0"  # row2: cdu-row2, pdu-row2
CDU1, PDU1 = "sv1/h1/cdu-row1", "sv1/h1/pdu-row1"

RULES = """
settings:
  flapping: {window: 10m, max_transitions: 4, hold: 2m}
rules:
  - name: GpuHot
    kind: threshold
    select: {device_class: gpu}
    metric: gpu_temp_c
    op: ">"
    value: 85
    clear: 80
    for: 30s
    annotations: {summary: "GPU {device_id} at {value:.1f} (> {threshold})",
                  runbook_url: "https://runbooks.example.invalid/gpu"}
  - name: CduPumpFailed
    kind: pump_failed
    resolve_after: 10m
    severity: critical
    annotations: {summary: "loop {cdu}: {message}; cools {downstream}"}
  - name: PduDown
    kind: threshold
    select: {device_class: pdu}
    metric: power_w
    op: "<"
    value: 100
    severity: critical
    annotations: {summary: "PDU {pdu} down, feeds {downstream}"}
  - name: GpuLost
    kind: absence
    select: {device_class: gpu}
    after: 60s
    severity: critical
    annotations: {summary: "GPU {device_id} silent for {value:.0f}s"}
inhibit_rules:
  - source_matchers: ['alertname="CduPumpFailed"']
    target_matchers: ['alertname="GpuHot"']
    equal: [cdu]
  - source_matchers: ['alertname="PduDown"']
    target_matchers: ['alertname="GpuLost"']
    equal: [pdu]
"""


def service(
    path, site, rules: str = RULES, providers: Providers | None = None, store: Store | None = None
) -> AlertService:
    rules_file, _ = parse_rules(rules, "test.yaml")
    receiver = WebhookReceiver(name="oncall", type="webhook", url="http://127.0.0.1:9/hook")
    return AlertService(
        store or Store(path / "alerts.duckdb"),
        site,
        rules_file,
        [receiver],
        providers=providers,
        external_url="http://twin.test",
    )


def queued(svc: AlertService) -> list[dict]:
    rows = svc.db.cur().execute("SELECT payload FROM alert_outbox ORDER BY id").fetchall()
    return [orjson.loads(r[0]) for r in rows]


def notified(svc: AlertService) -> list[tuple[str, str, str]]:
    """(alertname, device_id or cdu, status) per alert per notification, in order."""
    out = []
    for p in queued(svc):
        for a in p["alerts"]:
            lb = a["labels"]
            out.append((lb["alertname"], lb.get("device_id") or lb.get("cdu") or "", a["status"]))
    return out


def transitions(svc: AlertService, alert_id: int) -> list[str]:
    return [t["transition"] for t in svc.db.transitions(alert_id)]


@pytest.fixture
def t0():
    return utcnow().replace(microsecond=0)


def test_threshold_waits_for_its_duration_and_clears_with_hysteresis(tmp_path, site, t0):
    svc = service(tmp_path, site)
    temps = [(0, 90), (10, 90), (30, 90), (40, 82), (50, 79)]
    ticks = {}
    for dt, temp in temps:
        at = t0 + timedelta(seconds=dt)
        write_samples(svc.db.store, "gpu", [(GPU101, "gpu_temp_c", temp, at)])
        ticks[dt] = svc.evaluate(at)
    assert not ticks[0].new and not ticks[10].new  # pending: `for: 30s` not reached
    (alert,) = ticks[30].new
    assert alert.starts_at == t0 and alert.fired_at == t0 + timedelta(seconds=30)
    assert alert.annotations["summary"] == f"GPU {GPU101} at 90.0 (> 85.0)"
    assert alert.labels["rack"] == "rk101" and alert.labels["cdu"] == CDU1
    assert not ticks[40].resolved  # 82 is below 85 but above the clear level 80
    assert [a.id for a in ticks[50].resolved] == [alert.id]
    row = svc.db.get_alert(alert.id)
    assert row["status"] == "resolved" and row["ends_at"] == t0 + timedelta(seconds=50)
    assert transitions(svc, alert.id) == ["fired", "resolved"]
    assert notified(svc) == [("GpuHot", GPU101, "firing"), ("GpuHot", GPU101, "resolved")]


def test_condition_that_lapses_while_pending_restarts_its_timer(tmp_path, site, t0):
    svc = service(tmp_path, site)
    for dt, temp in [(0, 90), (10, 70), (20, 90), (40, 90)]:
        at = t0 + timedelta(seconds=dt)
        write_samples(svc.db.store, "gpu", [(GPU101, "gpu_temp_c", temp, at)])
        assert not svc.evaluate(at).new
    at = t0 + timedelta(seconds=50)
    write_samples(svc.db.store, "gpu", [(GPU101, "gpu_temp_c", 90, at)])
    (alert,) = svc.evaluate(at).new
    assert alert.starts_at == t0 + timedelta(seconds=20)


GLOB_RULES = """
rules:
  - name: Row1GpuHot
    kind: threshold
    select: {device: "sv1/h1/row1/*/gpu[0-3]"}
    metric: gpu_temp_c
    op: ">"
    value: 85
    annotations: {summary: "GPU {device_id} at {value:.1f}"}
"""


def test_device_glob_selects_only_matching_devices(tmp_path, site, t0):
    svc = service(tmp_path, site, GLOB_RULES)
    row1_gpu7 = "sv1/h1/row1/rk101/n01/gpu7"  # row1, but outside gpu[0-3]
    write_samples(
        svc.db.store,
        "gpu",
        [(d, "gpu_temp_c", 95, t0) for d in (GPU101, GPU102, GPU201, row1_gpu7)],
    )
    fired = sorted(a.labels["device_id"] for a in svc.evaluate(t0).new)
    assert fired == [GPU101, GPU102]


def test_cdu_pump_failure_is_one_loop_alert_and_inhibits_gpu_heat_of_its_racks(tmp_path, site, t0):
    svc = service(tmp_path, site)
    hot = [
        (GPU101, "gpu_temp_c", 91, t0),
        (GPU102, "gpu_temp_c", 92, t0),
        (GPU201, "gpu_temp_c", 93, t0),
    ]
    write_samples(svc.db.store, "gpu", hot)
    write_events(
        svc.db.store,
        [
            (f"{CDU1}/pump1", "pump_failed", t0, "pump 1 tripped", {}),
            (f"{CDU1}/pump2", "pump_failed", t0, "pump 2 tripped", {}),
        ],
    )
    (pump,) = svc.evaluate(t0).new  # two pumps of one loop: one alert
    assert pump.labels == {"alertname": "CduPumpFailed", "severity": "critical", "cdu": CDU1}
    assert pump.annotations["summary"] == (
        f"loop {CDU1}: pump 2 tripped; cools rk101, rk102, rk103, rk104, rk105, rk106, rk107, rk108"
    )
    at = t0 + timedelta(seconds=30)
    write_samples(svc.db.store, "gpu", [(d, m, v, at) for d, m, v, _ in hot])
    tick = svc.evaluate(at)
    by_dev = {a.labels["device_id"]: a for a in tick.new}
    assert set(by_dev) == {GPU101, GPU102, GPU201}
    assert by_dev[GPU101].inhibited_by == pump.fingerprint
    assert by_dev[GPU102].inhibited_by == pump.fingerprint
    assert by_dev[GPU201].inhibited_by is None  # another loop: still pages
    assert notified(svc) == [("CduPumpFailed", CDU1, "firing"), ("GpuHot", GPU201, "firing")]
    assert transitions(svc, by_dev[GPU101].id) == ["fired", "inhibited"]

    # the pump alert resolves (no new event for 10 min) while rk101 is still hot: the GPU
    # alert is uninhibited and pages then
    at = t0 + timedelta(minutes=10, seconds=1)
    write_samples(svc.db.store, "gpu", [(d, m, v, at) for d, m, v, _ in hot])
    svc.evaluate(at)
    assert svc.db.get_alert(pump.id)["status"] == "resolved"
    assert transitions(svc, by_dev[GPU101].id) == ["fired", "inhibited", "uninhibited"]
    tail = notified(svc)[2:]
    assert ("CduPumpFailed", CDU1, "resolved") in tail
    assert ("GpuHot", GPU101, "firing") in tail and ("GpuHot", GPU102, "firing") in tail


def test_dead_pdu_inhibits_device_lost_downstream_only(tmp_path, site, t0):
    svc = service(tmp_path, site)
    write_samples(svc.db.store, "gpu", [(GPU101, "power_w", 600, t0), (GPU201, "power_w", 600, t0)])
    write_samples(svc.db.store, "power", [(PDU1, "power_w", 52_000, t0)])
    assert not svc.evaluate(t0).new
    at = t0 + timedelta(seconds=90)  # both GPUs silent since t0; PDU row1 reads 0 W
    write_samples(svc.db.store, "power", [(PDU1, "power_w", 0, at)])
    tick = svc.evaluate(at)
    alerts = {a.labels["alertname"] + ":" + a.labels.get("device_id", ""): a for a in tick.new}
    pdu = alerts[f"PduDown:{PDU1}"]
    assert pdu.annotations["summary"].endswith("rk106, rk107, rk108")
    assert alerts[f"GpuLost:{GPU101}"].inhibited_by == pdu.fingerprint
    assert alerts[f"GpuLost:{GPU201}"].inhibited_by is None  # fed by pdu-row2
    assert sorted(notified(svc)) == sorted(
        [("PduDown", PDU1, "firing"), ("GpuLost", GPU201, "firing")]
    )


def test_absence_waits_after_start_so_a_restart_does_not_page_for_old_data(tmp_path, site, t0):
    svc = service(tmp_path, site)
    write_samples(svc.db.store, "gpu", [(GPU101, "power_w", 600, t0 - timedelta(hours=1))])
    assert not svc.evaluate(t0).new  # engine just started: data may simply not be in yet
    assert not svc.evaluate(t0 + timedelta(seconds=59)).new
    (lost,) = svc.evaluate(t0 + timedelta(seconds=61)).new
    assert lost.labels["alertname"] == "GpuLost"
    write_samples(svc.db.store, "gpu", [(GPU101, "power_w", 600, t0 + timedelta(seconds=70))])
    assert [a.id for a in svc.evaluate(t0 + timedelta(seconds=71)).resolved] == [lost.id]


def test_silence_mutes_matching_alerts_for_its_window(tmp_path, site, t0):
    svc = service(tmp_path, site)
    sil = svc.db.create_silence(
        [Matcher.parse('rack="rk101"')],
        t0,
        t0 + timedelta(minutes=5),
        "alice",
        "maintenance rk101",
        t0,
    )
    for dt in (0, 30, 240):
        at = t0 + timedelta(seconds=dt)
        write_samples(
            svc.db.store, "gpu", [(GPU101, "gpu_temp_c", 90, at), (GPU102, "gpu_temp_c", 90, at)]
        )
        svc.evaluate(at)
    assert notified(svc) == [("GpuHot", GPU102, "firing")]  # rk101 is in maintenance
    (a101,) = [a for a in svc.engine.open.values() if a.labels["rack"] == "rk101"]
    assert a101.silenced_by == (sil["id"],)
    at = t0 + timedelta(minutes=6)  # silence over, still hot: now it pages
    write_samples(
        svc.db.store, "gpu", [(GPU101, "gpu_temp_c", 90, at), (GPU102, "gpu_temp_c", 90, at)]
    )
    svc.evaluate(at)
    assert notified(svc)[-1] == ("GpuHot", GPU101, "firing")
    assert transitions(svc, a101.id) == ["fired", "silenced", "unsilenced"]
    assert svc.db.list_silences(at)[0]["state"] == "expired"


FLAPPY = """
settings:
  flapping: {window: 10m, max_transitions: 4, hold: 2m}
rules:
  - name: GpuHot
    kind: threshold
    select: {device_class: gpu}
    metric: gpu_temp_c
    value: 85
    annotations: {summary: "hot"}
"""


def test_flapping_alert_is_held_firing_and_pages_at_most_twice(tmp_path, site, t0):
    svc = service(tmp_path, site, FLAPPY)
    # 90/70 every 10 s for 3 minutes: 18 state changes without suppression
    for k in range(18):
        at = t0 + timedelta(seconds=10 * k)
        write_samples(svc.db.store, "gpu", [(GPU101, "gpu_temp_c", 90 if k % 2 == 0 else 70, at)])
        svc.evaluate(at)
    assert notified(svc) == [
        ("GpuHot", GPU101, "firing"),
        ("GpuHot", GPU101, "resolved"),
        ("GpuHot", GPU101, "firing"),
    ]
    (alert,) = svc.engine.open.values()
    assert alert.flapping
    # calm (70) for the 2 min hold: resolves once
    for s in (180, 240, 290, 310):
        at = t0 + timedelta(seconds=s)
        write_samples(svc.db.store, "gpu", [(GPU101, "gpu_temp_c", 70, at)])
        svc.evaluate(at)
    assert notified(svc)[-1] == ("GpuHot", GPU101, "resolved")
    assert len(notified(svc)) == 4 and not svc.engine.open
    assert transitions(svc, alert.id) == ["fired", "flapping", "resolved"]
    assert svc.db.get_alert(alert.id)["flapping"] is True


EVENTS = """
rules:
  - name: GpuCriticalXid
    kind: xid
    resolve_after: 30m
    severity: critical
    annotations: {summary: "{device_id}: {message}"}
  - name: Leak
    kind: leak
    resolve_after: 5m
    annotations: {summary: "leak at {device_id}"}
  - name: PsuFailed
    kind: psu_failed
    annotations: {summary: "{device_id} {message}"}
"""


def test_event_rules_critical_xid_leak_and_psu(tmp_path, site, t0):
    svc = service(tmp_path, site, EVENTS)
    psu = "sv1/h1/row1/rk101/shelf/psu3"
    write_events(
        svc.db.store,
        [
            (GPU101, "xid", t0, "XID 79: GPU has fallen off the bus", {"xid": 79}),
            (GPU102, "xid", t0, "XID 13: graphics engine exception", {"xid": 13}),  # not critical
            (psu, "psu_fault", t0, "input lost", {}),
        ],
    )
    write_samples(svc.db.store, "cooling", [(CDU1, "leak_detected", 1, t0)])
    tick = svc.evaluate(t0 + timedelta(seconds=1))
    names = sorted((a.labels["alertname"], a.labels["device_id"]) for a in tick.new)
    assert names == [("GpuCriticalXid", GPU101), ("Leak", CDU1), ("PsuFailed", psu)]
    xid = next(a for a in tick.new if a.labels["alertname"] == "GpuCriticalXid")
    assert xid.annotations["summary"] == f"{GPU101}: XID 79: GPU has fallen off the bus"
    assert xid.starts_at == t0  # the event's read time
    write_samples(svc.db.store, "cooling", [(CDU1, "leak_detected", 0, t0 + timedelta(seconds=10))])
    tick = svc.evaluate(t0 + timedelta(seconds=11))
    assert [a.labels["alertname"] for a in tick.resolved] == ["Leak"]
    tick = svc.evaluate(t0 + timedelta(minutes=31))
    assert {a.labels["alertname"] for a in tick.resolved} == {"GpuCriticalXid", "PsuFailed"}


RATE = """
rules:
  - name: GpuHeatingFast
    kind: rate
    select: {device_class: gpu}
    metric: gpu_temp_c
    window: 2m
    per: 1m
    value: 8
    annotations: {summary: "{device_id} +{value:.1f} C/min"}
"""


def test_rate_of_change_over_a_window(tmp_path, site, t0):
    svc = service(tmp_path, site, RATE)
    rows = [
        (GPU101, "gpu_temp_c", 60 + 0.25 * s, t0 + timedelta(seconds=s))  # 15 C/min
        for s in range(0, 121, 10)
    ]
    rows += [
        (GPU102, "gpu_temp_c", 60 + 0.05 * s, t0 + timedelta(seconds=s))  # 3 C/min
        for s in range(0, 121, 10)
    ]
    write_samples(svc.db.store, "gpu", rows)
    (alert,) = svc.evaluate(t0 + timedelta(seconds=120)).new
    assert alert.labels["device_id"] == GPU101
    assert alert.value == pytest.approx(15.0)


PROVIDED = """
rules:
  - name: GpuAnomalous
    kind: anomaly_score
    select: {device_class: gpu}
    value: 0.9
    clear: 0.7
    annotations: {summary: "{device_id} score {value:.2f}"}
  - name: GpuRisk
    kind: failure_risk
    value: 0.5
    annotations: {summary: "{device_id} risk {value:.0%}"}
  - name: LoopImbalance
    kind: heat_balance
    value: 0.15
    clear: 0.1
    annotations: {summary: "{cdu} off by {value:.0%}"}
  - name: PueRegression
    kind: pue_regression
    window: 1h
    baseline: 7d
    max_increase: 0.05
    clear_increase: 0.02
    every: 0s
    annotations: {summary: "PUE {value:.3f} vs {baseline:.3f}"}
"""


def test_provider_backed_rule_kinds_with_test_providers(tmp_path, site, t0):
    """The anomaly, failure-risk, heat-balance and interval-PUE providers are built by
    other parts of the twin; here they are plain functions constructed by the test, which
    is all the engine's interface asks of them."""
    state = {"score": 0.95, "risk": 0.6, "residual": -0.2, "pue_now": 1.30}

    def pue_interval(start, end):
        return state["pue_now"] if end == t_eval["now"] else 1.22  # baseline interval

    t_eval = {"now": t0}
    providers = Providers(
        anomaly_score=lambda now: {GPU101: state["score"], GPU102: 0.1},
        failure_risk=lambda now: {GPU201: state["risk"]},
        heat_balance_residual=lambda now: {CDU1: state["residual"]},
        pue_interval=pue_interval,
    )
    svc = service(tmp_path, site, PROVIDED, providers)
    tick = svc.evaluate(t0)
    got = {a.labels["alertname"]: a for a in tick.new}
    assert set(got) == {"GpuAnomalous", "GpuRisk", "LoopImbalance", "PueRegression"}
    assert got["GpuAnomalous"].labels["device_id"] == GPU101
    assert got["LoopImbalance"].labels["cdu"] == CDU1  # |-0.2| > 0.15
    assert got["PueRegression"].annotations["summary"] == "PUE 1.300 vs 1.220"
    # inside the hysteresis bands: nothing resolves
    state.update(score=0.8, residual=0.12, pue_now=1.25)
    t_eval["now"] = t0 + timedelta(seconds=10)
    assert not svc.evaluate(t_eval["now"]).resolved
    state.update(score=0.5, risk=0.1, residual=0.05, pue_now=1.23)
    t_eval["now"] = t0 + timedelta(seconds=20)
    assert len(svc.evaluate(t_eval["now"]).resolved) == 4


def test_provider_rules_without_a_provider_are_reported_inactive(tmp_path, site, t0):
    svc = service(tmp_path, site, PROVIDED)
    svc.evaluate(t0)
    health = {r["name"]: r["state"]["health"] for r in svc.rules_view()}
    assert set(health.values()) == {"inactive"}


def test_failing_provider_marks_its_rule_errored_and_keeps_its_alerts(tmp_path, site, t0):
    calls = {"n": 0}

    def flaky(now):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("model not loaded")
        return {GPU101: 0.99}

    svc = service(tmp_path, site, PROVIDED, Providers(anomaly_score=flaky))
    assert len(svc.evaluate(t0).new) == 1
    tick = svc.evaluate(t0 + timedelta(seconds=1))
    assert not tick.resolved
    state = {r["name"]: r["state"] for r in svc.rules_view()}["GpuAnomalous"]
    assert state["health"] == "error" and "model not loaded" in state["reason"]


def test_dedupe_ack_and_restart_without_renotifying(tmp_path, site, t0):
    svc = service(tmp_path, site)
    for dt in (0, 30, 31, 32):
        at = t0 + timedelta(seconds=dt)
        write_samples(svc.db.store, "gpu", [(GPU101, "gpu_temp_c", 90, at)])
        svc.evaluate(at)
    (alert,) = svc.engine.open.values()
    assert len(svc.db.list_alerts(AlertFilter(), 10, None)[0]) == 1
    acked = svc.db.ack(alert.id, "bob", "looking", t0 + timedelta(seconds=40))
    assert acked["acked_by"] == "bob"
    with pytest.raises(ConflictError, match="already acknowledged by bob"):
        svc.db.ack(alert.id, "carol", "", t0 + timedelta(seconds=41))
    assert notified(svc) == [("GpuHot", GPU101, "firing")]
    store = svc.db.store
    svc.stop()

    again = service(tmp_path, site, store=store)  # same DuckDB: a restarted engine
    at = t0 + timedelta(seconds=60)
    write_samples(store, "gpu", [(GPU101, "gpu_temp_c", 90, at)])
    assert not again.evaluate(at).new  # still the same alert, not re-notified
    at = t0 + timedelta(seconds=70)
    write_samples(store, "gpu", [(GPU101, "gpu_temp_c", 60, at)])
    assert [a.id for a in again.evaluate(at).resolved] == [alert.id]
    assert notified(again) == [("GpuHot", GPU101, "firing"), ("GpuHot", GPU101, "resolved")]
    assert transitions(again, alert.id) == ["fired", "acknowledged", "resolved"]
