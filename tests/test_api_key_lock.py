"""A key file locked by another process never stalls the API: /healthz stays fast, /v1
answers from the last key set read, or 503 (never 500) when none was ever read."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from api.app import create_app
from api.keys import KeyStore, Role
from ingest.store import Store
from tests.apihelpers import bearer, serve
from twin.state import Twin

HOLD_S = 4.0

# What `dctwin apikey create` does to the file, minus the closing: DuckDB's own lock
# (an fcntl lock, per process, so it must be another process to be felt here), held with a
# change written, so the server sees the file change and must re-read it.
HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    con.execute("INSERT INTO api_keys VALUES ('zzzzzzzzzzzz', 'new', 'viewer', 'x',"
                " now()::TIMESTAMP, NULL)")
    con.execute("CHECKPOINT")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


@contextmanager
def key_file_locked(path, hold_s: float = HOLD_S):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(hold_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        yield
    finally:
        p.wait(timeout=hold_s + 30)


@pytest.fixture
def env(tmp_path, site):
    store = Store(tmp_path / "twin.duckdb")
    # lock_timeout_s=1: the old code slept up to this long on the event loop, then 500
    keys = KeyStore(tmp_path / "keys.duckdb", lock_timeout_s=1.0)
    token = keys.create("noc", Role.viewer)[1]
    yield Twin(site, store), keys, token
    store.close()


def test_locked_key_file_keeps_healthz_fast_and_v1_serving(env):
    twin, keys, token = env
    with serve(create_app(twin, keys=keys)) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/v1/pue", headers=bearer(token)).status_code == 200  # key set read
        with key_file_locked(keys.path), ThreadPoolExecutor(8) as pool:
            started = time.monotonic()
            # a burst of keyed requests while the file is locked and changed...
            pue = [
                pool.submit(lambda: httpx.get(f"{url}/v1/pue", headers=bearer(token), timeout=30))
                for _ in range(16)
            ]
            time.sleep(0.05)
            # ...must not hold up /healthz, which needs no key at all
            healthz_s = []
            while time.monotonic() - started < HOLD_S - 1:
                t0 = time.monotonic()
                assert c.get("/healthz").status_code in (200, 503)
                healthz_s.append(time.monotonic() - t0)
                time.sleep(0.1)
            statuses = [f.result().status_code for f in pue]
            late = c.get("/v1/pue", headers=bearer(token))
        assert max(healthz_s) < 0.5, healthz_s
        assert set(statuses) == {200}, statuses  # the last key set read still admits it
        assert late.status_code == 200, late.text
    assert keys.stale_answers > 0
    assert keys.get("zzzzzzzzzzzz") is not None  # read once the lock was released


def test_key_file_locked_before_any_read_is_503_problem(env):
    twin, first, token = env
    keys = KeyStore(first.path, lock_timeout_s=1.0)  # a new store: no key set read yet
    with serve(create_app(twin, keys=keys)) as url, key_file_locked(keys.path):
        t0 = time.monotonic()
        res = httpx.get(f"{url}/v1/pue", headers=bearer(token), timeout=30)
        took = time.monotonic() - t0
        healthz = httpx.get(f"{url}/healthz", timeout=30)
    assert res.status_code == 503, res.text
    assert res.headers["content-type"] == "application/problem+json"
    assert "locked" in res.json()["detail"] and res.headers["retry-after"] == "1"
    assert took < 2.0
    assert healthz.status_code in (200, 503)
