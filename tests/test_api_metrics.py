"""`/metrics`: the custom collector's families, plug-in providers, and a real Prometheus
(Debian's `prometheus` 2.42) scraping the API and answering a PUE query."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.keys import Role
from api.live_view import LiveView
from dctwin.broker import free_port
from ingest.consumer import IngestStats
from ingest.store import Store
from tests.apihelpers import bearer, fill_store, keys_per_role, serve
from twin.events import EventBus
from twin.state import Twin


@pytest.fixture(scope="module")
def populated(tmp_path_factory, site):
    d = tmp_path_factory.mktemp("metrics")
    store = Store(d / "twin.duckdb")
    fill_store(store, site, minutes=1)
    keys, tokens = keys_per_role(d / "keys.duckdb")
    twin = Twin(site, store)
    yield twin, keys, tokens
    store.close()


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_expose_platform_and_twin_state(populated):
    twin, keys, tokens = populated
    bus = EventBus()
    live = LiveView(twin, bus)
    live.tick()
    stats = IngestStats(
        messages=10,
        samples_stored=12345,
        events_stored=2,
        dead_letters=Counter({"schema": 3, "unknown_version": 1}),
        poison_messages=Counter({"quarantined": 2}),
        dead_letters_truncated=1,
        data_loss_events=Counter({"retention": 1}),
        lost_records=40,
    )
    app = create_app(twin, keys=keys, bus=bus, live=live, ingest_stats=lambda: stats)
    client = TestClient(app)
    h = bearer(tokens[Role.viewer])
    client.get("/metrics", headers=h)  # the second scrape has an ingest rate
    stats.samples_stored += 1000
    res = client.get("/metrics", headers=h)
    assert res.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = _families(res.text)
    by_scope = {s.labels["scope"]: s for s in fams["dctwin_pue"].samples}
    assert {"site", "hall:h1", "cooling:chiller_plant"} <= by_scope.keys()  # PUE and pPUE
    pue = [by_scope["site"]]
    assert pue[0].labels == {"scope": "site", "category": "PUE1", "figure": "PUE"}
    assert by_scope["hall:h1"].labels["figure"] == "pPUE"
    residual = {s.labels["scope"]: s.value for s in fams["dctwin_heat_balance_residual_kw"].samples}
    assert residual and all(abs(v) < 1e4 for v in residual.values())
    api_pue = client.get("/v1/pue", headers=h).json()["value"]
    assert pue[0].value == pytest.approx(api_pue, rel=1e-12)
    dead = {
        s.labels["reason"]: s.value
        for s in fams["dctwin_ingest_dead_letters"].samples
        if s.name.endswith("_total")
    }
    assert dead == {"schema": 3.0, "unknown_version": 1.0}

    def totals(name: str, label: str) -> dict[str, float]:
        return {s.labels[label]: s.value for s in fams[name].samples if s.name.endswith("_total")}

    assert totals("dctwin_ingest_poison_messages", "kind") == {
        "ingest_error": 0.0,
        "quarantined": 2.0,
    }
    assert totals("dctwin_ingest_data_loss_events", "reason") == {
        "retention": 1.0,
        "topic_recreated": 0.0,
    }
    assert fams["dctwin_ingest_dead_letters_truncated"].samples[0].value == 1
    assert fams["dctwin_ingest_lost_records"].samples[0].value == 40
    assert fams["dctwin_ingest_samples"].samples[0].value == 13345
    assert fams["dctwin_ingest_samples_per_second"].samples[0].value > 0
    assert fams["dctwin_ingest_lag_seconds"].samples[0].value >= 0
    assert fams["dctwin_twin_tick_seconds"].samples[0].value > 0
    racks = fams["dctwin_rack_gpu_max_temp_c"].samples
    assert len(racks) == 32 and {s.labels["rack"] for s in racks} >= {"rk101", "rk408"}
    assert {s.labels["meter"] for s in fams["dctwin_power_kw"].samples} == {
        "facility",
        "it",
        "cooling",
    }


def test_providers_plug_in_and_a_broken_one_does_not_blank_the_scrape(populated):
    twin, keys, tokens = populated
    live = LiveView(twin, EventBus(), scorers=[("anomaly_score", lambda: {"rk101": 0.91})])
    app = create_app(twin, keys=keys, live=live, open_metrics=True)

    def alerts_by_severity():
        g = GaugeMetricFamily("dctwin_alerts_active", "active alerts", labels=["severity"])
        g.add_metric(["critical"], 2)
        yield g

    def broken():
        raise RuntimeError("provider bug")

    app.state.services.metrics.register("alerts", alerts_by_severity)
    app.state.services.metrics.register("broken", broken)
    live.tick()
    fams = _families(TestClient(app).get("/metrics").text)
    assert fams["dctwin_alerts_active"].samples[0].value == 2
    assert fams["dctwin_metrics_provider_errors"].samples[0].value == 1
    anomaly = {s.labels["rack"]: s.value for s in fams["dctwin_rack_anomaly_score_max"].samples}
    assert anomaly == {"rk101": 0.91}
    assert "dctwin_pue" in fams  # the rest of the scrape is intact


@pytest.mark.slow
def test_real_prometheus_scrapes_the_api_and_answers_the_pue_query(populated, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "Debian's `prometheus` is not installed: `apt-get install prometheus` "
            "(listed in APT_PACKAGES in .ci/run)"
        )
    twin, keys, tokens = populated
    live = LiveView(twin, EventBus(), interval_s=0.5).start()
    app = create_app(twin, keys=keys, live=live)  # /metrics needs a key: Prometheus sends it
    prom_port = free_port()
    try:
        with serve(app) as url:
            target = url.removeprefix("http://")
            cfg = tmp_path / "prometheus.yml"
            cfg.write_text(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "scrape_configs:\n  - job_name: dctwin\n"
                f"    authorization:\n      credentials: {tokens[Role.viewer]}\n"
                f"    static_configs:\n      - targets: ['{target}']\n"
            )
            log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                prom = f"http://127.0.0.1:{prom_port}"
                result = _query_until(prom, 'dctwin_pue{scope="site"}', proc, tmp_path)
                api_pue = httpx.get(f"{url}/v1/pue", headers=bearer(tokens[Role.viewer])).json()[
                    "value"
                ]
                assert result[0]["metric"]["category"] == "PUE1"
                assert result[0]["metric"]["job"] == "dctwin"
                assert float(result[0]["value"][1]) == pytest.approx(api_pue, rel=1e-9)
                racks = _query_until(prom, "count(dctwin_rack_gpu_max_temp_c)", proc, tmp_path)
                assert float(racks[0]["value"][1]) == 32
                up = _query_until(prom, 'up{job="dctwin"}', proc, tmp_path)
                assert up[0]["value"][1] == "1"
            finally:
                proc.terminate()
                proc.wait(15)
                log.close()
    finally:
        live.stop()


def _query_until(prom: str, query: str, proc, tmp_path, timeout_s: float = 45.0) -> list:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"prometheus exited {proc.returncode}: "
                f"{(tmp_path / 'prometheus.log').read_text()[-2000:]}"
            )
        try:
            last = httpx.get(f"{prom}/api/v1/query", params={"query": query}, timeout=2).json()
            if last.get("status") == "success" and last["data"]["result"]:
                return last["data"]["result"]
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=2).text[:2000]
    pytest.fail(f"no result for {query} within {timeout_s}s: {last}; targets: {targets}")
