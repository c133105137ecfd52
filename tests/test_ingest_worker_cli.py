"""`dctwin ingest` is the worker's command line; bad options fail clearly."""

from __future__ import annotations

import subprocess
import sys

from tests.ingest_workers import REPO


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dctwin.cli.main", "ingest", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ingest_command_shows_the_worker_options_and_rejects_bad_ones(tmp_path):
    help_ = run("--help")
    assert help_.returncode == 0 and "--shard-dir" in help_.stdout
    bad = run("--db", str(tmp_path / "x.duckdb"), "--partial", "sometimes")
    assert bad.returncode == 2 and "--partial" in bad.stderr and "sometimes" in bad.stderr
    neither = run("--bootstrap", "127.0.0.1:1")
    assert neither.returncode == 2 and "--db" in neither.stderr
