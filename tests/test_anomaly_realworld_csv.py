"""`dctwin anomaly score` on messy real-world CSVs (issue #20, part anom-real).

Every test runs the real CLI in a child process, as an operator would."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WARMUP_ROWS = 23  # rows before the first score: 20 effective points (weights decay)


def _cli(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "dctwin.cli.main", "anomaly", "score", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def _rows(out: bytes, delimiter: str = ",") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(out.decode()), delimiter=delimiter))


def _text(times, values) -> str:
    return "timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values, strict=True))


def test_backwards_time_duplicates_blanks_and_nan_complete_and_every_row_is_scored():
    rng = np.random.default_rng(3)
    lines = ["timestamp,value"]
    for i in range(200):
        lines.append(f"2024-05-01T00:{i // 60:02d}:{i % 60:02d}Z,{20 + rng.normal(0, 0.5):.3f}")
    lines += [
        "2024-05-01T00:03:05Z,20.1",  # the logger's clock steps back 15 s ...
        "2024-05-01T00:03:06Z,20.2",
        "2024-05-01T00:03:06Z,20.2",  # ... an exact duplicate row
        "2024-05-01T00:03:21Z,",  # a blank
        "2024-05-01T00:03:22Z,NaN",
        "2024-05-01T00:03:23Z,20.4",
        "2024-05-01T00:03:23Z,20.5",  # same time, another value
    ]
    done = _cli("-", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert len(rows) == len(lines) - 1
    scored = [r for r in rows if r["anomaly_score"] != ""]
    assert len(scored) == len(rows) - WARMUP_ROWS  # every row after the warm-up
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in scored)
    assert rows[202]["anomaly_score"] == rows[201]["anomaly_score"]  # the copy
    err = done.stderr.decode()
    assert "3 rows had a timestamp earlier" in err  # 03:05, 03:06 twice: before 03:19
    assert "1 rows repeated the timestamp and value" in err
    assert "1 rows repeated a timestamp with a different value" in err
    assert "2 rows had no value" in err
    assert "207 rows: 184 scored" in err
    assert "Traceback" not in err


def test_input_that_is_not_timestamp_value_is_a_one_line_error():
    cases = [
        ("a;b\n1;2\n", "no time column 'timestamp' (columns are ['a', 'b']"),
        ("1,2\n3,4\n", "the first line looks like data, not a header"),
        ("timestamp,temp\n1,2\n", "no value column 'value' (columns are ['timestamp', 'temp']"),
        ("", "empty file"),
        (b"\xff\xfe\x00\x01binary", "not UTF-8 text"),
        ("timestamp,value\n1,2\n2,twelve\n", "line 3: column 'value': 'twelve' is not a number"),
    ]
    for stdin, message in cases:
        done = _cli("-", stdin=stdin)
        err = done.stderr.decode()
        assert done.returncode == 2, (stdin, err)
        assert message in err, (stdin, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert done.stdout.count(b"\n") <= 1  # nothing but the header went out


def test_semicolon_files_and_named_columns_work(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "skab_like.csv"
    body = "".join(
        f"2020-03-09 10:{i // 60:02d}:{i % 60:02d};{1 + rng.normal(0, 0.01):.4f};"
        f"{70 + rng.normal(0, 0.1):.3f}\n"
        for i in range(300)
    )
    src.write_text("datetime;Pressure;Temperature\n" + body)
    done = _cli(str(src), "--time-column", "datetime", "--column", "Temperature")
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout, delimiter=";")
    assert list(rows[0]) == ["datetime", "Pressure", "Temperature", "anomaly_score"]
    assert sum(1 for r in rows if r["anomaly_score"]) == 300 - WARMUP_ROWS


def test_a_level_shift_alarms_then_becomes_the_new_normal():
    rng = np.random.default_rng(5)
    x = 10 + rng.normal(0, 0.2, 3000)
    x[1000:] += 5.0  # a persistent shift (a recalibrated sensor, a new setpoint)
    done = _cli("-", stdin=_text(np.arange(3000) * 60, [f"{v:.4f}" for v in x]))
    assert done.returncode == 0, done.stderr
    s = np.array([float(r["anomaly_score"] or "nan") for r in _rows(done.stdout)])
    assert s[1000] >= 0.9  # the shift itself is news
    assert np.nanmax(s[1300:]) < 0.5  # ... and no longer after a few hundred intervals
    assert np.mean(s[1000:3000] >= 0.5) < 0.05


def test_daily_and_weekly_seasonality_raise_no_alarms():
    rng = np.random.default_rng(6)
    t = np.arange(0, 28 * 86400, 600)  # four weeks at 10 min
    day, week = 2 * np.pi * t / 86400, 2 * np.pi * t / (7 * 86400)
    weekend = ((t // 86400) % 7 >= 5).astype(float)
    x = 30 + 8 * np.sin(day) + 3 * np.sin(week) - 4 * weekend + rng.normal(0, 0.5, len(t))
    done = _cli("-", stdin=_text(t, [f"{v:.3f}" for v in x]))
    assert done.returncode == 0, done.stderr
    s = np.array([float(r["anomaly_score"]) for r in _rows(done.stdout) if r["anomaly_score"]])
    assert len(s) == len(t) - WARMUP_ROWS
    # p = 1e-4 per point nominal; a weekend step is a (small) level shift, seen once a week
    assert np.mean(s >= 0.5) < 2e-3


def test_gaps_are_reported_and_the_series_warms_up_again():
    rng = np.random.default_rng(7)
    t = np.concatenate([np.arange(300) * 10, 3000 + 86400 + np.arange(300) * 10])
    x = 5 + rng.normal(0, 0.1, len(t))
    done = _cli("-", stdin=_text(t, [f"{v:.4f}" for v in x]))
    assert done.returncode == 0, done.stderr
    assert "1 gaps longer than 10 sampling intervals (longest 86410 s)" in done.stderr.decode()
    s = [float(r["anomaly_score"] or "nan") for r in _rows(done.stdout)]
    assert np.nanmax(s) < 0.75  # a day without data is not a deviation of the value


def test_very_short_series_and_constant_series_get_a_clear_answer():
    done = _cli("-", stdin=_text(range(5), ["1.0", "2.0", "1.5", "1.7", "1.2"]))
    assert done.returncode == 0, done.stderr
    assert "only 5 readings, the warm-up needs more than 20: no scores" in done.stderr.decode()
    assert [r["anomaly_score"] for r in _rows(done.stdout)] == [""] * 5
    done = _cli("-", stdin="timestamp,value\n")
    assert done.returncode == 0 and "0 rows" in done.stderr.decode()
    done = _cli("-", stdin=_text(range(100), ["7"] * 100))
    assert done.returncode == 0
    assert {r["anomaly_score"] for r in _rows(done.stdout)} == {"", "0.000000"}


def test_live_grid_is_the_same_for_shuffled_and_duplicated_samples(tmp_path):
    """The live scorer reads intervals through GRID_SQL (last reading per device, metric
    and interval by read time): arrival order and re-sent samples do not change it."""
    from datetime import UTC, datetime, timedelta

    import duckdb

    from twin.anomaly.frames import GRID_SQL

    rng = np.random.default_rng(8)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        ("r1/gpu0", "temp_c", t0 + timedelta(seconds=7 * i), float(40 + rng.normal()))
        for i in range(600)
    ]
    messy = rows + rows[100:160]  # re-sent samples
    order = rng.permutation(len(messy))  # and any arrival order
    grids = []
    for name, data in (("clean", rows), ("messy", [messy[i] for i in order])):
        con = duckdb.connect(str(tmp_path / f"{name}.duckdb"))
        con.execute(
            "CREATE TABLE samples (device_id VARCHAR, metric VARCHAR, "
            "read_time TIMESTAMPTZ, value DOUBLE)"
        )
        con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", data)
        g = con.sql(
            GRID_SQL,
            params={"step_us": 30_000_000, "start": t0, "end": t0 + timedelta(hours=2)},
        ).pl()
        grids.append(g.sort("device_id", "metric", "bucket"))
        con.close()
    assert grids[0].height == 140
    assert grids[0].equals(grids[1])


def test_the_policy_does_not_depend_on_block_boundaries():
    from twin.anomaly.csvscore import score_csv

    rng = np.random.default_rng(9)
    lines, t = [], 0
    for i in range(1500):
        t += 10
        v = f"{50 + rng.normal():.3f}"
        lines.append(f"{t},{v}")
        if i % 97 == 0:
            lines.append(f"{t},{v}")  # a copy
        if i % 131 == 0:
            lines.append(f"{t - 35},{v}")  # a clock step back
        if i % 53 == 0:
            lines += [f"{t + 1},", f"{t + 2},nan"]  # missing readings
    text = "timestamp,value\n" + "\n".join(lines) + "\n"
    outs = []
    for block in (65_536, 7, 500):
        dst = io.StringIO()
        summary = score_csv(io.StringIO(text), dst, block_rows=block, warn=io.StringIO())
        outs.append((dst.getvalue(), summary.out_of_order, summary.duplicates, summary.missing))
    assert outs[0] == outs[1] == outs[2]
    assert outs[0][1:] == (12, 16, 58)
