"""Webhook delivery against a real HTTP server on loopback: Alertmanager v4 payloads,
HMAC signatures, retries with backoff, and the durable outbox across a killed process."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta

import orjson

from dctwin.broker import free_port
from ingest.store import Store
from tests.alerting import AmWebhookV4, HttpReceiver, write_samples
from twin.alerts.grouping import fingerprint
from twin.alerts.outbox import backoff_s, utcnow
from twin.alerts.receivers import WebhookReceiver
from twin.alerts.rules import parse_rules
from twin.alerts.service import AlertService

GPU = "sv1/h1/row2/rk201/n03/gpu5"
CDU1 = "sv1/h1/cdu-row1"
SECRET = "s3cret-for-oncall"
RULES = """
rules:
  - name: GpuHot
    kind: threshold
    select: {device_class: gpu}
    metric: gpu_temp_c
    value: 85
    clear: 80
    severity: critical
    annotations: {summary: "GPU {device_id} at {value:.1f} C",
                  runbook_url: "https://runbooks.example.invalid/gpu"}
  - name: CduPumpFailed
    kind: pump_failed
    severity: critical
    annotations: {summary: "loop {cdu}: {message}"}
"""


def receiver_config(url: str, **kw) -> WebhookReceiver:
    return WebhookReceiver(
        name="oncall",
        type="webhook",
        url=url,
        secret=SECRET,
        retry_initial=0.05,
        retry_max=0.2,
        **kw,
    )


def service(store: Store, site, url: str, **kw) -> AlertService:
    return AlertService(
        store,
        site,
        parse_rules(RULES)[0],
        [receiver_config(url, **kw)],
        external_url="http://twin.test:8000",
    )


def check_signature(req) -> None:
    ts = req.headers["X-Dctwin-Timestamp"]
    expected = hmac.new(SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Dctwin-Signature"] == f"sha256={expected}"
    assert abs(time.time() - int(ts)) < 600


def test_webhook_is_signed_and_an_alertmanager_v4_payload(tmp_path, site):
    rx = HttpReceiver()
    store = Store(tmp_path / "a.duckdb")
    svc = service(store, site, rx.url)
    try:
        now = utcnow()
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 91.5, now)])
        svc.evaluate(now)
        assert svc.deliverer.deliver_due() == 1
        (req,) = rx.wait_for(1)
        check_signature(req)
        doc = AmWebhookV4.model_validate_json(req.body)
        assert doc.status == "firing" and doc.receiver == "oncall"
        assert doc.group_labels == {"alertname": "GpuHot", "cdu": "sv1/h1/cdu-row2"}
        assert doc.group_key == '{}/{receiver="oncall"}:{alertname="GpuHot", cdu="sv1/h1/cdu-row2"}'
        (alert,) = doc.alerts
        assert alert.labels["device_id"] == GPU and alert.labels["rack"] == "rk201"
        assert alert.fingerprint == fingerprint(alert.labels)
        assert alert.ends_at == "0001-01-01T00:00:00Z"
        assert alert.annotations["summary"] == f"GPU {GPU} at 91.5 C"
        assert doc.common_labels["severity"] == "critical"
        assert alert.generator_url.startswith("http://twin.test:8000/v1/alerts/")
        assert len(req.headers["Idempotency-Key"]) == 32

        later = now + timedelta(seconds=5)
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 70.0, later)])
        svc.evaluate(later)
        svc.deliverer.deliver_due()
        resolved = AmWebhookV4.model_validate_json(rx.wait_for(2)[1].body)
        assert resolved.status == "resolved"
        assert resolved.alerts[0].ends_at.startswith(later.isoformat()[:19])
        assert (
            rx.accepted[0].headers["Idempotency-Key"] != rx.accepted[1].headers["Idempotency-Key"]
        )
    finally:
        svc.stop()
        rx.close()


def test_a_4xx_answer_is_not_retried(tmp_path, site):
    rx = HttpReceiver(fail_first=100, fail_status=400)
    store = Store(tmp_path / "a.duckdb")
    svc = service(store, site, rx.url)
    try:
        now = utcnow()
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 91.5, now)])
        svc.evaluate(now)
        svc.deliverer.deliver_due()
        time.sleep(0.3)  # past the first retry delay: nothing may be due
        svc.deliverer.deliver_due()
        assert len(rx.requests) == 1
        (stats,) = svc.receivers_view()
        assert stats["outbox"]["failed"] == 1 and "HTTP 400" in stats["outbox"]["last_error"]
        assert "secret" not in orjson.dumps(svc.receivers_view()).decode().replace("has_secret", "")
    finally:
        svc.stop()
        rx.close()


def test_receiver_not_listening_gets_the_notification_once_it_is_up(tmp_path, site):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    store = Store(tmp_path / "a.duckdb")
    svc = service(store, site, url)
    rx = None
    try:
        now = utcnow()
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 91.5, now)])
        svc.evaluate(now)
        for _ in range(3):  # connection refused: retried, not lost
            svc.deliverer.deliver_due(utcnow() + timedelta(seconds=10))
        (stats,) = svc.receivers_view()
        assert stats["outbox"]["pending"] == 1 and "ConnectError" in stats["outbox"]["last_error"]
        rx = HttpReceiver(port=port)
        svc.deliverer.deliver_due(utcnow() + timedelta(seconds=10))
        (req,) = rx.wait_for(1)
        check_signature(req)
        svc.deliverer.deliver_due(utcnow() + timedelta(seconds=60))
        assert len(rx.requests) == 1
    finally:
        svc.stop()
        if rx is not None:
            rx.close()


def test_delivery_logs_each_attempt_masked_and_never_the_url_token(tmp_path, site, caplog):
    """A webhook URL's path is a secret (Slack-style tokens): httpx's own per-request INFO
    line printed it on every attempt. Each attempt is logged by the deliverer instead, with
    the URL masked as /v1/receivers shows it, and a failed attempt is a WARNING."""
    token = "T0SECRET-B1-xoxb-9f8e7d6c5b4a"
    rx = HttpReceiver(fail_first=1, fail_status=503)
    store = Store(tmp_path / "a.duckdb")
    svc = service(store, site, f"{rx.url}/{token}")
    caplog.set_level(logging.DEBUG)
    try:
        now = utcnow()
        write_samples(store, "gpu", [(GPU, "gpu_temp_c", 91.5, now)])
        svc.evaluate(now)
        assert svc.deliverer.deliver_due() == 0  # 503: retried later
        assert svc.deliverer.deliver_due(utcnow() + timedelta(seconds=10)) == 1
        (req,) = rx.wait_for(1)
        assert req.path == f"/hook/{token}"  # the token did travel, only in the request
    finally:
        svc.stop()
        rx.close()
    for r in caplog.records:
        assert token not in r.getMessage(), f"{r.name} {r.levelname}: {r.getMessage()}"
    masked = rx.url.rsplit("/", 1)[0] + "/***"
    ours = [r for r in caplog.records if r.name == "twin.alerts.outbox"]
    failed = [r for r in ours if r.levelno == logging.WARNING]
    assert len(failed) == 1, [r.getMessage() for r in ours]
    msg = failed[0].getMessage()
    assert "attempt 1" in msg and "HTTP 503" in msg and masked in msg
    delivered = [r for r in ours if r.levelno == logging.INFO and "delivered" in r.getMessage()]
    assert len(delivered) == 1 and "attempt 2" in delivered[0].getMessage()
    assert masked in delivered[0].getMessage()


def test_backoff_doubles_up_to_its_cap():
    r = receiver_config("http://127.0.0.1:9/x")
    delays = [backoff_s(r, n) for n in range(1, 8)]
    assert 0.045 <= delays[0] <= 0.055 and 0.09 <= delays[1] <= 0.11
    assert all(0.18 <= d <= 0.22 for d in delays[3:])


WORKER = textwrap.dedent("""
    import sys, time
    from domain.site import EXAMPLE_SITE, load_site
    from ingest.store import Store
    from tests.alerting import write_events, write_samples
    from tests.test_alert_delivery import service, GPU, CDU1
    from twin.alerts.outbox import utcnow

    store = Store(sys.argv[1])
    svc = service(store, load_site(EXAMPLE_SITE), sys.argv[2])
    now = utcnow()
    write_samples(store, "gpu", [(GPU, "gpu_temp_c", 92.0, now)])
    write_events(store, [(CDU1 + "/pump1", "pump_failed", now, "pump 1 tripped", {})])
    svc.evaluate(now)
    svc.start()
    print("queued", flush=True)
    time.sleep(600)
