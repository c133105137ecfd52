"""Alert API: list with filters and cursor pagination, acknowledgements, silences, rules
and receivers (never their secrets), and clear 4xx answers to bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from ingest.store import Store
from tests.alerting import write_samples
from tests.apihelpers import bearer, keys_per_role
from twin.alerts.outbox import utcnow
from twin.alerts.receivers import WebhookReceiver
from twin.alerts.rules import load_rules
from twin.alerts.service import AlertService
from twin.state import Twin

GPUS = [f"sv1/h1/row1/rk10{r}/n01/gpu0" for r in range(1, 6)]


@pytest.fixture
def env(tmp_path, site):
    store = Store(tmp_path / "api.duckdb")
    receiver = WebhookReceiver(
        name="oncall",
        type="webhook",
        url="https://hooks.example.invalid/T000/B000/XXXXSECRETPATH",
        secret="very-secret-value",
    )
    svc = AlertService(store, site, load_rules(None), [receiver])
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    app = create_app(Twin(site, store), keys=keys, alerts=svc)
    t0 = utcnow() - timedelta(minutes=5)
    for k, gpu in enumerate(GPUS):  # default rules: > 87 C for 30 s is critical
        write_samples(store, "gpu", [(gpu, "gpu_temp_c", 90.0 + k, t0)])
    svc.evaluate(t0)
    svc.evaluate(t0 + timedelta(seconds=31))
    # admin: these tests cover every alert route, receivers configuration included
    yield TestClient(app, headers=bearer(tokens[Role.admin])), svc, t0
    svc.stop()


def test_without_an_engine_alert_routes_answer_503(tmp_path, site):
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    client = TestClient(
        create_app(Twin(site, Store(tmp_path / "x.duckdb")), keys=keys),
        headers=bearer(tokens[Role.viewer]),
    )
    r = client.get("/v1/alerts")
    assert r.status_code == 503 and "not running" in r.json()["detail"]


def test_list_filter_and_paginate(env):
    client, svc, t0 = env
    body = client.get("/v1/alerts", params={"status": "firing"}).json()
    assert {a["labels"]["device_id"] for a in body["items"]} == set(GPUS)
    assert all(a["alertname"] == "GpuTemperatureCritical" for a in body["items"])
    assert body["next_cursor"] is None
    one = client.get(
        "/v1/alerts", params=[("label", "rack=rk103"), ("severity", "critical")]
    ).json()
    assert [a["labels"]["rack"] for a in one["items"]] == ["rk103"]
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/alerts", params=params).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == len(GPUS)
    assert client.get("/v1/alerts", params={"status": "resolved"}).json()["items"] == []
    assert client.get("/v1/alerts", params={"acknowledged": "true"}).json()["items"] == []


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"cursor": "bm9wZQ"}, 400, "invalid cursor"),
        ({"label": "rack"}, 400, "name=value"),
        ({"status": "burning"}, 422, "firing"),
        ({"limit": 0}, 422, "greater than or equal"),
    ],
)
def test_bad_list_parameters_are_4xx_with_a_reason(env, params, status, needle):
    client, _, _ = env
    r = client.get("/v1/alerts", params=params)
    assert r.status_code == status
    assert needle in r.text


def test_acknowledge_and_read_transitions(env):
    client, svc, _ = env
    alert = client.get("/v1/alerts", params={"label": "rack=rk101"}).json()["items"][0]
    # the audit trail names the calling key: a `by` in the body cannot override it
    r = client.post(f"/v1/alerts/{alert['id']}/ack", json={"by": "alice", "comment": "on it"})
    assert r.status_code == 200
    ack = r.json()["acknowledged"]
    assert ack["by"] == "test-admin" and ack["comment"] == "on it"
    again = client.post(f"/v1/alerts/{alert['id']}/ack", json={"comment": "me too"})
    assert again.status_code == 409 and "test-admin" in again.json()["detail"]
    assert client.post("/v1/alerts/999999/ack", json={}).status_code == 404
    detail = client.get(f"/v1/alerts/{alert['id']}").json()
    assert [t["transition"] for t in detail["transitions"]] == ["fired", "acknowledged"]
    assert detail["transitions"][1]["actor"] == "test-admin"
    assert "alice" not in str(detail)
    assert (
        client.get("/v1/alerts", params={"acknowledged": True}).json()["items"][0]["id"]
        == alert["id"]
    )
    assert client.get("/v1/alerts/424242").status_code == 404


def test_silence_lifecycle_through_the_api(env):
    client, svc, t0 = env
    r = client.post(
        "/v1/silences",
        json={
            "matchers": [
                'rack=~"rk10[12]"',
                {"name": "alertname", "value": "GpuTemperatureCritical"},
            ],
            "duration": "2h",
            "created_by": "alice",
            "comment": "swap cold plates",
        },
    )
    assert r.status_code == 201, r.text
    sil = r.json()
    assert sil["state"] == "active" and len(sil["matchers"]) == 2
    assert sil["created_by"] == "test-admin"  # the key, not the body's `created_by`
    svc.evaluate()  # the silence started now; old readings keep the alerts firing
    silenced = client.get("/v1/alerts", params={"silenced": True}).json()["items"]
    assert sorted(a["labels"]["rack"] for a in silenced) == ["rk101", "rk102"]
    assert all(a["silenced_by"] == [sil["id"]] for a in silenced)
    assert [s["id"] for s in client.get("/v1/silences", params={"state": "active"}).json()] == [
        sil["id"]
    ]
    gone = client.delete(f"/v1/silences/{sil['id']}")
    assert gone.status_code == 200 and gone.json()["state"] == "expired"
    assert client.delete(f"/v1/silences/{sil['id']}").status_code == 409
    assert client.delete("/v1/silences/nope").status_code == 404
    assert client.get(f"/v1/silences/{sil['id']}").json()["state"] == "expired"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"matchers": ['rack=="x"'], "duration": "1h"}, "invalid matcher"),
        ({"matchers": ['alertname=~".*"'], "duration": "1h"}, "must not match the empty"),
        (
            {"matchers": ['rack="a"'], "duration": "1h", "ends_at": "2030-01-01T00:00:00Z"},
            "exactly one of ends_at and duration",
        ),
        ({"matchers": ['rack="a"'], "duration": "soon"}, "invalid duration"),
        ({"matchers": ['rack=~"("'], "duration": "1h"}, "invalid regex"),
        ({"matchers": [], "duration": "1h"}, "at least 1"),
        ({"matchers": ['rack="a"'], "ends_at": "2001-01-01T00:00:00Z"}, "after starts_at"),
        (
            {
                "matchers": ['rack="a"'],
                "starts_at": "2000-01-01T00:00:00Z",
                "ends_at": "2001-01-01T00:00:00+00:00",
            },
            "already have ended",
        ),
    ],
)
def test_bad_silences_are_rejected_with_a_reason(env, body, needle):
    client, _, _ = env
    r = client.post("/v1/silences", json={"created_by": "a", "comment": "c", **body})
    assert r.status_code == 422, r.text
    assert needle in r.text


def test_rules_and_receivers_without_secrets(env):
    client, _, _ = env
    rules = client.get("/v1/rules").json()
    by_name = {r["name"]: r for r in rules}
    assert by_name["GpuTemperatureCritical"]["state"]["firing"] == len(GPUS)
    assert by_name["GpuTemperatureHigh"]["for"] == 120.0
    assert by_name["AnomalyIncident"]["state"]["health"] == "inactive"
    assert by_name["CduPumpFailed"]["state"]["health"] == "ok"
    r = client.get("/v1/receivers")
    assert r.status_code == 200
    (recv,) = r.json()
    assert recv["has_secret"] is True and recv["url"] == "https://hooks.example.invalid/***"
    assert "very-secret-value" not in r.text and "XXXXSECRETPATH" not in r.text
    assert recv["outbox"]["pending"] >= 1
