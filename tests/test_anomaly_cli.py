"""`dctwin anomaly score`: any CSV series in, the same rows with a causal score out."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dctwin.cli.main import app
from twin.anomaly.csvscore import BLOCK_ROWS, CsvInputError, score_csv

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def _series_csv(
    path: Path,
    values,
    start: int = 1_714_560_000,
    step: int = 10,
    extra: bool = True,
    iso: bool = True,
) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "host", "value"] if extra else ["timestamp", "value"])
        for i, v in enumerate(values):
            t = start + i * step
            ts = f"{np.datetime64(t, 's')}Z" if iso else str(t)
            w.writerow([ts, f"h{i % 3}", v] if extra else [ts, v])
    return path


def _read(path_or_text) -> list[dict]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return list(csv.DictReader(io.StringIO(text)))


def _noise(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{v:.4f}" for v in 50 + rng.normal(0, 1, n)]


def test_rows_come_back_unchanged_with_a_score_and_the_spike_scores_high(tmp_path):
    vals = _noise(400)
    vals[300] = "90.0"
    src = _series_csv(tmp_path / "in.csv", vals)
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["anomaly", "score", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    original = _read(src)
    assert len(rows) == 400
    assert list(rows[0]) == ["timestamp", "host", "value", "anomaly_score"]
    for a, b in zip(rows, original, strict=True):
        assert {k: a[k] for k in b} == b
    scores = [float(r["anomaly_score"]) if r["anomaly_score"] else None for r in rows]
    assert scores[0] is None  # warm-up
    assert all(0.0 <= s <= 1.0 for s in scores[40:])
    assert scores[300] >= 0.9
    assert max(s for i, s in enumerate(scores) if s is not None and i != 300) < 0.75
    assert "400 rows" in res.output  # summary on stderr


def test_first_rows_scores_do_not_change_when_later_rows_are_appended_or_altered(tmp_path):
    n, cut = 3000, 1234
    vals = _noise(n, seed=1)
    full = _series_csv(tmp_path / "full.csv", vals, iso=False)
    head = _series_csv(tmp_path / "head.csv", vals[:cut], iso=False)
    altered_vals = vals[:cut] + ["1e6", ""] + _noise(n - cut - 2, 9)
    altered = _series_csv(tmp_path / "alt.csv", altered_vals, iso=False)
    outs = {}
    for name, src in (("full", full), ("head", head), ("alt", altered)):
        out = tmp_path / f"{name}.out.csv"
        res = runner.invoke(app, ["anomaly", "score", str(src), "-o", str(out)])
        assert res.exit_code == 0, res.output
        outs[name] = [r["anomaly_score"] for r in _read(out)]
    assert outs["head"] == outs["full"][:cut] == outs["alt"][:cut]
    assert outs["alt"][cut] != outs["full"][cut]  # the altered row itself did change


def test_block_boundaries_do_not_change_scores():
    vals = _noise(2500, seed=2)
    text = "timestamp,value\n" + "".join(f"{i * 10},{v}\n" for i, v in enumerate(vals))
    outs = []
    for block in (BLOCK_ROWS, 7, 1000):
        dst = io.StringIO()
        score_csv(io.StringIO(text), dst, block_rows=block)
        outs.append(dst.getvalue())
    assert outs[0] == outs[1] == outs[2]


def test_gaps_repeated_timestamps_missing_values_and_a_constant_series(tmp_path):
    lines = ["timestamp,value"]
    t = 1_700_000_000
    for i in range(300):
        t += 10 if i != 150 else 7200  # a two-hour gap
        lines.append(f"{t},5.0")
        if i % 50 == 0:
            lines.append(f"{t},5.0")  # repeated timestamp
        if i % 70 == 0:
            lines.append(f"{t + 1},")  # missing reading
            lines.append(f"{t + 2},NaN")
    src = tmp_path / "flat.csv"
    src.write_text("\n".join(lines) + "\n")
    res = runner.invoke(app, ["anomaly", "score", str(src)])
    assert res.exit_code == 0, res.output
    rows = _read(res.stdout)
    assert len(rows) == len(lines) - 1
    missing = [r for r in rows if r["value"] in ("", "NaN")]
    # missing readings are scored by their run (after the warm-up), 2 in a row is unusual
    assert missing[0]["anomaly_score"] == "" and all(r["anomaly_score"] for r in missing[2:])
    assert all(0.1 < float(r["anomaly_score"]) < 0.6 for r in missing[2:])
    scored = [float(r["anomaly_score"]) for r in rows if r not in missing and r["anomaly_score"]]
    assert len(scored) > 200 and max(scored) == 0.0  # constant: nothing unexpected


def test_junk_value_is_an_error_naming_the_line(tmp_path):
    vals = _noise(50)
    vals[20] = "12,5"  # a decimal comma: CSV-quoted by the writer, junk as a number
    src = _series_csv(tmp_path / "bad.csv", vals)
    res = runner.invoke(app, ["anomaly", "score", str(src)])
    assert res.exit_code == 2
    assert "line 22" in res.output and "'12,5' is not a number" in res.output
    with pytest.raises(CsvInputError) as err:
        score_csv(io.StringIO("timestamp,value\n1,2\n2,abc\n"), io.StringIO())
    assert err.value.line == 3


def test_skip_invalid_leaves_bad_rows_unscored_and_names_them(tmp_path):
    text = (
        "timestamp,value\n"
        + "".join(f"{i},{v}\n" for i, v in enumerate(_noise(60)))
        + "60,oops\nnot-a-time,1.0\n58,2.0\n61,inf\n62,50.1\n"
    )
    warn = io.StringIO()
    dst = io.StringIO()
    summary = score_csv(io.StringIO(text), dst, skip_invalid=True, warn=warn)
    rows = _read(dst.getvalue())
    assert len(rows) == 65 and summary.skipped == 3
    assert [r["anomaly_score"] for r in rows[60:62] + rows[63:64]] == ["", "", ""]
    assert rows[62]["anomaly_score"] != ""  # time going back: scored (policy, not an error)
    assert rows[64]["anomaly_score"] != "" and summary.out_of_order == 1
    msgs = warn.getvalue()
    for line in (62, 63, 65):
        assert f"line {line}:" in msgs


def test_bad_timestamps_and_columns_are_errors_naming_the_line():
    with pytest.raises(CsvInputError, match="line 3: timestamp 'yesterday'"):
        score_csv(io.StringIO("timestamp,value\n1,1\nyesterday,1\n"), io.StringIO())
    with pytest.raises(CsvInputError, match="line 1: no value column 'v' .columns are"):
        score_csv(io.StringIO("timestamp,value\n1,1\n"), io.StringIO(), column="v")
    with pytest.raises(CsvInputError, match="line 3: 1 fields"):
        score_csv(io.StringIO("timestamp,value\n1,1\n2\n"), io.StringIO())


def test_named_columns_and_iso_timestamps_with_offsets(tmp_path):
    src = tmp_path / "m.csv"
    rows = ["ts,temp_c,power_w"]
    for i in range(100):
        rows.append(f"2024-05-01 {i // 60:02d}:{i % 60:02d}:00+02:00,{20 + i % 2},{300 + i}")
    src.write_text("\n".join(rows) + "\n")
    res = runner.invoke(
        app, ["anomaly", "score", str(src), "--column", "power_w", "--time-column", "ts"]
    )
    assert res.exit_code == 0, res.output
    out = _read(res.stdout)
    assert list(out[0]) == ["ts", "temp_c", "power_w", "anomaly_score"]
    assert sum(1 for r in out if r["anomaly_score"]) > 50


def test_real_binary_reads_stdin_and_fails_cleanly_on_a_missing_file(tmp_path):
    exe = Path(sys.executable).parent / "dctwin"
    text = "timestamp,value\n" + "".join(f"{i * 10},{v}\n" for i, v in enumerate(_noise(80)))
    done = subprocess.run(
        [str(exe), "anomaly", "score", "-"],
        input=text,
        text=True,
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert len(_read(done.stdout)) == 80
    gone = subprocess.run(
        [str(exe), "anomaly", "score", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert gone.returncode == 2 and "no such file" in gone.stderr
