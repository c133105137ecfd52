"""Helpers for API tests: a Store filled with simulated telemetry and keys per role."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from api.http_server import uvicorn_config
from api.keys import KeyStore, Role
from dctwin.broker import free_port
from experiments.simdata import fill_store  # noqa: F401 - re-exported for the API tests


def keys_per_role(path: Path) -> tuple[KeyStore, dict[Role, str]]:
    keys = KeyStore(path)
    tokens = {role: keys.create(f"test-{role.value}", role)[1] for role in Role}
    return keys, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def serve(app, timeout_s: float = 15.0, **config) -> Iterator[str]:
    """Run `app` on a real uvicorn server on a free loopback port, configured as
    `dctwin serve` configures it (`config`: other uvicorn.Config options); yields the
    base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, **config))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
