"""/healthz and /readyz reflect the background jobs the process runs (issue #25: /healthz
said "ok" next to `"ingest_running": false`)."""

from __future__ import annotations

import time

import httpx
import pytest

from api.app import create_app
from ingest.store import Store
from tests.apihelpers import keys_per_role, serve
from twin.health import HealthRegistry
from twin.periodic import Periodic
from twin.state import Twin


def _wait_for(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.2)


def test_healthz_is_503_naming_ingest_when_its_thread_is_gone(settings, tmp_path):
    """A real Server against the broker, over real HTTP: healthy and ready once ingest has
    its partitions; ingest stopped underneath the API -> /healthz 503 naming ingest (and
    /readyz 503), the other jobs still ok."""
    from dctwin.server import Server

    settings.apikey_db = tmp_path / "keys.duckdb"
    settings.alerts_topic = ""
    settings.failure_models = tmp_path / "models"
    settings.twin_tick_s = 1.0
    server = Server(settings)
    try:
        server.start_ingest()
        with serve(server.uvicorn_server().config.app) as url, httpx.Client(base_url=url) as c:
            ready = _wait_for(
                lambda: (r := c.get("/readyz")).status_code == 200 and r,
                90,
                "/readyz did not become 200 (partitions assigned, twin ticked)",
            )
            assert ready.json()["status"] == "ready"
            ok = c.get("/healthz")
            assert ok.status_code == 200, ok.text
            body = ok.json()
            assert body["status"] == "ok" and body["failing"] == []
            comps = body["components"]
            assert comps["ingest"]["status"] == "ok"
            assert comps["ingest"]["assigned_partitions"] > 0
            assert "lag_records" in comps["ingest"]
            for name in ("twin", "live", "alerts", "alert-delivery"):
                assert comps[name]["status"] in ("ok", "starting"), (name, comps[name])

            # the ingest loop ends (as when its thread dies) while the API keeps serving
            assert server.ingestor is not None and server.ingest_thread is not None
            server.ingestor.stop_event.set()
            server.ingest_thread.join(timeout=30)
            assert not server.ingest_thread.is_alive()

            down = c.get("/healthz")
            assert down.status_code == 503, down.text
            body = down.json()
            assert down.headers["content-type"] == "application/problem+json"
            assert body["type"] == "/problems/unhealthy" and body["failing"] == ["ingest"]
            assert "ingest down" in body["detail"]
            assert body["components"]["ingest"]["status"] == "down"
            assert "ingest" in body["components"]["ingest"]["detail"]
            assert body["components"]["twin"]["status"] == "ok"
            not_ready = c.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["failing"] == ["ingest"]
    finally:
        server.stop()


@pytest.fixture
def app_parts(tmp_path, site):
    store = Store(tmp_path / "twin.duckdb")
    keys, _ = keys_per_role(tmp_path / "keys.duckdb")
    yield Twin(site, store), keys
    store.close()


STALE_S = 2.0


def test_a_stale_job_fails_health_and_jobs_not_run_do_not(app_parts):
    """A job whose rounds keep failing is stale after its threshold (503 naming it, with
    the error); components this process does not run are not_running and pass."""
    twin, keys = app_parts
    registry = HealthRegistry(["ingest", "twin", "anomaly"])

    def broken() -> None:
        raise RuntimeError("disk full")

    job = Periodic(broken, 0.05, "twin")
    # the threshold counts from the job's start: start it once the server answers, so a
    # slow server start on a loaded machine does not use it up
    registry.register("twin", lambda: job.health(stale_after_s=STALE_S))
    try:
        with serve(create_app(twin, keys=keys, health_registry=registry)) as url:
            job.start()
            first = httpx.get(f"{url}/healthz")
            assert first.status_code == 200, first.text  # within its threshold: starting
            assert first.json()["components"]["twin"]["status"] == "starting"
            time.sleep(STALE_S + 0.5)
            res = httpx.get(f"{url}/healthz")
            assert res.status_code == 503, res.text
            body = res.json()
            assert body["status"] == 503 and body["failing"] == ["twin"]
            twin_h = body["components"]["twin"]
            assert twin_h["status"] == "stale" and "disk full" in twin_h["detail"]
            assert twin_h["stale_after_s"] == STALE_S
            assert body["components"]["ingest"]["status"] == "not_running"
            assert body["components"]["anomaly"]["status"] == "not_running"
            registry.unregister("twin")  # stopped on purpose: no longer counted
            assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        job.stop(5)


def test_app_without_a_server_is_live_and_ready(app_parts):
    twin, keys = app_parts
    with serve(create_app(twin, keys=keys)) as url:
        assert httpx.get(f"{url}/healthz").json() == {
            "status": "ok",
            "failing": [],
            "components": {},
        }
        assert httpx.get(f"{url}/readyz").status_code == 200
