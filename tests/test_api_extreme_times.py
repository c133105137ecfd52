"""Times near year 1 or 9999 are 422 problems naming the supported range, never 5xx."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role
from twin.state import Twin

GPU = "sv1/h1/row1/rk101/n01/gpu0"
EXTREMES = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+02:00",  # year 0 in UTC
    "0001-01-01T23:59:59-12:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:00:00-05:00",  # year 10000 in UTC
    "9999-12-31T23:59:59.999999+14:00",
    # the edges of the supported range, and just outside it
    "1970-01-01T00:00:00Z",
    "2199-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z",
    "2200-01-01T00:00:00Z",
)
# (path, fixed params, the time parameters it takes)
ENDPOINTS = (
    ("/v1/pue", {}, ("start", "end")),
    ("/v1/pue", {"step": "1h"}, ("start", "end")),
    ("/v1/heat-balance", {}, ("start", "end")),
    ("/v1/heat-balance", {"step": "1h"}, ("start", "end")),
    ("/v1/series", {"id": GPU, "metric": "gpu_temp_c"}, ("start", "end")),
    ("/v1/alerts", {}, ("since", "until")),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory, site):
    d = tmp_path_factory.mktemp("extremes")
    store = Store(d / "twin.duckdb")
    keys, tokens = keys_per_role(d / "keys.duckdb")
    from twin.alerts.service import AlertService, load_config

    rules, receivers = load_config()
    twin = Twin(site, store)
    alerts = AlertService(store, site, rules, receivers)
    c = TestClient(create_app(twin, keys=keys, alerts=alerts), raise_server_exceptions=False)
    c.headers.update(bearer(tokens[Role.viewer]))
    yield c
    store.close()


def _cases():
    for path, fixed, (lo, hi) in ENDPOINTS:
        for t in EXTREMES:
            yield path, {**fixed, lo: t}
            yield path, {**fixed, hi: t}
        yield path, {**fixed, lo: EXTREMES[0], hi: EXTREMES[3]}
        yield path, {**fixed, lo: EXTREMES[3], hi: EXTREMES[0]}


@pytest.mark.parametrize(("path", "params"), list(_cases()))
def test_extreme_times_never_5xx(client, path, params):
    res = client.get(path, params=params)
    assert res.status_code < 500, f"{path} {params}: {res.status_code} {res.text}"
    if res.status_code >= 400:
        assert res.headers["content-type"] == "application/problem+json", res.text


def test_out_of_range_is_422_naming_parameter_and_range(client):
    res = client.get("/v1/pue", params={"start": "0001-01-01T00:00:00+02:00"})
    assert res.status_code == 422, res.text
    body = res.json()
    assert body["errors"][0]["parameter"] == "start"
    assert "1970-01-01T00:00:00Z .. 2200-01-01T00:00:00Z" in body["detail"]
