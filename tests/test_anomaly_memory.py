"""Issue 24: the anomaly service's fit reads its history in pieces (only the metrics the
models read) and, past `fit_max_samples`, on evenly spaced runs of it.

- uncapped, the piecewise fit is the whole-window fit it replaced: the same models and
  the same scores, interval by interval (`OldFit` is the code before issue 24);
- capped to two thirds of the window, scores stay within a stated tolerance and the
  faults are found as before;
- the block plan (a property test) and the piecewise frames against the whole-window
  frames for any piece length (a property test: the fast path against the model).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dctwin import POLARS_MALLOC_CONF
from domain.site import load_site
from experiments.simulate import run_simulation
from ingest.store import Store
from simulator.model import SiteSimulator
from twin.anomaly.features import FIT_METRICS, class_frames
from twin.anomaly.service import AnomalyService, AnomalyServiceConfig

SITE = Path(__file__).parent / "data" / "anomaly_site.toml"
START = datetime(2025, 7, 7, tzinfo=UTC)
SPEC = "gpu_off_bus@t1/h1/row2/rk201/n01/gpu2:onset=2.5h;crah_fan_failure@t1/h1/crah2:onset=2.2h"
FAULTY = ("t1/h1/row2/rk201/n01/gpu2", "t1/h1/crah2")
# capped to two thirds of the 2 h window (80 of 240 intervals left out, in 24 runs): per
# (device, interval) score at most this far from the uncapped fit's on average, and at
# most this share of (device, interval) pairs on the other side of the alarm threshold
# (0.5). Measured: 0.050 and 3.8 % (a third of the window: 0.15 and 9.6 %). Fewer rows
# per device move its fit: the cap is a memory bound, not free.
MEAN_ABS_TOL = 0.08
FLIP_TOL = 0.06


class OldFit(AnomalyService):
    """The fit before issue 24: the whole window as one long grid, every metric."""

    def _fit(self, upto: int) -> None:
        lo, exclude = self._fit_window(upto)
        self.scorer.fit(self._load(lo - 4, upto), upto, exclude)
        self.fitted = True
        self.last_fit_bucket = upto


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """3 h of the small test site at 30 s: a GPU falls off the bus, a CRAH fan fails."""
    site = load_site(SITE)
    path = tmp_path_factory.mktemp("anomaly_memory") / "site.duckdb"
    sim = SiteSimulator(
        site, seed=11, start_time_s=START.timestamp(), faults=SPEC, horizon_s=3 * 3600.0
    )
    run_simulation(sim, 3.0, path, step_s=30.0, fmt="duckdb", faults=SPEC, progress=False)
    return path


def _config(**kw) -> AnomalyServiceConfig:
    # catch-up and the presence count in pieces of 50 intervals (several in the window)
    kw = {"max_chunk_buckets": 50} | kw
    return AnomalyServiceConfig(interval_s=30.0, train_s=2 * 3600.0, lag_s=0.0, **kw)


def _run(cls: type[AnomalyService], path: Path, tmp: Path, **kw) -> pl.DataFrame:
    """Every interval's device scores of a service trained at 2 h, scored to 3 h."""
    copy = tmp / f"{cls.__name__}-{len(list(tmp.iterdir()))}.duckdb"
    shutil.copy(path, copy)
    parts: list[pl.DataFrame] = []
    store = Store(copy)
    try:
        live = cls(load_site(SITE), store, _config(**kw), sink=parts.append)
        live.refresh(START + timedelta(hours=2))
        live.refresh(START + timedelta(hours=3))
    finally:
        store.close()
    return pl.concat(parts).select("device_id", "bucket", "p", "score").sort("device_id", "bucket")


@pytest.fixture(scope="module")
def old_scores(store_path, tmp_path_factory) -> pl.DataFrame:
    return _run(OldFit, store_path, tmp_path_factory.mktemp("old"))


