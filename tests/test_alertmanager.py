"""Interop with a real Alertmanager (Debian's prometheus-alertmanager, v0.25): alerts
pushed over its v2 API arrive with our labels and fingerprints, and the webhook it sends
on is valid against the same v4 model our own payloads are checked with."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from dctwin.broker import free_port
from ingest.store import Store
from tests.alerting import AmWebhookV4, HttpReceiver, write_events, write_samples
from twin.alerts.grouping import fingerprint
from twin.alerts.outbox import utcnow
from twin.alerts.receivers import AlertmanagerReceiver
from twin.alerts.rules import parse_rules
from twin.alerts.service import AlertService
from twin.alerts.webhook import rfc3339

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
GPU = "sv1/h1/row3/rk305/n02/gpu7"
CDU3 = "sv1/h1/cdu-row3"
RULES = """
rules:
  - name: GpuHot
    kind: threshold
    select: {device_class: gpu}
    metric: gpu_temp_c
    value: 85
    severity: critical
    labels: {team: compute}
    annotations: {summary: "GPU {device_id} at {value:.1f} C",
                  runbook_url: "https://runbooks.example.invalid/gpu"}
  - name: CduPumpFailed
    kind: pump_failed
    severity: critical
    annotations: {summary: "loop {cdu}: {message}"}
"""


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[tuple[str, HttpReceiver]]:
    assert ALERTMANAGER.exists(), (
        f"{ALERTMANAGER} is missing: apt-get install prometheus-alertmanager "
        "(listed in APT_PACKAGES in .ci/run)"
    )
    rx = HttpReceiver()
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(f"""
route:
  receiver: onward
  group_by: [alertname, cdu]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: onward
    webhook_configs:
      - url: {rx.url}
        send_resolved: true
""")
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(ALERTMANAGER),
            f"--config.file={cfg}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Alertmanager did not become ready"
            time.sleep(0.1)
        yield url, rx
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        rx.close()


def am_alerts(url: str) -> list[dict]:
    return httpx.get(f"{url}/api/v2/alerts", timeout=5).json()


def test_alerts_pushed_to_alertmanager_arrive_with_our_labels(tmp_path, site, alertmanager):
    url, onward = alertmanager
    store = Store(tmp_path / "am.duckdb")
    receiver = AlertmanagerReceiver(
        name="am", type="alertmanager", url=url, resend_interval=30, retry_initial=0.05
    )
    svc = AlertService(
        store, site, parse_rules(RULES)[0], [receiver], external_url="http://twin.test:8000"
    )
    try:
        now = utcnow()
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 93.0, now)])
        write_events(store, [(f"{CDU3}/pump2", "pump_failed", now, "pump 2 tripped", {})])
        tick = svc.evaluate(now)
        ours = {a.labels["alertname"]: a for a in tick.new}
        assert svc.deliverer.deliver_due() == 1

        got = {a["labels"]["alertname"]: a for a in am_alerts(url)}
        assert set(got) == {"GpuHot", "CduPumpFailed"}
        for name, alert in ours.items():
            assert got[name]["labels"] == alert.labels
            assert got[name]["fingerprint"] == alert.fingerprint == fingerprint(alert.labels)
            assert got[name]["annotations"] == alert.annotations
            assert got[name]["status"]["state"] == "active"
            assert got[name]["generatorURL"] == f"http://twin.test:8000/v1/alerts/{alert.id}"
        assert got["GpuHot"]["labels"]["rack"] == "rk305"
        assert got["GpuHot"]["labels"]["cdu"] == CDU3 == got["CduPumpFailed"]["labels"]["cdu"]

        # Alertmanager's own webhook to the next hop validates against our v4 model
        first = onward.wait_for(2)
        docs = [AmWebhookV4.model_validate_json(r.body) for r in first]
        assert {d.group_labels["alertname"] for d in docs} == {"GpuHot", "CduPumpFailed"}
        assert all(d.status == "firing" and d.version == "4" for d in docs)

        # still firing after the resend interval: both are pushed again, endsAt extended
        before = {a["labels"]["alertname"]: a["endsAt"] for a in am_alerts(url)}
        resend = svc.evaluate(now + timedelta(seconds=31))
        assert not resend.new and len(resend.notifications) == 1
        assert len(resend.notifications[0][2]["alerts"]) == 2
        time.sleep(0.01)
        assert svc.deliverer.deliver_due() == 1
        after = {a["labels"]["alertname"]: a["endsAt"] for a in am_alerts(url)}
        assert all(after[k] > before[k] for k in before)

        later = utcnow()  # a resolution in Alertmanager's past: endsAt then wins
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 60.0, later)])
        svc.evaluate(later)
        assert svc.deliverer.deliver_due() == 1
        gpu = [a for a in am_alerts(url) if a["labels"]["alertname"] == "GpuHot"]
        assert not gpu or gpu[0]["endsAt"] == rfc3339(later)  # listed until garbage-collected
        resolved = onward.wait_for(3)[2]
        doc = AmWebhookV4.model_validate_json(resolved.body)
        assert doc.status == "resolved" and doc.group_labels["alertname"] == "GpuHot"
        assert orjson.loads(resolved.body)["alerts"][0]["fingerprint"] == ours["GpuHot"].fingerprint
    finally:
        svc.stop()
