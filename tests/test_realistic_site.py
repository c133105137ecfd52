"""The example site is a realistic DGX H100-class hall (issue #23): `dctwin simulate` of a
healthy day keeps every PSU within its rating with 2-5 % conversion loss, GPU readings
are whole degrees and differ from part to part, the CDU exchanger has a 1-3 K approach at
design flow that fouling raises, and the site validator rejects the old PSU sizing."""

from __future__ import annotations

import logging
import re

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from dctwin.cli.main import app
from domain.capacity import check_capacity
from domain.site import EXAMPLE_SITE, SiteFileError, load_site
from simulator.liquid import hx_conductance
from simulator.model import SiteSimulator

SITE = load_site(EXAMPLE_SITE)
PSU_RATED_W = SITE.templates["hgx-h100"].psu_rated_w


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    """24 simulated hours of the example site, no faults, read every 5 minutes (the model
    is stable at any step; the coarse step keeps the test at a few seconds)."""
    out = tmp_path_factory.mktemp("day") / "run"
    args = ["simulate", "--hours", "24", "--step-s", "300", "--seed", "3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect()
    con.execute(f"CREATE VIEW s AS SELECT * FROM '{out}/samples.parquet'")
    return con


def psu_readings(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
    rows = con.execute(
        """SELECT max(value) FILTER (metric = 'output_power_w'),
                  max(value) FILTER (metric = 'input_power_w')
           FROM s WHERE device_id LIKE '%/shelf/psu%' GROUP BY read_time, device_id"""
    ).fetchall()
    out, inp = np.array(rows, dtype=float).T
    return out, inp


@pytest.mark.slow
def test_healthy_day_keeps_psus_within_rating_with_realistic_losses(day):
    out, inp = psu_readings(day)
    assert len(out) == 288 * SITE.templates["hgx-h100"].psus * len(SITE.racks())
    assert out.max() <= PSU_RATED_W  # never above 100 % of rating
    loss_share = (inp - out).sum() / inp.sum()  # PSU losses / IT input
    assert 0.02 <= loss_share <= 0.05


@pytest.mark.slow
def test_gpu_temperatures_are_whole_degrees_and_differ_between_parts_at_equal_load(day):
    rows = day.execute(
        """WITH g AS (
             SELECT read_time, device_id,
                    max(value) FILTER (metric = 'gpu_temp_c') AS temp_c,
                    max(value) FILTER (metric = 'power_w') AS power_w
             FROM s WHERE metric IN ('gpu_temp_c', 'power_w') AND kind = 'gpu' GROUP BY ALL)
           SELECT read_time, count(*), quantile_cont(temp_c, 0.05), quantile_cont(temp_c, 0.95)
           FROM g WHERE power_w >= 695 GROUP BY read_time"""  # at the power cap: equal load
    ).fetchall()
    busy = [(p5, p95) for _, n, p5, p95 in rows if n >= 100]
    assert len(busy) > 200  # most reads of the day have training racks at the cap
    for p5, p95 in busy:
        assert p95 - p5 >= 3.0  # cold plates, TIMs and sensor offsets differ
    (whole,) = day.execute(
        "SELECT bool_and(value = round(value)) FROM s WHERE metric = 'gpu_temp_c'"
    ).fetchone()
    assert whole  # NVML reports whole degrees
    power = day.execute("SELECT value FROM s WHERE metric = 'power_w' AND kind = 'gpu'")
    mw = np.array(power.fetchall(), dtype=float).ravel() * 1000.0
    assert np.allclose(mw, np.round(mw))  # milliwatts, as nvmlDeviceGetPowerUsage


def test_full_load_figures_of_the_example_site():
    sim = SiteSimulator(SITE, seed=1, constant_util=1.0)
    for _ in range(30):
        sim.step(60.0)
    lay, p = sim.layout, sim.plant
    load = sim.psu_out_w / lay.rack_psu_rated_w[lay.psu_rack]
    assert load.max() <= 1.0
    assert 0.02 <= p.psu_loss_kw / p.it_kw <= 0.05
    node_kw = sim.rack_in_w / 1000.0 / np.array(lay.rack_nodes)
    assert 9.5 <= node_kw.mean() <= 10.3  # DGX H100: 10.2 kW maximum
    assert p.transformer_loss_kw > 0 and p.switchgear_loss_kw > 0
    assert 1.05 < p.pue < 1.3  # liquid-cooled hall, chilled water at 18 degC


@pytest.mark.parametrize("seed", [1, 2])
def test_part_to_part_variation_is_seeded(seed):
    a, b = SiteSimulator(SITE, seed=seed), SiteSimulator(SITE, seed=seed)
    c = SiteSimulator(SITE, seed=seed + 10)
    assert np.array_equal(a.gpu_rth_part, b.gpu_rth_part)
    assert np.array_equal(a.sensor_offset["gpu_temp_read_c"], b.sensor_offset["gpu_temp_read_c"])
    assert not np.array_equal(a.gpu_rth_part, c.gpu_rth_part)
    assert a.gpu_rth_part.std() > 0.02 and a.psu_loss_part.std() > 0.02


def test_cdu_approach_at_design_flow_is_1_to_3_k_and_fouling_raises_it():
    sim = SiteSimulator(SITE, seed=0, warmup_s=0)
    cdu = sim.cdu
    c = cdu.c_s_nom  # both sides at design flow (equal heat-capacity rates)

    def approach(ua_factor: float, c_p: np.ndarray) -> np.ndarray:
        # rated heat through the exchanger: Q = k (T_sec_return - T_prim_supply)
        k = hx_conductance(c, c_p, cdu.ua0 * ua_factor, c)
        dt_in = cdu.rated_kw / k
        return dt_in - cdu.rated_kw / c  # T_sec_supply - T_prim_supply

    clean = approach(1.0, c)
    assert ((clean >= 1.0) & (clean <= 3.0)).all()
    assert (approach(0.6, c) > clean + 0.5).all()  # fouled
    # UA depends on the flows: less primary water, lower UA, a wider approach
    assert (approach(1.0, 0.7 * c) > clean).all()


OLD_SIZING = {  # the example site before issue #23: 6 x 5.5 kW PSUs per 8-node rack
    r"node_overhead_w = [0-9.]+": "node_overhead_w = 1800.0",
    r"psus = [0-9]+": "psus = 6",
    r"psu_rated_w = [0-9.]+": "psu_rated_w = 5500.0",
    r"psu_redundancy = [0-9]+\n": "",
}


def site_text(subs: dict[str, str]) -> str:
    text = EXAMPLE_SITE.read_text()
    for pattern, repl in subs.items():
        text, n = re.subn(pattern, repl, text, count=1)
        assert n == 1, pattern
    return text


def test_validator_rejects_the_old_psu_sizing_naming_the_psu_and_the_overload(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text(site_text(OLD_SIZING))
    with pytest.raises(SiteFileError) as err:
        load_site(old)
    msg = str(err.value)
    assert "templates.hgx-h100: PSU overload" in msg
    assert "psu_rated_w = 5500 W" in msg and "179% of its rating" in msg


@pytest.mark.parametrize(
    ("subs", "needle"),
    [
        ({r"rated_kw = 800.0": "rated_kw = 500.0"}, "halls.h1.pdus.pdu-row1: PDU overload"),
        ({r"rated_kw = 700.0": "rated_kw = 400.0"}, "halls.h1.cdus.cdu-row1: CDU capacity"),
        ({r"rack_breaker_kw = [0-9.]+": "rack_breaker_kw = 60.0"}, "rack feed (breaker)"),
        ({r"psu_redundancy = [0-9]+": "psu_redundancy = 30"}, "PSU redundancy N+30 not met"),
    ],
)
def test_validator_names_each_overloaded_element(tmp_path, subs, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text(site_text(subs))
    with pytest.raises(SiteFileError, match=re.escape(needle)):
        load_site(bad)


def test_redundancy_loss_is_a_warning_not_an_error(tmp_path, caplog):
    # 24 PSUs of 3.3 kW carry the 76.8 kW rack (97 % of rating) but 23 would not: no N-1
    subs = {r"psus = [0-9]+": "psus = 24", r"psu_redundancy = [0-9]+": "psu_redundancy = 0"}
    warn = tmp_path / "n1.toml"
    warn.write_text(site_text(subs))
    with caplog.at_level(logging.WARNING, logger="dctwin.site"):
        site = load_site(warn)
    assert site.templates["hgx-h100"].psus == 24
    assert any("no PSU redundancy (N-1)" in r.getMessage() for r in caplog.records)
    assert not check_capacity(site).errors