@pytest.mark.slow
def test_uncapped_piecewise_fit_scores_as_the_whole_window_fit(store_path, old_scores, tmp_path):
    new = _run(AnomalyService, store_path, tmp_path, fit_max_samples=0, fit_piece_buckets=50)
    assert new.height == old_scores.height > 1000
    assert new["device_id"].to_list() == old_scores["device_id"].to_list()
    assert new["bucket"].to_list() == old_scores["bucket"].to_list()
    np.testing.assert_allclose(new["score"].to_numpy(), old_scores["score"].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(new["p"].to_numpy(), old_scores["p"].to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_capped_fit_scores_within_tolerance_and_finds_the_faults(store_path, old_scores, tmp_path):
    store = Store(store_path, read_only=True)
    try:  # samples of the fit's metrics in the first fit's window (the first 2 h)
        row = (
            store.cursor()
            .execute(
                "SELECT count(*) FROM samples "
                "WHERE metric IN (SELECT unnest($m)) AND read_time < $t",
                {"m": sorted(FIT_METRICS), "t": (START + timedelta(hours=2)).replace(tzinfo=None)},
            )
            .fetchone()
        )
    finally:
        store.close()
    assert row is not None and row[0] > 10_000
    # the default cap leaves this site alone; two thirds of it makes the fit sample
    assert AnomalyServiceConfig().fit_max_samples > 3 * row[0]
    new = _run(AnomalyService, store_path, tmp_path, fit_max_samples=2 * row[0] // 3)
    assert new.height == old_scores.height
    d = (new["score"] - old_scores["score"]).abs()
    assert 0 < float(d.mean()) <= MEAN_ABS_TOL, float(d.mean())
    flips = ((new["score"] >= 0.5) != (old_scores["score"] >= 0.5)).mean()
    assert flips <= FLIP_TOL, flips
    for scores in (new, old_scores):  # both find both faults by the end
        last = scores.group_by("device_id").agg(pl.col("score").last())
        alarming = set(last.filter(pl.col("score") >= 0.5)["device_id"])
        assert set(FAULTY) <= alarming


@settings(max_examples=200, deadline=None)
@given(
    lo=st.integers(-(10**6), 10**6),
    span=st.integers(1, 5000),
    frac=st.floats(0.0001, 1.5),
    blocks=st.integers(1, 50),
)
def test_fit_blocks_stay_in_the_window_and_hold_at_most_the_cap(lo, span, frac, blocks):
    hi = lo + span - 1
    n = 10 * span  # samples in the window (10 an interval)
    cap = max(1, int(frac * n))

    class Counted(AnomalyService):
        def __init__(self) -> None:  # no store: the count is given
            self.config = AnomalyServiceConfig(fit_max_samples=cap, fit_blocks=blocks)
            self.store = _CountStore(n)  # type: ignore[assignment]

    runs = Counted().fit_blocks(lo, hi)
    assert runs and all(a <= b for a, b in runs)
    assert all(b < a2 for (_, b), (a2, _) in zip(runs, runs[1:], strict=False))  # ordered, apart
    assert runs[0][0] >= lo and runs[-1][1] == hi  # the newest interval is always in
    held = sum(b - a + 1 for a, b in runs)
    if cap >= n:  # uncapped: the whole window
        assert runs == [(lo, hi)]
    else:
        assert held <= max(1, span * cap // n)
        assert len(runs) <= blocks


class _CountStore:
    def __init__(self, n: int) -> None:
        self.n = n

    def cursor(self):
        return self

    def execute(self, *_a, **_k):
        return self

    def fetchone(self):
        return (self.n,)


@pytest.mark.slow
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunk=st.integers(7, 400))
def test_piecewise_class_frames_equal_the_whole_window_frames(store_path, chunk):
    store = Store(store_path, read_only=True)
    try:
        live = AnomalyService(
            load_site(SITE), store, _config(fit_max_samples=0, fit_piece_buckets=chunk)
        )
        hi = live._newest_bucket()
        assert hi is not None
        lo = hi - 300
        whole = class_frames(live._load(lo, hi), live.devices)
        pieces = live._fit_frames(lo, hi)
    finally:
        store.close()
    assert set(pieces) == set(whole)
    fit_cols = {"gpu_rise_k", "mem_rise_k", "power_w", "power_w_lag1", "power_w_lag2"}
    for cls, f in whole.items():
        p = pieces[cls]
        cols = [c for c in p.columns if c in f.columns]
        assert fit_cols & set(f.columns) <= set(cols)
        # every column the fit reads, row for row (the whole frame has more metrics)
        a = f.select(cols).sort("device_id", "bucket")
        b = p.select(cols).sort("device_id", "bucket")
        assert a.equals(b), cls


def test_the_dctwin_command_returns_polars_freed_pages_at_once():
    """dctwin/__init__.py sets polars' allocator before polars loads, unless set already
    (polars puts its own defaults in front; jemalloc takes the last value of an option)."""
    code = "import dctwin, os, polars; print(os.environ['_RJEM_MALLOC_CONF'])"
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().endswith(POLARS_MALLOC_CONF)
    env["_RJEM_MALLOC_CONF"] = "dirty_decay_ms:5000"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().endswith("dirty_decay_ms:5000")
    assert POLARS_MALLOC_CONF not in out.stdout
