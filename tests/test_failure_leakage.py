"""Leakage guards: as-of features (recomputed on truncated history) and the time split."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import polars as pl
import pytest

from experiments.failure.dataset import BASE_START
from experiments.simulate import run_simulation
from simulator.model import SiteSimulator
from simulator.sitegen import synthetic_site
from twin.failure.features import FEATURES, compute_features
from twin.failure.model import LeakageError, check_disjoint, label_rows, time_split

SPEC = (
    "ecc_storm@any:onset=20m,fail_after=80m; psu_aging@any:onset=10m,fail_after=90m,"
    "severity=3; gpu_off_bus@any:onset=100m; pump_degradation@any:onset=0,fail_after=3h"
)


@pytest.fixture(scope="module")
def run_db(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("fail") / "run.duckdb"
    sim = SiteSimulator(
        synthetic_site(64, racks_per_row=1, rows_per_hall=2),
        seed=3,
        start_time_s=BASE_START.timestamp(),
        faults=SPEC,
        horizon_s=2.5 * 3600,
    )
    run_simulation(sim, 2.5, path, step_s=30.0, fmt="duckdb", progress=False)
    return duckdb.connect(str(path))


def test_features_use_no_data_after_the_row_time(run_db):
    start, end = run_db.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
    full = compute_features(run_db, start + timedelta(minutes=30), end)
    cols = sorted({c for fs in FEATURES.values() for c in fs})
    checked = 0
    for t in full["t"].unique().sort().to_list()[2::5]:
        run_db.execute(
            "CREATE OR REPLACE TEMP TABLE s_cut AS SELECT * FROM samples WHERE read_time <= ?", [t]
        )
        run_db.execute(
            "CREATE OR REPLACE TEMP TABLE e_cut AS SELECT * FROM events WHERE read_time <= ?", [t]
        )
        cut = compute_features(run_db, t, t, samples="s_cut", events="e_cut").sort("device_id")
        ref = full.filter(pl.col("t") == t).sort("device_id")
        assert cut["device_id"].to_list() == ref["device_id"].to_list()
        for c in cols:
            a, b = cut[c].cast(pl.Float64), ref[c].cast(pl.Float64)
            same = (
                ((a - b).abs() <= 1e-9 * (1 + b.abs()))
                | (a.is_null() & b.is_null())
                | (a.is_nan() & b.is_nan())
            )
            assert same.fill_null(False).all(), f"feature {c} at {t} changes with later data"
        checked += 1
    assert checked >= 3


def test_lost_gpu_grows_stale_and_has_xid79(run_db):
    start, end = run_db.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
    full = compute_features(run_db, start + timedelta(minutes=30), end)
    lost = run_db.sql(
        "SELECT device_id, failure_time FROM labels WHERE fault = 'gpu_off_bus'"
    ).fetchall()[0]
    rows = full.filter((pl.col("device_id") == lost[0]) & (pl.col("t") > lost[1]))
    assert rows.height > 0
    assert (rows["xid79_2h"] > 0).all()
    assert rows["stale_reads"].max() > 2


def _rows(run: str, start_h: float, hours: float, episode: str | None) -> pl.DataFrame:
    t0 = BASE_START + timedelta(hours=start_h)
    ts = [t0 + timedelta(minutes=5 * i) for i in range(int(hours * 12))]
    return pl.DataFrame(
        {"t": [t.replace(tzinfo=None) for t in ts], "run": run, "episode": episode},
        schema_overrides={"episode": pl.String},
    )


def test_split_refuses_overlap_in_time_and_shared_episodes():
    check_disjoint(_rows("a", 0, 10, "a:1"), _rows("b", 12, 5, "b:1"), 3600)
    with pytest.raises(LeakageError, match="look 3600 s ahead"):
        check_disjoint(_rows("a", 0, 10, None), _rows("b", 10.5, 5, None), 3600)
    with pytest.raises(LeakageError, match="episodes in both"):
        check_disjoint(_rows("a", 0, 10, "x:1"), _rows("b", 30, 5, "x:1"), 3600)
    with pytest.raises(LeakageError, match="runs in both"):
        check_disjoint(_rows("a", 0, 10, None), _rows("a", 30, 5, None), 3600)


def test_time_split_orders_runs_and_labels_drop_rows_after_failure(run_db):
    runs = pl.concat([_rows(f"r{i}", 48 * i, 24, f"r{i}:0") for i in range(5)])
    split = time_split(runs, 3600, calibrate_runs=1, test_runs=2)
    assert split.train["t"].max() < split.calibrate["t"].min() < split.test["t"].min()
    assert set(split.test["run"]) == {"r3", "r4"}
    start, end = run_db.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
    feats = compute_features(run_db, start + timedelta(minutes=30), end)
    labels = run_db.sql("SELECT fault_id, fault, device_id, onset, failure_time FROM labels").pl()
    rows = label_rows(feats, labels, 3600, "run")
    failed = rows.filter(pl.col("failure_time").is_not_null())
    assert (failed["t"] < failed["failure_time"]).all()
    pos = rows.filter(pl.col("y") == 1)
    assert pos.height > 0
    assert ((pos["failure_time"] - pos["t"]).dt.total_seconds() <= 3600).all()
