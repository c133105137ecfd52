"""Run `python -m ingest.worker` subprocesses and watch them through their stats files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(
        self,
        tmp: Path,
        name: str,
        bootstrap: str,
        group: str,
        topic: str,
        *where: str,
        session_timeout_ms: int = 6000,
    ) -> None:
        self.stats_path = tmp / f"{name}.json"
        self.stats_path.unlink(missing_ok=True)
        self.log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ingest.worker",
                "--bootstrap",
                bootstrap,
                "--group",
                group,
                "--topics",
                topic,
                *where,
                "--stats-json",
                str(self.stats_path),
                "--client-id",
                name,
                "--max-poll-records",
                "20",
                "--session-timeout-ms",
                str(session_timeout_ms),
                "--max-poll-interval-ms",
                "20000",
                "--max-past-s",
                str(365 * 86400),
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait(self, predicate, timeout_s: float = 120.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if stats and predicate(stats):
                return stats
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout_s}s: {stats}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> dict:
        """SIGTERM: the worker stores what it polled, commits and writes final stats."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        log = self.stats_path.with_suffix(".log")
        assert code == 0, f"worker exited {code}: {log.read_text()[-3000:]}"
        return self.stats()


def caught_up(stats: dict, partitions: int) -> bool:
    lag = stats.get("lag", [])
    return len(lag) == partitions and all(p["lag"] == 0 for p in lag)
