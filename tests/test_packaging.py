"""A rack collector installs and runs without the server's heavy analytics stack."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from kafka.admin import KafkaAdminClient

from dctwin.broker import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("polars", "duckdb", "fastapi", "sklearn", "pyarrow", "uvicorn")


def test_base_and_collector_extras_exclude_heavy_packages():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    rack = meta["dependencies"] + meta["optional-dependencies"]["collector"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in rack}
    assert not names & {"polars", "duckdb", "fastapi", "scikit-learn", "pyarrow", "uvicorn"}


def test_collector_modules_import_no_heavy_package():
    code = (
        "import sys\n"
        "import collectors.daemon, collectors.daemon_config, collectors.sources.simulated.source\n"
        "import collectors.sources as s\n"
        "import importlib\n"
        "for kind in s.source_types():\n"
        "    importlib.import_module(f'collectors.sources.{kind}.source')\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"collector imported {result.stdout} {result.stderr}"


def test_dctwin_broker_command_starts_and_stops_cleanly():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dctwin.cli.main", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    try:
        wait_for_port("127.0.0.1", port, 20)
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while "telemetry.gpu" not in admin.list_topics():
            assert time.monotonic() < deadline, "broker command did not create the topics"
            time.sleep(0.2)
        admin.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert b"broker ready: KAFKA_BOOTSTRAP=127.0.0.1:" in out
    assert b"broker stopped" in out
    # the port is free again: the tansu child went with it
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
