"""Rollups against raw aggregation, counter increases, late data, retention, and the
table `query_series` reads."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from domain.contract import Kind, SampleColumns, TelemetryBatch
from ingest.downsampling import Retention
from ingest.history import plan_series, query_increase, query_series
from ingest.store import Store

T0 = datetime(2026, 3, 1, 0, 0, 0)
DEVICES = ("sv1/h1/row1/rk101/n01/gpu0", "sv1/h1/row1/rk101/n01/gpu1")
STEP_S = 10
HOURS = 3


def ms(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1)).total_seconds() * 1000)


def counter(k: int, d: int) -> float:
    """An energy counter (mJ) that resets once, 100 minutes in, for device 1."""
    base = 5_000.0 * k + 1_000.0 * d
    return base - 5_000.0 * 600 if d == 1 and k >= 600 else base


def series(start_k: int, end_k: int, offset_s: float = 0.0) -> list[TelemetryBatch]:
    batches = []
    for k in range(start_k, end_k):
        t = ms(T0 + timedelta(seconds=k * STEP_S + offset_s))
        ids, metrics, values = [], [], []
        for d, dev in enumerate(DEVICES):
            ids += [dev, dev]
            metrics += ["power_w", "energy_mj"]
            values += [300.0 + (k * 7 + d * 13) % 97 + offset_s, counter(k, d)]
        batches.append(
            TelemetryBatch(
                collector="rollup-test",
                kind=Kind.gpu,
                site="sv1",
                rack="rk101",
                seq=k,
                interval_s=STEP_S,
                sent_time_ms=t,
                samples=SampleColumns(
                    device_id=ids, metric=metrics, value=values, read_time_ms=[t] * len(ids)
                ),
            )
        )
    return batches


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "rollups.duckdb", retention=Retention(lateness_s=60, idle_close_s=120))
    n = HOURS * 3600 // STEP_S
    for chunk in range(0, n, 100):  # the reference (pydantic) write path, in many batches
        s.write(series(chunk, min(n, chunk + 100)), [], {})
    yield s
    s.close()


def raw_rollup(store: Store, width: str, where: str = "") -> pl.DataFrame:
    return (
        store.cursor()
        .sql(f"""
        SELECT time_bucket(INTERVAL {width}, read_time) AS bucket, device_id, metric,
               min(value) AS min, max(value) AS max, avg(value) AS mean, count(*) AS count,
               arg_max(value, read_time) AS last
        FROM samples {where} GROUP BY ALL ORDER BY ALL""")
        .pl()
    )


def table(store: Store, name: str, where: str = "") -> pl.DataFrame:
    return (
        store.cursor()
        .sql(f"""SELECT bucket, device_id, metric, min, max, mean, count, last
                                  FROM {name} {where} ORDER BY ALL""")
        .pl()
    )


def expected_increase(device: int, minute: datetime) -> float:
    """Sum of positive steps, a drop counting as a reset to zero, per minute of the
    later sample; the first sample contributes nothing."""
    total = 0.0
    for k in range(1, HOURS * 3600 // STEP_S):
        t = T0 + timedelta(seconds=k * STEP_S)
        if t - timedelta(seconds=t.second) != minute:
            continue
        prev, cur = counter(k - 1, device), counter(k, device)
        total += cur - prev if cur >= prev else cur
    return total


def test_rollups_equal_raw_aggregation_and_counter_increases(store):
    now = T0 + timedelta(hours=HOURS, minutes=5)
    done = store.maintain(now)
    assert done["minutes"] == HOURS * 60 + 4 and done["hours"] == HOURS  # to now - 1 min
    assert_frame_equal(table(store, "rollup_1m"), raw_rollup(store, "1 minute"), rel_tol=1e-12)
    assert_frame_equal(table(store, "rollup_1h"), raw_rollup(store, "1 hour"), rel_tol=1e-12)
    inc = dict(
        ((d, b), v)
        for d, b, v in store.cursor()
        .execute("SELECT device_id, bucket, increase FROM rollup_1m WHERE metric = 'energy_mj'")
        .fetchall()
    )
    for minute in (
        T0,
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=100),
        T0 + timedelta(minutes=101),
        T0 + timedelta(minutes=179),
    ):
        for d, dev in enumerate(DEVICES):
            assert inc[(dev, minute)] == pytest.approx(expected_increase(d, minute))
    assert (
        inc[(DEVICES[1], T0 + timedelta(minutes=100))]
        < inc[(DEVICES[0], T0 + timedelta(minutes=100))]
    )
    hourly = query_increase(
        store.cursor(), DEVICES[0], "energy_mj", T0, T0 + timedelta(hours=HOURS), 3600
    )
    assert hourly["increase"].sum() == pytest.approx(counter(HOURS * 360 - 1, 0) - counter(0, 0))
    power = (
        store.cursor()
        .execute("SELECT count(*) FROM rollup_1m WHERE metric = 'power_w' AND increase IS NOT NULL")
        .fetchone()[0]
    )
    assert power == 0  # only counters have an increase
    again = store.maintain(now)  # idempotent: nothing new to roll up
    assert again["minutes"] == again["hours"] == 0
    assert store.cursor().execute("SELECT count(*) FROM rollup_1m").fetchone()[0] == HOURS * 60 * 4


def test_late_samples_recompute_their_minute_and_hour(store):
    now = T0 + timedelta(hours=HOURS, minutes=5)
    store.maintain(now)
    late = series(30, 36, offset_s=3.0)  # minute 5, between the samples already there
    store.write(late, [], {})
    assert store.cursor().execute("SELECT count(*) FROM rollup_dirty").fetchone()[0] > 0
    assert store.maintain(now)["dirty"] > 0
    assert_frame_equal(table(store, "rollup_1m"), raw_rollup(store, "1 minute"), rel_tol=1e-12)
    assert_frame_equal(table(store, "rollup_1h"), raw_rollup(store, "1 hour"), rel_tol=1e-12)


def reference_series(
    store: Store, device: str, metric: str, start: datetime, end: datetime, step_s: float
) -> pl.DataFrame:
    return (
        store.cursor()
        .sql(
            """SELECT time_bucket(to_microseconds($step), read_time) AS bucket, min(value) AS min,
                  max(value) AS max, avg(value) AS mean, arg_max(value, read_time) AS last,
                  count(*) AS count
           FROM samples WHERE device_id = $d AND metric = $m AND read_time >= $a
                AND read_time < $b GROUP BY bucket ORDER BY bucket""",
            params={"step": int(step_s * 1e6), "d": device, "m": metric, "a": start, "b": end},
        )
        .pl()
    )


@pytest.mark.parametrize(
    "step_s,start_s,end_s,tables",
    [
        (30, 125, 7000, {"samples"}),
        (60, 125, 7000, {"samples", "rollup_1m"}),
        (300, 0, 7200, {"rollup_1m"}),
        (300, 0, 10800, {"rollup_1m", "samples"}),
        (3600, 0, 7200, {"rollup_1h"}),
        (3600, 0, 10800, {"samples", "rollup_1m", "rollup_1h"}),
        (7200, 1800, 10799, {"samples", "rollup_1m", "rollup_1h"}),
    ],
)
def test_query_series_reads_rollups_and_matches_raw(store, step_s, start_s, end_s, tables):
    store.maintain(T0 + timedelta(hours=HOURS - 1, minutes=30))  # 1h done to 2:00, 1m to 2:29
    start, end = T0 + timedelta(seconds=start_s), T0 + timedelta(seconds=end_s)
    plan = plan_series(store.cursor(), start, end, step_s)
    assert {s.table for s in plan} == tables
    assert plan[0].start == start and plan[-1].end == end
    assert all(a.end == b.start for a, b in zip(plan, plan[1:], strict=False))  # no gap
    for dev in DEVICES:
        for metric in ("power_w", "energy_mj"):
            got = query_series(store.cursor(), dev, metric, start, end, step_s)
            assert got.columns == ["bucket", "min", "max", "mean", "last", "count"]
            assert_frame_equal(
                got, reference_series(store, dev, metric, start, end, step_s), rel_tol=1e-12
            )


def test_retention_deletes_only_what_is_old_and_rollups_keep_answering(tmp_path):
    retention = Retention(
        raw_s=3600, rollup_1m_s=2 * 3600, rollup_1h_s=30 * 86400, lateness_s=60, idle_close_s=120
    )
    store = Store(tmp_path / "retention.duckdb", retention=retention)
    try:
        store.write(series(0, HOURS * 360), [], {})
        now = T0 + timedelta(hours=HOURS, minutes=5)
        store.maintain(now)  # rolls up first; retention runs after
        before = {
            step: query_series(
                store.cursor(), DEVICES[0], "power_w", T0, T0 + timedelta(hours=HOURS), step
            )
            for step in (60, 3600)
        }
        cut = now - timedelta(hours=1)
        oldest = store.cursor().execute("SELECT min(read_time), count(*) FROM samples").fetchone()
        assert oldest[0] >= cut
        assert (
            oldest[1]
            == sum(1 for k in range(HOURS * 360) if T0 + timedelta(seconds=k * STEP_S) >= cut) * 4
        )
        minute_oldest = store.cursor().execute("SELECT min(bucket) FROM rollup_1m").fetchone()[0]
        assert minute_oldest == now - timedelta(hours=2)  # hours cover it: 1m retention
        assert store.cursor().execute("SELECT min(bucket) FROM rollup_1h").fetchone()[0] == T0
        for step, frame in before.items():  # the raw data is gone; the answer is not
            after = query_series(
                store.cursor(), DEVICES[0], "power_w", T0, T0 + timedelta(hours=HOURS), step
            )
            if step == 60:  # minutes older than 1m retention are gone too
                frame = frame.filter(pl.col("bucket") >= minute_oldest)
            assert_frame_equal(after, frame, rel_tol=1e-12)
    finally:
        store.close()


def test_minutes_close_by_data_time_while_catching_up_then_by_the_clock(tmp_path):
    store = Store(
        tmp_path / "watermark.duckdb", retention=Retention(lateness_s=60, idle_close_s=3600)
    )
    try:
        store.write(series(0, 60), [], {})  # 10 minutes of samples, the last at 0:09:50
        store.maintain(T0 + timedelta(minutes=50))  # a backlog: the clock is far ahead
        assert store.rollups.watermarks()["1m"] == T0 + timedelta(minutes=8)
        store.maintain(T0 + timedelta(hours=2))  # nothing new for over an hour: the clock
        assert store.rollups.watermarks()["1m"] == T0 + timedelta(hours=1, minutes=59)
        assert store.cursor().execute("SELECT count(*) FROM rollup_1m").fetchone()[0] == 40
    finally:
        store.close()


def test_held_rollups_do_not_advance_but_late_data_is_still_recomputed(store):
    now = T0 + timedelta(hours=HOURS, minutes=5)
    held = store.maintain(now, hold_rollups=True)  # e.g. a partition not yet read at all
    assert held["minutes"] == 0 and store.rollups.watermarks()["1m"] is None
    store.maintain(T0 + timedelta(hours=1))
    store.write(series(30, 36, offset_s=3.0), [], {})  # late, into a rolled-up minute
    assert store.maintain(now, hold_rollups=True)["dirty"] > 0
    assert store.rollups.watermarks()["1m"] == T0 + timedelta(minutes=59)
    cut = T0 + timedelta(minutes=59)
    assert_frame_equal(
        table(store, "rollup_1m"),
        raw_rollup(store, "1 minute", f"WHERE read_time < '{cut}'"),
        rel_tol=1e-12,
    )


def test_a_long_backlog_rolls_up_in_bounded_passes_to_the_same_tables(store, tmp_path):
    """Issue 26 (story): a pass rolls at most `max_rollup_span_s` of data time and says
    a backlog is left, so the writer (ingest) is never held for the whole backlog; the
    passes together give exactly the one-pass tables, counter increases included."""
    now = T0 + timedelta(hours=HOURS, minutes=5)
    passes = []
    while True:
        done = store.maintain(now, max_rollup_span_s=1800)
        passes.append(done["minutes"])
        if not done["backlog"]:
            break
    assert passes[:-1] == [30] * (len(passes) - 1) and len(passes) == 7, passes
    assert sum(passes) == HOURS * 60 + 4
    one = Store(tmp_path / "one.duckdb", retention=Retention(lateness_s=60, idle_close_s=120))
    n = HOURS * 3600 // STEP_S
    for chunk in range(0, n, 100):
        one.write(series(chunk, min(n, chunk + 100)), [], {})
    assert one.maintain(now)["backlog"] == 0
    for name in ("rollup_1m", "rollup_1h"):
        assert_frame_equal(table(store, name), table(one, name), rel_tol=1e-12)
    inc = "SELECT device_id, bucket, increase FROM rollup_1m ORDER BY ALL"
    assert store.cursor().sql(inc).fetchall() == one.cursor().sql(inc).fetchall()
    one.close()
