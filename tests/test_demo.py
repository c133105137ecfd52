"""`dctwin demo` as a user runs it: a real process with its broker and collector children.

- history first: right after start the store holds the simulated past (issue 26);
- a quiet site shows no firing alert; a scenario run with `dctwin scenario run` against it
  shows in the telemetry and pages the local on-call receiver, signature verified;
- SIGINT to the demo process alone (not its group) or SIGTERM stops everything within
  10 s, children included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from api.keys import DEMO_KEY
from dctwin.broker import free_port

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
STOP_WITHIN_S = 10.0


def start_demo(tmp_path: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    # a file, not a pipe: nobody reads a pipe until the end, and a full one blocks the demo
    out = open(tmp_path / "demo.out", "wb")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "dctwin.cli.main", "demo", "--port", str(port)]
        + ["--workdir", str(tmp_path / "demo"), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own group: a signal to it reaches it alone
    )


def output(tmp_path: Path) -> str:
    return (tmp_path / "demo.out").read_text(errors="replace")


def wait_up(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        assert proc.poll() is None, "the demo exited"
        try:
            if httpx.get(f"{url}/v1/pue", headers=AUTH, timeout=2).json().get("value"):
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no PUE within {timeout_s} s")


def stop_and_check(proc: subprocess.Popen[bytes], sig: int, tmp_path: Path) -> tuple[float, str]:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2, "broker and collector run as child processes"
    t0 = time.monotonic()
    os.kill(proc.pid, sig)  # the process alone, not its group
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("the demo did not stop within 30 s") from None
    took = time.monotonic() - t0
    time.sleep(0.3)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"children left running: {alive}"
    text = output(tmp_path)
    assert proc.returncode == 0, text[-3000:]
    assert "stopped." in text
    return took, text


@pytest.mark.slow
def test_demo_history_first_scenario_pages_oncall_and_sigint_stops_all(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hours = 0.5
    proc = start_demo(tmp_path, port, "--history-hours", str(hours), "--quiet-site")
    try:
        try:
            wait_up(proc, url, 240)
        except AssertionError:
            raise AssertionError(output(tmp_path)[-3000:]) from None
        # history first: PUE buckets reach back the whole history span
        ov = httpx.get(f"{url}/v1/overview", params={"hours": 1, "step_s": 60}, headers=AUTH)
        first = datetime.fromisoformat(ov.json()["pue_history"][0]["time"].replace("Z", "+00:00"))
        assert first <= datetime.now(UTC) - timedelta(hours=hours) + timedelta(minutes=3)
        # a quiet site: nothing firing
        firing = httpx.get(f"{url}/v1/alerts", params={"status": "firing"}, headers=AUTH)
        assert firing.json()["items"] == [], firing.json()
        # a scenario against the running demo, by the CLI as a user would
        env = {**os.environ, "DCTWIN_API_KEY": DEMO_KEY}
        run = subprocess.run(
            [sys.executable, "-m", "dctwin.cli.main", "scenario", "run", "utility-dip"]
            + ["--url", url],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        bad = subprocess.run(
            [sys.executable, "-m", "dctwin.cli.main", "scenario", "run", "nope", "--url", url],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert bad.returncode == 2 and "404: no scenario 'nope'" in bad.stderr
        # the fault shows in telemetry: the UPS goes on battery (onset 5 s), and on-call
        # gets the UpsOnBattery page with a valid signature
        deadline = time.monotonic() + 90
        on_battery, paged = None, []
        while time.monotonic() < deadline and not (on_battery == 1.0 and paged):
            dev = httpx.get(f"{url}/v1/devices/sv1/facility/ups", headers=AUTH).json()
            on_battery = next(
                (m["value"] for m in dev.get("metrics", []) if m["metric"] == "on_battery"), None
            )
            pages = httpx.get(f"{url}/v1/oncall/pages", headers=AUTH).json()["pages"]
            paged = [
                p
                for p in pages
                if p["signature_valid"]
                and any(a["labels"].get("alertname") == "UpsOnBattery" for a in p["alerts"])
            ]
            time.sleep(1)
        assert on_battery == 1.0, dev
        assert paged, pages
        alert = next(a for a in paged[0]["alerts"] if a["labels"]["alertname"] == "UpsOnBattery")
        assert alert["annotations"]["runbook_url"] == f"{url}/runbooks/UpsOnBattery"
        assert httpx.get(alert["annotations"]["runbook_url"]).status_code == 200
    finally:
        if proc.poll() is None:
            took, out = stop_and_check(proc, signal.SIGINT, tmp_path)
    assert took < STOP_WITHIN_S, f"stopped after {took:.1f} s"
    assert "history" in out and "samples" in out
    assert DEMO_KEY in out, "the demo prints its API key"


@pytest.mark.slow
def test_demo_without_history_stops_on_sigterm(tmp_path):
    port = free_port()
    proc = start_demo(tmp_path, port, "--history-hours", "0", "--quiet-site", "--no-oncall")
    try:
        up_s = wait_up(proc, f"http://127.0.0.1:{port}", 60)
        assert up_s < 60
    finally:
        took, _ = stop_and_check(proc, signal.SIGTERM, tmp_path)
    assert took < STOP_WITHIN_S, f"stopped after {took:.1f} s"
