"""`dctwin demo` answers GET /v1/pue with a sane value within 30 s and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from api.keys import DEMO_KEY
from dctwin.broker import free_port


@pytest.mark.slow
def test_demo_serves_pue_within_30s_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dctwin.cli.main",
            "demo",
            "--port",
            str(port),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    value = None
    try:
        while time.monotonic() - t0 < 30:
            try:
                body = httpx.get(
                    f"http://127.0.0.1:{port}/v1/pue",
                    timeout=2,
                    headers={"Authorization": f"Bearer {DEMO_KEY}"},
                ).json()
                value = body.get("value")
                if value is not None:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        assert value is not None, f"no PUE within 30 s: {body if value is None else ''}"
        assert 1.0 < value < 2.0
        assert elapsed < 30
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, "broker and collector run as child processes"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"stopped." in out
    assert DEMO_KEY.encode() in out, "the demo prints its API key"
    time.sleep(0.5)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"children left running after Ctrl-C: {alive}"
