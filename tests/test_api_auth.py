"""Auth: every endpoint's role, 401 vs 403, hashed storage, revocation at once, CLI."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import duckdb
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import api_routes
from api.keys import DEMO_KEY, KeyStore, Role
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role, serve
from twin.state import Twin

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, site):
    d = tmp_path_factory.mktemp("auth")
    store = Store(d / "twin.duckdb")
    keys, tokens = keys_per_role(d / "keys.duckdb")
    app = create_app(Twin(site, store), keys=keys)
    yield app, keys, tokens, d
    store.close()


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _routes(app):
    return [r for r in api_routes(app) if r.path.startswith("/v1/")]


def test_every_v1_endpoint_needs_a_key_and_every_mutation_needs_operator(env):
    app = env[0]
    routes = _routes(app)
    assert len(routes) >= 10
    for r in routes:
        assert r.role is not None, f"{r.path} is open: include its router with app.include()"
        if r.methods & MUTATING:
            assert r.role.rank >= Role.operator.rank, (
                f"{sorted(r.methods)} {r.path} needs operator or admin, has {r.role}"
            )


def test_each_mutating_endpoint_per_role(env):
    """No key 401, unknown key 401, each role below the required one 403, the required
    role and above pass auth (whatever the handler then says)."""
    app, _, tokens, _ = env
    client = TestClient(app, raise_server_exceptions=False)
    mutating = [(m, r) for r in _routes(app) for m in sorted(r.methods & MUTATING)]
    assert mutating, "no mutating endpoint found"
    for method, r in mutating:
        url = _fill(r.path)
        label = f"{method} {r.path}"
        res = client.request(method, url, json={})
        assert res.status_code == 401, label
        assert res.headers["www-authenticate"].startswith("Bearer"), label
        assert res.headers["content-type"] == "application/problem+json", label
        res = client.request(method, url, json={}, headers=bearer("dct_000000000000_" + "x" * 40))
        assert res.status_code == 401, label
        assert 'error="invalid_token"' in res.headers["www-authenticate"], label
        for role in Role:
            res = client.request(method, url, json={}, headers=bearer(tokens[role]))
            if role.rank < r.role.rank:
                assert res.status_code == 403, f"{label} as {role}: {res.text}"
                assert res.json()["title"] == "Forbidden"
                assert r.role.value in res.json()["detail"]
            else:
                assert res.status_code not in (401, 403), f"{label} as {role}: {res.text}"


def test_each_read_endpoint_needs_viewer(env):
    app, _, tokens, _ = env
    client = TestClient(app, raise_server_exceptions=False)
    reads = [r for r in _routes(app) if "GET" in r.methods and r.path != "/v1/stream"]
    for r in reads:
        url = _fill(r.path)
        assert client.get(url).status_code == 401, r.path
        res = client.get(url, headers=bearer(tokens[Role.viewer]))
        expected_403 = r.role.rank > Role.viewer.rank
        assert (res.status_code == 403) == expected_403, f"{r.path}: {res.status_code}"
        assert res.status_code not in (401, 500), f"{r.path}: {res.text}"
    # the stream checks the key before it starts streaming
    assert client.get("/v1/stream").status_code == 401


def test_auth_is_checked_before_the_body(env):
    client = TestClient(env[0])
    res = client.post(
        "/v1/apikeys", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert res.status_code == 401
    res = client.post("/v1/apikeys", json={"role": "root"}, headers=bearer(env[2][Role.viewer]))
    assert res.status_code == 403


def test_keys_are_stored_hashed_never_in_clear(env):
    _, keys, tokens, d = env
    con = duckdb.connect(str(d / "keys.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT key_id, token_sha256 FROM api_keys").fetchall()
        dump = repr(con.execute("SELECT * FROM api_keys").fetchall())
    finally:
        con.close()
    for token in tokens.values():
        assert token not in dump
        secret = token.split("_", 2)[2]
        assert secret not in dump
        key_id = token.split("_")[1]
        assert (key_id, hashlib.sha256(token.encode()).hexdigest()) in rows


def test_revoked_key_stops_working_at_once_via_cli(tmp_path, site):
    """A key revoked by `dctwin apikey revoke` in another process is refused on the very
    next request to a running server."""
    store = Store(tmp_path / "twin.duckdb")
    keys_path = tmp_path / "keys.duckdb"
    app = create_app(Twin(site, store), keys=KeyStore(keys_path))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dctwin.cli.main", "apikey", *args, "--db", str(keys_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = cli("create", "--name", "noc-script", "--role", "operator")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("dct_")
    key_id = token.split("_")[1]
    listed = cli("list")
    assert key_id in listed.stdout and "operator" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout  # the list never shows secrets
    try:
        with serve(app) as url:
            import httpx

            with httpx.Client(base_url=url, headers=bearer(token)) as c:
                assert c.get("/v1/whoami").json()["role"] == "operator"
                assert c.get("/v1/pue").status_code == 200
                revoked = cli("revoke", key_id)
                assert revoked.returncode == 0, revoked.stderr
                res = c.get("/v1/pue")
                assert res.status_code == 401, res.text
                assert "revoked" in res.json()["detail"]
        assert "revoked" in cli("list", "--all").stdout
        assert key_id not in cli("list").stdout
        bad = cli("revoke", "nosuchkey000")
        assert bad.returncode == 1 and "no key" in bad.stderr
        bad_role = cli("create", "--name", "x", "--role", "root")
        assert bad_role.returncode == 2 and "--role" in bad_role.stderr
    finally:
        store.close()


def test_revoked_key_stops_working_at_once_via_api(env):
    app, keys, tokens, _ = env
    client = TestClient(app)
    admin = bearer(tokens[Role.admin])
    made = client.post("/v1/apikeys", json={"name": "grafana", "role": "viewer"}, headers=admin)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["created_at"].endswith("Z") and body["active"] is True
    h = bearer(body["token"])
    assert client.get("/v1/pue", headers=h).status_code == 200
    assert client.delete(f"/v1/apikeys/{body['key_id']}", headers=admin).json()["active"] is False
    assert client.get("/v1/pue", headers=h).status_code == 401
    assert client.delete("/v1/apikeys/nosuchkey000", headers=admin).status_code == 404


def test_healthz_and_metrics_open_only_by_configuration(tmp_path, site):
    store = Store(tmp_path / "twin.duckdb")
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    twin = Twin(site, store)
    try:
        default = TestClient(create_app(twin, keys=keys))
        assert default.get("/healthz").status_code == 200
        assert default.get("/metrics").status_code == 401
        assert default.get("/metrics", headers=bearer(tokens[Role.viewer])).status_code == 200
        closed = TestClient(create_app(twin, keys=keys, open_healthz=False, open_metrics=False))
        assert closed.get("/healthz").status_code == 401
        opened = TestClient(create_app(twin, keys=keys, open_healthz=True, open_metrics=True))
        assert opened.get("/metrics").status_code == 200
        assert opened.get("/v1/pue").status_code == 401  # opening ops endpoints opens nothing else
    finally:
        store.close()


def test_demo_key_is_operator_and_ensure_is_idempotent(tmp_path):
    keys = KeyStore(tmp_path / "k.duckdb")
    first = keys.ensure("demo", Role.operator, DEMO_KEY)
    again = keys.ensure("demo", Role.operator, DEMO_KEY)
    assert first.key_id == again.key_id and len(keys.list()) == 1
    assert keys.verify(DEMO_KEY).role is Role.operator
    assert keys.verify(DEMO_KEY + "x") is None
    assert keys.verify("Basic abc") is None