""")


def test_receiver_down_and_process_killed_each_notification_arrives_exactly_once(tmp_path, site):
    """The receiver refuses every request until the process that queued two firing
    notifications has been SIGKILLed while retrying, and two more after that; a new
    process on the same DuckDB file delivers them, then a resolution. Each arrives
    exactly once, in order per group."""
    rx = HttpReceiver(fail_first=10**9)
    db = tmp_path / "a.duckdb"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), rx.url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    svc = None
    try:
        deadline = time.monotonic() + 60
        while len(rx.requests) < 3:  # two notifications queued, retries under way
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "worker never tried to deliver"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not rx.accepted  # all refused so far
        with rx.lock:
            rx.fail_first = len(rx.requests) + 2  # still down for the restarted process

        svc = service(Store(db), site, rx.url).start()  # the restarted process
        rx.wait_for(2)
        now = utcnow()
        write_samples(svc.db.store, "gpu", [(GPU, "gpu_temp_c", 60.0, now)])
        svc.wake()
        accepted = rx.wait_for(3)
        svc.stop()
        svc = None

        docs = [orjson.loads(r.body) for r in accepted]
        keys = Counter(r.headers["Idempotency-Key"] for r in accepted)
        assert len(accepted) == 3 and set(keys.values()) == {1}
        failed_keys = {r.headers["Idempotency-Key"] for r in rx.requests if r.status != 200}
        assert failed_keys <= set(keys)  # retries carried the original keys
        assert len(rx.requests) - len(accepted) >= 5
        gpu_group = [d["status"] for d in docs if d["groupLabels"]["alertname"] == "GpuHot"]
        assert gpu_group == ["firing", "resolved"]
        assert [d["status"] for d in docs if d["groupLabels"]["alertname"] == "CduPumpFailed"] == [
            "firing"
        ]
        for r in accepted:
            check_signature(r)
            AmWebhookV4.model_validate_json(r.body)
        store = Store(db)
        rows = (
            store.cursor()
            .execute("SELECT status, count(*) FROM alert_outbox GROUP BY 1")
            .fetchall()
        )
        assert rows == [("delivered", 3)]
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        if svc is not None:
            svc.stop()
        rx.close()
