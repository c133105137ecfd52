"""Anomaly detection throughput: the streaming detector across many series and on one
long series (issue 7 targets), plus the CSV scoring command end to end."""

from __future__ import annotations

import io
import time

import numpy as np

from bench.harness import Result, peak_rss_mb
from twin.anomaly.csvscore import score_csv
from twin.anomaly.streaming import DetectorState, score_points, score_series


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(quick: bool = False) -> list[Result]:
    rng = np.random.default_rng(0)
    results = []

    # many series, each scored for a block of new points with its carried state: the
    # fleet's steady state (one call per scoring round, state in and out)
    n_series, per = (2_000, 100) if quick else (20_000, 100)
    n = n_series * per
    t = np.tile(np.arange(per) * 10.0, n_series) + rng.uniform(0, 1, n)
    t = np.sort(t.reshape(n_series, per), axis=1).ravel()
    x = rng.normal(size=n) * np.repeat(rng.uniform(0.1, 10, n_series), per) + np.repeat(
        rng.uniform(0, 500, n_series), per
    )
    starts = np.arange(n_series) * per
    _, warm = score_points(t, x, starts)  # states after a first block
    state = DetectorState.empty(n_series)
    state.put(np.arange(n_series), warm)
    secs = _best_of(lambda: score_points(t + per * 10.0, x, starts, state=state), 3)
    rate = n / secs
    results.append(
        Result(
            f"streaming detector, {n_series:,} series x {per} points",
            "points/s",
            rate,
            ">= 1,000,000",
            rate >= 1_000_000,
            note=f"{secs * 1000:.0f} ms per round",
        )
    )

    # one long series, irregular sampling
    m = 200_000 if quick else 2_000_000
    tl = np.cumsum(rng.exponential(10.0, m))
    xl = 40 + np.sin(tl / 86_400 * 2 * np.pi) * 5 + rng.normal(size=m)
    secs = _best_of(lambda: score_series(tl, xl), 2)
    rate = m / secs
    results.append(
        Result(
            f"streaming detector, one series of {m:,} points",
            "points/s",
            rate,
            ">= 100,000",
            rate >= 100_000,
        )
    )

    # the CSV command's core: parse, score, write
    rows = 50_000 if quick else 500_000
    text = "timestamp,value\n" + "".join(
        f"{1_700_000_000 + 10 * i},{v:.3f}\n" for i, v in enumerate(rng.normal(50, 1, rows))
    )
    secs = _best_of(lambda: score_csv(io.StringIO(text), io.StringIO()), 1)
    results.append(
        Result(
            "dctwin anomaly score (CSV in, CSV out)",
            "rows/s",
            rows / secs,
            note=f"{rows:,} rows; peak RSS {peak_rss_mb():.0f} MB",
        )
    )
    return results
