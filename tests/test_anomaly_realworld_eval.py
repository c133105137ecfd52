"""The real-world evaluation (issue #20, part anom-real): SKAB's scoring as ported, and
`dctwin anomaly evaluate-realworld` end to end on a small corpus in SKAB's format (CI has
no network and SKAB stays out of the repository, so the corpus here is generated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.anomaly.skab import (
    CHANNELS,
    MANIFEST,
    Confusion,
    CorpusError,
    Nab,
    alarms_to_changepoints,
    corpus_files,
)

REPO = Path(__file__).resolve().parent.parent


def _nab(t, true_idx, pred_idx) -> dict[str, float]:
    true = np.zeros(len(t), dtype=bool)
    pred = np.zeros(len(t), dtype=bool)
    true[true_idx], pred[pred_idx] = True, True
    nab = Nab.empty()
    nab.add(np.asarray(t, dtype=np.float64), true, pred)
    return nab.values()


def test_nab_score_as_skab_defines_it():
    t = np.arange(300.0)
    assert _nab(t, [100], [100]) == {"Standard": 100.0, "LowFP": 100.0, "LowFN": 100.0}
    assert _nab(t, [100], []) == {"Standard": 0.0, "LowFP": 0.0, "LowFN": 0.0}
    # half-way through the 60 s window: tanh profile, A_tp = 1, A_fp = -0.11
    mid = _nab(t, [100], [130])["Standard"]
    assert mid == pytest.approx(100 * (0.4449 + 1) / 2, abs=0.1)
    # a false positive before the window costs A_fp; after the window too
    assert _nab(t, [100], [20, 130])["Standard"] == pytest.approx(mid - 100 * 0.11 / 2, abs=1e-9)
    assert _nab(t, [100], [100, 161])["Standard"] == pytest.approx(100 - 5.5)
    # LowFP doubles the cost of a false alarm
    fp = _nab(t, [100], [100, 20])
    assert fp["Standard"] == pytest.approx(94.5) and fp["LowFP"] == pytest.approx(89.0)


def test_alarms_become_changepoints_like_skabs_notebooks():
    a = np.zeros(200, dtype=bool)
    a[50:100] = True
    cp = alarms_to_changepoints(a)
    # rolling(30).max() rises at 50 and falls 30 rows after the last alarm
    assert np.flatnonzero(cp).tolist() == [50, 129]
    b = np.zeros(10, dtype=bool)
    b[0] = True
    assert alarms_to_changepoints(b).tolist() == [True] + [False] * 9


def test_pointwise_f1_far_mar():
    c = Confusion()
    c.add(np.array([1, 1, 0, 0, 1], dtype=bool), np.array([1, 0, 1, 0, 1], dtype=bool))
    assert (c.tp, c.tn, c.fp, c.fn) == (2, 1, 1, 1)
    assert c.f1() == pytest.approx(2 / 3) and c.far_pct() == 50.0
    assert c.mar_pct() == pytest.approx(100 / 3)


def _recording(path: Path, start: str, seed: int, shift_at: int = 600, end: int = 800) -> None:
    rng = np.random.default_rng(seed)
    n = 1000
    t0 = np.datetime64(start, "s")
    base = np.array([0.03, 0.04, 1.3, 0.3, 79.0, 26.0, 230.0, 32.0])
    noise = np.array([0.001, 0.001, 0.05, 0.02, 0.1, 0.02, 2.0, 0.5])
    x = base + noise * rng.normal(size=(n, 8))
    x[shift_at:end, 3] += 0.2  # pressure drops behind a closing valve ...
    x[shift_at:end, 7] -= 4.0  # ... and the flow with it
    anomaly = np.zeros(n, dtype=int)
    anomaly[shift_at:end] = 1
    cp = np.zeros(n, dtype=int)
    cp[[shift_at, end]] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(";".join(["datetime", *CHANNELS, "anomaly", "changepoint"]) + "\n")
        for i in range(n):
            ts = str(t0 + i).replace("T", " ")
            vals = ";".join(f"{v:.5f}" for v in x[i])
            f.write(f"{ts};{vals};{anomaly[i]:.1f};{cp[i]:.1f}\n")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "dctwin.cli.main", "anomaly", "evaluate-realworld", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )


def test_evaluate_realworld_end_to_end_deterministic(tmp_path):
    corpus = tmp_path / "data"
    _recording(corpus / "other" / "1.csv", "2020-02-08T10:00:00", 1)
    _recording(corpus / "other" / "2.csv", "2020-02-08T11:00:00", 2)
    _recording(corpus / "valve1" / "0.csv", "2020-03-09T10:00:00", 3)
    _recording(corpus / "valve1" / "1.csv", "2020-03-09T11:00:00", 4, shift_at=700, end=900)
    outs = []
    for k in range(2):
        out = tmp_path / f"r{k}.json"
        done = _cli("--corpus", str(corpus), "--no-verify", "--json", str(out))
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1]  # seeded: the same numbers twice
    doc = outs[0]
    assert doc["recordings"]["held_out"] == ["valve1/0.csv", "valve1/1.csv"]
    assert doc["recordings"]["development"] == ["other/1.csv", "other/2.csv"]
    held = {(r["method"], r["rule"]): r for r in doc["results"]["held_out"]}
    assert {m for m, _ in held} == {"dctwin", "dctwin_device", "rolling_z", "isolation_forest"}
    # an obvious valve closure: dctwin's device score finds it and keeps alarming through
    assert held[("dctwin", "fixed")]["f1"] > 0.75
    assert held[("dctwin", "fixed")]["missed_cps"] <= 2
    assert "dctwin beats both baselines, held-out, fixed f1: yes" in done.stdout


def test_the_pinned_corpus_is_checked_and_errors_are_one_line(tmp_path):
    assert len(MANIFEST) == 34 and all(len(h) == 64 for h in MANIFEST.values())
    with pytest.raises(CorpusError, match="missing"):
        corpus_files(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "1.csv").write_text("not skab\n")
    with pytest.raises(CorpusError, match="checksum differs"):
        corpus_files(tmp_path)
    done = _cli("--corpus", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such directory"]


def test_download_refuses_a_file_that_is_not_the_pinned_one(tmp_path):
    """Real HTTP: a mirror serving something else is refused, nothing is written."""
    import functools
    import http.server
    import threading

    from experiments.anomaly.skab import download

    served = tmp_path / "mirror"
    (served / "other").mkdir(parents=True)
    (served / "other" / "1.csv").write_text("datetime;x\n2020-01-01 00:00:00;1\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            with pytest.raises(CorpusError, match=r"other/1.csv: checksum mismatch"):
                download(tmp_path / "data", base_url=url)
        finally:
            srv.shutdown()
    assert not (tmp_path / "data" / "other" / "1.csv").exists()
