"""End to end on the real broker: a fault in a simulated GPU reading -> collector ->
Kafka -> ingest -> DuckDB -> rule -> signed Alertmanager-v4 webhook on a loopback HTTP
server, and on the `alerts` Kafka topic; the fault clearing sends a resolved one. Runs
inside `dctwin.server.Server`, so it also covers the serve/demo wiring."""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from collectors.base import Readings
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from dctwin.server import Server
from tests.alerting import AmWebhookV4, HttpReceiver

GPU = "sv1/h1/row1/rk104/n05/gpu2"
SECRET = "e2e-webhook-secret"


class FaultySource:
    """The simulator, with one reading overridden while `fault` is set (a hot GPU)."""

    def __init__(self, inner: SimulatedSource, device_id: str, metric: str) -> None:
        self.inner, self.name = inner, inner.name
        self.device_id, self.metric = device_id, metric
        self.fault: float | None = None
        self.fault_read_ms: int | None = None

    def read(self) -> Readings:
        r = self.inner.read()
        if self.fault is not None:
            for i, (d, m) in enumerate(zip(r.device_id, r.metric, strict=True)):
                if d == self.device_id and m == self.metric:
                    r.value[i] = self.fault
                    self.fault_read_ms = r.read_time_ms[i]
        return r

    def close(self) -> None:
        self.inner.close()


def rules_file(path, url: str) -> str:
    path.write_text(f"""
rules:
  - name: GpuHot
    kind: threshold
    select: {{device_class: gpu}}
    metric: gpu_temp_c
    op: ">"
    value: 85
    clear: 80
    severity: critical
    annotations:
      summary: "GPU {{device_id}} at {{value:.1f}} C"
      runbook_url: "{{runbook_base}}/gpu-temperature"
receivers:
  - name: oncall
    type: webhook
    url: {url}
    secret_env: DCTWIN_TEST_WEBHOOK_SECRET
""")
    return str(path)


@pytest.mark.slow
def test_fault_to_signed_webhook_and_kafka_then_resolution(settings, unique, tmp_path, monkeypatch):
    monkeypatch.setenv("DCTWIN_TEST_WEBHOOK_SECRET", SECRET)
    rx = HttpReceiver()
    settings.alert_rules_file = rules_file(tmp_path / "rules.yaml", rx.url)
    settings.alerts_topic = f"alerts-{unique}"
    settings.external_url = "http://twin.e2e:8000"
    cfg = CollectorConfig(
        name=f"sim-{unique}",
        site="sv1",
        interval_s=1.0,
        kafka={"bootstrap": settings.kafka_bootstrap, "compression": "lz4"},
        sources=[{"type": "simulated", "racks": ["rk104"]}],
    )
    source = FaultySource(
        SimulatedSource(SimulatedSourceConfig(seed=5, racks=["rk104"])), GPU, "gpu_temp_c"
    )
    daemon = CollectorDaemon(cfg, sources=[source])
    server = Server(settings)
    try:
        server.start_ingest()
        daemon.run_once()  # healthy readings first: no alert
        t = time.monotonic()
        source.fault = 96.5
        daemon.run_once()
        (req,) = rx.wait_for(1, timeout_s=90)
        print(f"fault -> webhook {time.monotonic() - t:.2f}s (includes the group join)")
        ts = req.headers["X-Dctwin-Timestamp"]
        assert (
            req.headers["X-Dctwin-Signature"]
            == "sha256="
            + hmac.new(SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
        )
        fired = AmWebhookV4.model_validate_json(req.body)
        assert fired.status == "firing" and fired.external_url == "http://twin.e2e:8000"
        (alert,) = fired.alerts
        assert alert.labels["device_id"] == GPU and alert.labels["rack"] == "rk104"
        assert alert.labels["cdu"] == "sv1/h1/cdu-row1"
        assert alert.annotations["summary"] == f"GPU {GPU} at 96.5 C"
        assert alert.annotations["runbook_url"].endswith("/gpu-temperature")

        source.fault = None  # the simulator's own temperature (~70 C) comes back
        daemon.run_once()
        resolved = AmWebhookV4.model_validate_json(rx.wait_for(2, timeout_s=60)[1].body)
        assert resolved.status == "resolved"
        assert resolved.alerts[0].fingerprint == alert.fingerprint
        assert len(rx.requests) == 2  # one notification per state change

        app = server.uvicorn_server().config.app
        _, token = server.keys.create("e2e", "viewer")
        api = (
            TestClient(app, headers={"Authorization": f"Bearer {token}"})
            .get("/v1/alerts", params={"label": f"device_id={GPU}"})
            .json()
        )
        assert [a["status"] for a in api["items"]] == ["resolved"]

        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=500
        )  # no group: no join wait
        consumer.assign(
            [
                TopicPartition(settings.alerts_topic, p)
                for p in consumer.partitions_for_topic(settings.alerts_topic)
            ]
        )
        consumer.seek_to_beginning()
        got, deadline = [], time.monotonic() + 60
        while len(got) < 2 and time.monotonic() < deadline:
            got += list(consumer)
        consumer.close()
        docs = [orjson.loads(m.value) for m in got]
        # keyed by group: one partition, so in order; one message per state change
        assert [d["status"] for d in docs] == ["firing", "resolved"]
        assert {m.key for m in got} == {fired.group_key.replace("oncall", "kafka-alerts").encode()}
        assert all(dict(m.headers)["Idempotency-Key"] for m in got)
        for d in docs:
            AmWebhookV4.model_validate(d)
    finally:
        daemon.close()
        server.stop()
        rx.close()
