"""Rollup layout for series reads (issue 24): series keys, sorted hour and day runs, the
key backfill of older databases, and the Parquet cold tier. Rollup values themselves are
tested against raw aggregation in test_rollups.py; here, that compaction moves rows and
never changes an answer."""

from __future__ import annotations

from datetime import UTC, timedelta

import duckdb
import polars as pl
from polars.testing import assert_frame_equal

from ingest.downsampling import Retention, series_key
from ingest.history import query_series
from ingest.store import Store
from tests.test_rollups import DEVICES, STEP_S, T0, raw_rollup, series, table

HOURS = 26  # crosses a day boundary


def _answers(store: Store) -> dict[tuple[str, str, int], pl.DataFrame]:
    end = T0 + timedelta(hours=HOURS)
    return {
        (d, m, step): query_series(store.cursor(), d, m, T0, end, step)
        for d in DEVICES
        for m in ("power_w", "energy_mj")
        for step in (60, 600, 3600)
    }


def test_series_key_in_python_equals_the_stored_one(tmp_path):
    store = Store(tmp_path / "k.duckdb", retention=Retention(lateness_s=60, idle_close_s=120))
    try:
        store.write(series(0, 360), [], {})
        store.maintain(T0 + timedelta(hours=2))
        rows = store.cursor().execute("SELECT DISTINCT device_id, metric, sid FROM rollup_1m")
        got = rows.fetchall()
        assert len(got) == 4
        for device, metric, sid in got:
            assert sid == series_key(device, metric)
    finally:
        store.close()


def test_day_compaction_sorts_runs_and_changes_no_answer(tmp_path):
    store = Store(tmp_path / "c.duckdb", retention=Retention(lateness_s=60, idle_close_s=120))
    try:
        n = HOURS * 3600 // STEP_S
        for a in range(0, n, 360):  # an hour at a time, rolled up after each, as a server
            store.write(series(a, min(n, a + 360)), [], {})
            store.rollups.advance(T0 + timedelta(seconds=min(n, a + 360) * STEP_S))
        assert store.rollups.compact_queue  # the first day closed: its slices are queued
        before = _answers(store)
        rows = 0
        while (done := store.rollups.compact_step()) > 0:
            rows += done
        assert rows == 24 * 60 * 4  # the whole day, rewritten once
        # the day's rows now lie in (sid, bucket) order
        order = (
            store.cursor()
            .execute(
                "SELECT sid, bucket FROM rollup_1m WHERE bucket < $d ORDER BY rowid",
                {"d": T0 + timedelta(days=1)},
            )
            .fetchall()
        )
        assert order == sorted(order)
        for key, frame in _answers(store).items():
            assert_frame_equal(frame, before[key], rel_tol=1e-12)
        # and the rollups still equal raw aggregation
        cut = store.rollups.watermarks()["1m"]
        assert_frame_equal(
            table(store, "rollup_1m"),
            raw_rollup(store, "1 minute", f"WHERE read_time < '{cut}'"),
            rel_tol=1e-12,
        )
    finally:
        store.close()


def test_rows_without_a_key_get_it_when_the_store_opens(tmp_path):
    path = tmp_path / "old.duckdb"
    store = Store(path, retention=Retention(lateness_s=60, idle_close_s=120))
    store.write(series(0, 720), [], {})
    store.maintain(T0 + timedelta(hours=3))
    before = _answers(store)
    store.close()
    con = duckdb.connect(str(path))  # as a database from before the key existed
    con.execute("UPDATE rollup_1m SET sid = NULL")
    con.execute("UPDATE rollup_1h SET sid = NULL")
    con.close()
    store = Store(path)
    try:
        nulls = store.cursor().execute("SELECT count(*) FROM rollup_1m WHERE sid IS NULL")
        assert nulls.fetchall()[0][0] == 0
        for key, frame in _answers(store).items():
            assert_frame_equal(frame, before[key], rel_tol=1e-12)
    finally:
        store.close()


def test_cold_tier_keeps_expired_samples_as_sorted_parquet(tmp_path):
    cold = tmp_path / "cold"
    retention = Retention(
        raw_s=3600, lateness_s=60, idle_close_s=120, cold_dir=str(cold), cold_s=30 * 86400
    )
    store = Store(tmp_path / "cold.duckdb", retention=retention)
    try:
        store.write(series(0, 3 * 360), [], {})
        expected = store.cursor().execute(
            "SELECT count(*) FROM samples WHERE read_time < $t",
            {"t": T0 + timedelta(hours=2, minutes=5)},
        )
        n_old = expected.fetchall()[0][0]
        done = store.maintain(T0 + timedelta(hours=3, minutes=5))
        assert done["samples_to_cold"] == done["samples_deleted"] == n_old > 0
        files = list(cold.glob("*.parquet"))
        assert len(files) == 1
        con = duckdb.connect()
        back = con.sql(f"SELECT * FROM read_parquet('{files[0]}')").pl()
        assert back.height == n_old
        keys = back.select("device_id", "metric", "read_time").rows()
        assert keys == sorted(keys)  # one run per series
        # past cold retention the file goes (the rest of the samples go cold meanwhile)
        store.maintain(T0 + timedelta(days=40))
        assert not files[0].exists()
        assert store.cursor().execute("SELECT count(*) FROM samples").fetchall()[0][0] == 0
        (rest,) = cold.glob("*.parquet")
        n_rest = con.execute(f"SELECT count(*) FROM read_parquet('{rest}')").fetchall()[0][0]
        assert n_rest + n_old == 3 * 360 * 4
    finally:
        store.close()


def test_series_body_from_columns_equals_the_response_model():
    """The columnar /v1/series body parses to what the SeriesOut model would write."""
    import math
    from datetime import datetime

    import orjson

    from api.routes_twin import _series_json
    from api.twin_schemas import SeriesOut

    t = datetime(2025, 6, 1, 11)
    df = pl.DataFrame(
        {
            "bucket": [t, t + timedelta(minutes=1), t + timedelta(minutes=2)],
            "min": [1.5, float("nan"), float("inf")],
            "max": [2.0, 3.0, None],
            "mean": [0.1 + 0.2, None, 1e-7],
            "last": [1.0, 2.0, -float("inf")],
            "count": [3, 4, 5],
        }
    )
    cols = ["min", "max", "mean", "last", "count"]
    start, end = t + timedelta(microseconds=500), t + timedelta(hours=1)
    got = orjson.loads(_series_json("x", "m", "samples", start, end, 60.0, df, cols))

    def fin(v):
        return None if v is None or not math.isfinite(v) else v

    points = [
        {"time": r["bucket"].replace(tzinfo=UTC), **{c: fin(r[c]) for c in cols}}
        for r in df.iter_rows(named=True)
    ]
    model = SeriesOut.model_validate(
        {
            "id": "x",
            "metric": "m",
            "source": "samples",
            "start": start.replace(tzinfo=UTC),
            "end": end.replace(tzinfo=UTC),
            "step_s": 60.0,
            "points": points,
        }
    )
    assert got == orjson.loads(model.model_dump_json())
    assert got["points"][1]["min"] is None and got["points"][2]["last"] is None
