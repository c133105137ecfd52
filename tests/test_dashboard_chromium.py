"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a running
`dctwin demo`: real broker, simulated collector, ingest, twin and API in subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.keys import DEMO_KEY
from dctwin.broker import free_port
from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = REPO / "artifacts"
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
# Rules that fire on the simulated site's normal state, so the demo has alerts to show
# and acknowledge (the packaged rules stay quiet on a healthy simulated hall).
HOT_METER = "sv1/facility/utility"
DEMO_RULES = """
rules:
  - name: MeterDrawTestRule
    kind: threshold
    select: {device_class: meter}
    metric: power_kw
    op: ">"
    value: 100
    severity: warning
    annotations:
      summary: "Meter {device_id} draws {value:.0f} kW (test rule: above 100 kW)"
"""


@pytest.fixture
def demo(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    env["DCTWIN_ALERT_INTERVAL_S"] = "1"
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEMO_RULES)
    env["DCTWIN_ALERT_RULES_FILE"] = str(rules)
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dctwin.cli", "demo", "--port", str(port),
         "--workdir", str(tmp_path / "demo")], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "demo did not serve a PUE within 60 s"
            try:
                if httpx.get(f"{url}/v1/pue", headers=AUTH, timeout=2).json().get("value"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _api_pue_text(url: str) -> str:
    value = httpx.get(f"{url}/v1/pue", headers=AUTH, timeout=5).json()["value"]
    return f"{value:.3f}"  # the dashboard's rounding (fmtPue: toFixed(3))


@pytest.mark.slow
def test_dashboard_against_running_demo(demo, tmp_path):
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed: `apt-get install chromium` "
                    "(listed in APT_PACKAGES in .ci/run)")
    from playwright.sync_api import expect, sync_playwright

    url = demo
    console: list[tuple[str, str]] = []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
            page.goto(f"{url}/?key={DEMO_KEY}")
            assert "key=" not in page.url, "the key must leave the address bar"
            # (locator waits, not wait_for_function: the page's CSP forbids eval)
            expect(page.locator("[data-testid=pue-value]")).to_have_text(
                re.compile(r"^\d\.\d{3}$"), timeout=20_000)
            page.wait_for_selector(".live.on", timeout=20_000)

            # PUE shown == the API's PUE, same rounding (sampled around the read: it moves)
            for _ in range(20):
                before = _api_pue_text(url)
                shown = page.inner_text("[data-testid=pue-value]").strip()
                after = _api_pue_text(url)
                if shown in (before, after):
                    break
                time.sleep(0.3)
            else:
                pytest.fail(f"dashboard shows PUE {shown}, API says {before} / {after}")

            # one heat-map cell per rack of the site model
            expect(page.locator("[data-testid=heatmap] .rack").first).to_be_visible()
            cells = page.query_selector_all("[data-testid=heatmap] .rack")
            api_racks = httpx.get(f"{url}/v1/racks", headers=AUTH).json()["items"]
            assert len(cells) == len(api_racks) == 32
            assert sorted(c.get_attribute("data-rack") for c in cells) == sorted(
                r["rack"] for r in api_racks)

            # drill down: rack -> device with charts
            page.click("[data-rack=rk203]")
            page.wait_for_selector("#rack-gpus .gpu")
            assert len(page.query_selector_all("#rack-gpus .gpu")) == 64 + 6
            page.click("#rack-gpus .gpu >> nth=0")
            page.wait_for_selector("#device-chart-temp svg path", timeout=10_000)

            _acknowledge_an_alert(page, url)

            page.click("#drill-close")
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot), full_page=True)
            print(f"\ndashboard screenshot: {shot}")
        finally:
            ctx.close()
    errors = [(t, m) for t, m in console if t in ("error", "pageerror")]
    assert not errors, f"console errors: {errors}"


def _acknowledge_an_alert(page, url: str) -> None:
    """The operator demo key acknowledges the utility meter's alert from the dashboard."""
    from playwright.sync_api import expect

    row = page.locator("[data-testid=alerts] li", has_text=HOT_METER)
    expect(row).to_have_count(1, timeout=30_000)  # fires within a few evaluations
    alert_id = row.get_attribute("data-alert-id")
    before = httpx.get(f"{url}/v1/alerts/{alert_id}", headers=AUTH).json()
    assert before["status"] == "firing" and before["acknowledged"] is None
    row.locator("[data-testid=ack]").click()
    expect(row.locator(".sev.acked")).to_have_count(1, timeout=10_000)
    after = httpx.get(f"{url}/v1/alerts/{alert_id}", headers=AUTH).json()
    assert after["acknowledged"]["by"] == "demo (embedded key)"
    assert [t["transition"] for t in after["transitions"]][-1] == "acknowledged"
