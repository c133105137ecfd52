"""The dashboard's what-if panel in Chromium (issue 27): saved runs listed, one run again from
the live state, two compared side by side."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from api.app import create_app
from api.keys import Role
from domain.whatif import Failure, Scenario
from ingest.store import Store
from simulator.whatif import run as run_whatif
from tests.apihelpers import keys_per_role, serve
from tests.test_dashboard_chromium import CHROMIUM, _dashboard
from tests.twin_sim import SimHarness
from twin.state import Twin
from twin.whatif.service import WhatIfService


def test_dashboard_runs_a_saved_whatif_and_compares(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (APT_PACKAGES in .ci/run)")
    from playwright.sync_api import expect

    store = Store(tmp_path / "twin.duckdb")
    sim = SimHarness(store)
    for _ in range(3):
        sim.step(10.0)
    svc = WhatIfService(sim.site, store, run_whatif, stale_after_s=60.0)
    svc.start()
    fast = {"horizon_h": 0.5, "step_s": 120.0}
    ids = [
        svc.submit(Scenario(name="as is", **fast))["id"],
        svc.submit(Scenario(name="cdu1 fails", failures=[Failure(component="cdu1")], **fast))["id"],
    ]
    deadline = time.monotonic() + 60
    while any(svc.get(i)["status"] != "done" for i in ids):  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    console: list[tuple[str, str]] = []
    try:
        with (
            serve(create_app(Twin(sim.site, store), keys=keys, whatif=svc)) as url,
            _dashboard(
                url,
                tokens[Role.operator],
                tmp_path / "profile",
                console,
                {"width": 1400, "height": 900},
            ) as page,
        ):
            runs = page.locator("#whatif li")
            expect(runs).to_have_count(2, timeout=20_000)
            expect(runs.nth(0)).to_contain_text("cdu1 fails")
            runs.nth(0).locator("input").check()
            runs.nth(1).locator("input").check()
            page.locator("[data-testid=whatif-compare]").click()
            table = page.locator("#whatif-table")
            expect(table).to_contain_text("cdu1 fails", timeout=10_000)
            expect(table).to_contain_text("as is")
            expect(table).to_contain_text("peak GPU °C")
            runs.nth(1).locator("[data-testid=whatif-rerun]").click()  # "as is", again
            expect(runs).to_have_count(3, timeout=10_000)
        assert [r["name"] for r in svc.runs()].count("as is") == 2
    finally:
        svc.stop()
        store.close()
    errors = [(t, m) for t, m in console if t in ("error", "pageerror") and "503" not in m]
    assert not errors, f"console errors: {errors}"
