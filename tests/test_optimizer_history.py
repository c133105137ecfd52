"""Training rows from stored telemetry (issue 19 item 2) and the savings calibration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from experiments.optimizer.calibrate import CalibrationError, fit_scale
from experiments.optimizer.dataset import explore_to_store
from experiments.optimizer.evaluate import LeakageError, check_after_training
from ingest.store import Store
from simulator.sitegen import synthetic_site
from twin.optimizer.history import SETTLE_S, HistoryError, history_rows, training_rows
from twin.optimizer.models import Calibration
from twin.optimizer.observe import FEATURE_METRICS, TARGET_METRICS
from twin.optimizer.space import COOLING_TARGETS, FEATURES, SETPOINTS, TARGETS

START = datetime(2025, 6, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    site = synthetic_site(16, racks_per_row=2)
    store = Store(tmp_path_factory.mktemp("hist") / "t.duckdb")
    n = explore_to_store(
        store.con, site, seed=3, start_s=START.timestamp(), hours=6, step_s=60.0, hold_s=600.0
    )
    yield site, store, n
    store.close()


def test_rows_come_from_the_stored_telemetry_with_the_live_feature_table(stored):
    site, store, n = stored
    # only the readings the feature/target table reads were kept, all in `samples`
    got = store.con.execute("SELECT count(*), count(DISTINCT metric) FROM samples").fetchone()
    assert got is not None and got[0] == n > 0
    wanted = {s.metric for s in (*FEATURE_METRICS.values(), *TARGET_METRICS.values())}
    metrics = {r[0] for r in store.con.execute("SELECT DISTINCT metric FROM samples").fetchall()}
    assert metrics <= wanted | {"power_kw"}
    rows = history_rows(store.cursor(), site, START, START + timedelta(hours=7))
    assert rows.height == 6 * 60  # one row per read (BatchRun: the first at the start)
    assert set(FEATURES) | set(TARGETS) <= set(rows.columns)
    assert rows["time"].is_sorted()
    # the five cooling terms add up to cooling power, and facility = cooling + the rest
    cool = rows.select(pl.sum_horizontal(*COOLING_TARGETS)).to_series()
    assert np.allclose(cool, rows["cooling_kw"])
    assert np.allclose(rows["cooling_kw"] + rows["noncooling_kw"], rows["facility_kw"])
    # a GPU's utilization is a fraction, the percentile above the mean
    assert ((rows["gpu_util_mean"] >= 0) & (rows["gpu_util_p95"] <= 1.0)).all()
    assert (rows["gpu_util_p95"] >= rows["gpu_util_mean"] - 1e-9).all()


def test_settled_rows_follow_the_setpoints_published_in_the_telemetry(stored):
    site, store, _ = stored
    rows = history_rows(store.cursor(), site, START, START + timedelta(hours=7))
    settled = training_rows(store.cursor(), site, START, START + timedelta(hours=7))
    assert 0 < settled.height < rows.height
    assert (settled["since_change_s"] >= SETTLE_S).all()
    # since_change_s restarts exactly where a published setpoint moves
    moved = rows.select(
        pl.any_horizontal(*(pl.col(s).diff().abs() > 1e-3 for s in SETPOINTS)).fill_null(True)
    ).to_series()
    assert (rows.filter(moved)["since_change_s"] == 0).all()
    assert (rows.filter(~moved)["since_change_s"] > 0).all()
    # the exploration really moved the setpoints (ramps included)
    assert rows.select(pl.col(SETPOINTS[0]).n_unique()).item() > 5


def test_an_empty_window_is_a_clear_error(stored):
    site, store, _ = stored
    later = START + timedelta(days=30)
    with pytest.raises(HistoryError, match="no complete telemetry rows"):
        training_rows(store.cursor(), site, later, later + timedelta(hours=1))


def test_calibration_scale_is_the_median_over_what_it_counts_as_large():
    # predicted 2 kW, realised 1 kW: the factor 0.5 makes them 1 kW predictions, still
    # counted; predicted 1.5 kW ones drop out once scaled (0.75 < 1)
    pairs = [(2.0, 1.0)] * 6 + [(1.5, 1.5)] * 3 + [(0.2, 0.0)] * 20
    scale, used = fit_scale(pairs)
    assert scale == pytest.approx(0.5) and used == 6
    with pytest.raises(CalibrationError, match="need >= 5"):
        fit_scale([(2.0, 1.0)] * 3)


def test_evaluation_overlapping_the_calibration_week_is_refused(stored):
    from dataclasses import replace

    from twin.optimizer.models import train

    site, store, _ = stored
    # every row, transients included: enough rows for a (poor) model, quickly
    models = train(history_rows(store.cursor(), site, START, START + timedelta(hours=7)), 1)
    cal = Calibration(0.5, 1.0, "2025-08-04T00:00:00+00:00", 7.0, 5, 30, 8)
    m = replace(models, calibration=cal)
    assert m.savings_scale == 0.5
    with pytest.raises(LeakageError, match="calibration week"):
        check_after_training(m, datetime(2025, 8, 6, tzinfo=UTC), 7.0)
    check_after_training(m, datetime(2025, 8, 11, tzinfo=UTC), 7.0)  # after it: fine


def test_calibration_floor_steps_down_when_few_large_recommendations():
    from experiments.optimizer.calibrate import fit_ladder

    # two >= 1 kW and six 0.6 kW predictions, all realising half: at 1 kW too few; at
    # 0.5 kW the factor 0.5 leaves only the two (0.6 kW scaled) above it; at 0.25 kW all
    # eight stay (0.3 kW scaled), the small ones below it do not count
    pairs = [(1.2, 0.6)] * 2 + [(0.6, 0.3)] * 6 + [(0.1, 0.0)] * 10
    scale, used, floor = fit_ladder(pairs)
    assert floor == 0.25 and scale == pytest.approx(0.5) and used == 8
