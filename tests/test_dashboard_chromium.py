"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a running
`dctwin demo`: real broker, simulated collector, ingest, twin and API in subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.keys import DEMO_KEY, Role
from dctwin.broker import free_port, stop_process
from ingest.store import Store
from tests.apihelpers import keys_per_role, serve
from tests.conftest import REPO
from twin.optimizer.recommendations import RecommendationStore
from twin.optimizer.search import Decision
from twin.state import Twin

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
        [
            sys.executable,
            "-m",
            "dctwin.cli.main",
            "demo",
            "--port",
            str(port),
            "--workdir",
            str(tmp_path / "demo"),
            # issue 26: a short past (history first) and no scenario: a healthy site
            "--history-hours",
            "2",
            "--quiet-site",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # the history is stored before the API opens
        while True:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "demo did not serve a PUE within 180 s"
            try:
                if httpx.get(f"{url}/v1/pue", headers=AUTH, timeout=2).json().get("value"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        yield url
    finally:
        stop_process(proc, signal.SIGINT, 30)
        log.close()


@contextlib.contextmanager
def _dashboard(
    url: str, key: str, profile: Path, console: list[tuple[str, str]], viewport: dict[str, int]
) -> Iterator:
    """A Chromium page signed in to the dashboard at `url`; console messages collected."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=viewport,
        )
        try:
            page = ctx.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
            page.goto(f"{url}/?key={key}")
            yield page
        finally:
            ctx.close()


def _api_pue_text(url: str) -> str:
    value = httpx.get(f"{url}/v1/pue", headers=AUTH, timeout=5).json()["value"]
    return f"{value:.3f}"  # the dashboard's rounding (fmtPue: toFixed(3))


@pytest.mark.slow
def test_dashboard_against_running_demo(demo, tmp_path):
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(
            "Debian's chromium is not installed: `apt-get install chromium` "
            "(listed in APT_PACKAGES in .ci/run)"
        )
    from playwright.sync_api import expect

    url = demo
    console: list[tuple[str, str]] = []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    with _dashboard(
        url, DEMO_KEY, tmp_path / "profile", console, {"width": 1600, "height": 1000}
    ) as page:
        assert "key=" not in page.url, "the key must leave the address bar"
        # (locator waits, not wait_for_function: the page's CSP forbids eval)
        expect(page.locator("[data-testid=pue-value]")).to_have_text(
            re.compile(r"^\d\.\d{3}$"), timeout=20_000
        )
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
            r["rack"] for r in api_racks
        )

        _ups_battery_panel(page, url)
        # day one: the shipped default model serves failure risk with per-device risk
        # within a minute of the start, and the dashboard names the model by the heat map
        deadline = time.monotonic() + 60
        while True:
            risk = httpx.get(f"{url}/v1/failure-risk", headers=AUTH, timeout=30)
            assert risk.status_code == 200, risk.text
            if risk.json()["devices"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        body = risk.json()
        assert body["devices"], "no per-device failure risk within a minute"
        assert body["model"]["source"] == "shipped_default"
        shown = page.locator("[data-testid=risk-model]")
        expect(shown).to_contain_text("shipped default", timeout=20_000)
        expect(shown).to_contain_text(body["model_version"])

        # drill down: rack -> device with charts
        page.click("[data-rack=rk203]")
        page.wait_for_selector("#rack-gpus .gpu")
        assert len(page.query_selector_all("#rack-gpus .gpu")) == 64 + 48
        page.click("#rack-gpus .gpu >> nth=0")
        page.wait_for_selector("#device-chart-temp svg path", timeout=10_000)

        _acknowledge_an_alert(page, url)

        page.click("#drill-close")
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot), full_page=True)
        print(f"\ndashboard screenshot: {shot}")
        if os.environ.get("DCTWIN_UPDATE_SCREENSHOT") == "1":  # the README's (issue 26)
            (REPO / "docs" / "img").mkdir(exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "img" / "dashboard.png")
    errors = [(t, m) for t, m in console if t in ("error", "pageerror")]
    assert not errors, f"console errors: {errors}"


def _ups_battery_panel(page, url: str) -> None:
    """The UPS battery panel shows the UPS's readings and the site file's battery."""
    from playwright.sync_api import expect

    expect(page.locator("[data-testid=ups-state]")).to_have_text("on utility", timeout=20_000)
    dev = httpx.get(f"{url}/v1/devices/sv1/facility/ups", headers=AUTH).json()
    got = {m["metric"]: m["value"] for m in dev["metrics"]}
    assert got["battery_charge_pct"] == 100.0  # healthy: on float charge
    expect(page.locator("[data-testid=ups-charge]")).to_have_text("100 %")
    # the example site: 300 s ride-through; at the demo's load the runtime is minutes more
    expect(page.locator("[data-testid=ups-runtime]")).to_have_text(
        re.compile(r"^\d+(\.\d)? min \(needs 5\.0 min\)$")
    )
    expect(page.locator("[data-testid=ups-runtime]")).not_to_have_class("bad")
    expect(page.locator("[data-testid=ups-temp]")).to_have_text(re.compile(r"^\d+ °C$"))
    expect(page.locator("[data-testid=ups-test]")).to_have_text(
        re.compile("^(passed|in progress)$")
    )
    expect(page.locator("[data-testid=ups-age]")).to_contain_text("installed 2024-03-01")
    expect(page.locator("[data-testid=ups-replace]")).to_contain_text("2029-03-01 (in ")


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


def test_dashboard_recommendations_accept_and_reject(site, tmp_path):
    """Proposed recommendations show their setpoint changes and predicted savings; an
    operator accepts one and rejects another from the dashboard, recorded under the key."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (APT_PACKAGES in .ci/run)")
    from playwright.sync_api import expect

    store = Store(tmp_path / "twin.duckdb")
    recs = RecommendationStore(store.cursor())
    current = {"chw_supply_setpoint_c": 18.0, "cdu_supply_setpoint_c": 32.0}
    ids = [
        recs.propose(
            Decision(
                recommended={"chw_supply_setpoint_c": 20.5 + k, "cdu_supply_setpoint_c": 32.0},
                reason="lower predicted facility power",
                category="recommended",
                current=current,
                state={"it_kw": 1290.0, "outdoor_wetbulb_c": 14.2},
                model_version="opt-test",
                predicted_facility_kw=1612.0,
                predicted_savings_kw=41.5 + k,
                savings_low_kw=33.0,
                savings_high_kw=47.9,
                pue_current=1.282,
                pue_recommended=1.25,
                binding_constraint="ramp:chw_supply_setpoint_c",
            ),
            site.site.id,
        )
        for k in range(2)
    ]
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    app = create_app(Twin(site, store), keys=keys)
    console: list[tuple[str, str]] = []
    with (
        serve(app) as url,
        _dashboard(
            url,
            tokens[Role.operator],
            tmp_path / "profile",
            console,
            {"width": 1400, "height": 900},
        ) as page,
    ):
        # this app runs no alert engine: that panel says so, the rest still works
        expect(page.locator("[data-testid=alerts]")).to_contain_text(
            "unavailable: the alert engine is not running", timeout=20_000
        )
        items = page.locator("#recommendations li")
        expect(items).to_have_count(2, timeout=20_000)
        newest = items.nth(0)  # newest first: ids[1]
        expect(newest).to_contain_text("chw supply °C 18.0 → 21.5")
        expect(newest).to_contain_text("−42.5 kW (33–48)")
        expect(newest).to_contain_text("PUE -0.032")
        newest.locator("[data-testid=rec-accept]").click()
        expect(items.nth(0)).to_contain_text("accepted", timeout=10_000)
        items.nth(1).locator("[data-testid=rec-reject]").click()
        expect(items.nth(1)).to_contain_text("rejected", timeout=10_000)
    got = {i: recs.get(i) for i in ids}
    assert got[ids[1]]["status"] == "accepted" and got[ids[0]]["status"] == "rejected"
    assert {r["decided_by"] for r in got.values()} == {"test-operator"}
    # the browser logs the /v1/alerts 503 itself; anything else is a dashboard error
    errors = [
        (t, m)
        for t, m in console
        if t in ("error", "pageerror") and "status of 503 (Service Unavailable)" not in m
    ]
    assert not errors, f"console errors: {errors}"
    store.close()
