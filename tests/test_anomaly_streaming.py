"""Streaming detector: exact recurrences, causality, calibration and the behaviours it
promises (spikes, level shifts, stuck values, daily patterns, irregular sampling, gaps)."""

from __future__ import annotations

import numpy as np
import pytest

from twin.anomaly.calibration import combine_p, p_to_score, score_to_p
from twin.anomaly.scan import ew_scan
from twin.anomaly.streaming import DetectorState, score_points, score_series

DAY_S = 86_400.0


def _loop(u: np.ndarray, d: np.ndarray, y0: np.ndarray) -> np.ndarray:
    out = np.empty_like(u)
    acc = y0.copy()
    for i in range(u.shape[1]):
        acc = d[i] * acc + u[:, i]
        out[:, i] = acc
    return out


@pytest.mark.parametrize("n", [1, 7, 64, 65, 1000, 20_011])
def test_chunked_scan_equals_the_plain_recurrence(n):
    rng = np.random.default_rng(n)
    u = rng.normal(size=(3, n))
    d = rng.uniform(0.0, 1.0, n)
    d[rng.random(n) < 0.01] = 0.0  # series boundaries
    y0 = rng.normal(size=3)
    np.testing.assert_allclose(ew_scan(u, d, y0), _loop(u, d, y0), rtol=1e-10, atol=1e-10)


def test_scores_of_early_points_do_not_change_when_later_points_are_appended_or_altered():
    rng = np.random.default_rng(1)
    n, cut = 3000, 1700
    t = np.cumsum(rng.uniform(5, 15, n))
    x = 20 + rng.normal(size=n)
    full, _ = score_series(t, x)
    head, _ = score_series(t[:cut], x[:cut])
    x2 = x.copy()
    x2[cut:] = rng.normal(1000, 50, n - cut)  # later rows altered wildly
    t2 = t.copy()
    t2[cut:] += 1e6  # and moved
    altered, _ = score_series(t2, x2)
    for other in (full, altered):
        np.testing.assert_array_equal(other.score[:cut], head.score)
        np.testing.assert_array_equal(other.z[:cut], head.z)


def test_feeding_in_pieces_equals_feeding_at_once_for_many_series():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 400, 30)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n = int(lengths.sum())
    t = np.concatenate([np.cumsum(rng.exponential(10, k)) for k in lengths])
    x = rng.normal(size=n) * np.repeat(rng.uniform(0.1, 100, 30), lengths)
    x[rng.random(n) < 0.05] = 3.0  # some repeats
    whole, end_state = score_points(t, x, starts)
    # split every series at its own random point, score both halves with carried state
    state = DetectorState.empty(30)
    first_parts, second_parts = [], []
    cuts = [int(rng.integers(0, k + 1)) for k in lengths]
    for s, k, c in zip(starts, lengths, cuts, strict=True):
        first_parts.append(np.arange(s, s + c))
        second_parts.append(np.arange(s + c, s + k))
    got = np.full(n, np.nan)
    for parts in (first_parts, second_parts):
        which = np.array([i for i, p in enumerate(parts) if len(p)])
        idx = np.concatenate([parts[i] for i in which])
        st = np.concatenate([[0], np.cumsum([len(parts[i]) for i in which])[:-1]])
        res, new = score_points(t[idx], x[idx], st, state=state.take(which))
        state.put(which, new)
        got[idx] = res.score
    np.testing.assert_allclose(got, whole.score, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(state.x2, end_state.x2, rtol=1e-9)


@pytest.mark.parametrize("noise", ["normal", "laplace", "student_t5"])
def test_a_threshold_means_the_same_false_alarm_rate_whatever_the_noise(noise):
    rng = np.random.default_rng(3)
    n = 120_000
    t = np.arange(n) * 10.0
    draw = {
        "normal": lambda: rng.normal(size=n),
        "laplace": lambda: rng.laplace(size=n),
        "student_t5": lambda: rng.standard_t(5, size=n),
    }[noise]
    for scale, level in ((0.01, 5.0), (50.0, 3000.0)):
        res, _ = score_series(t, level + scale * draw())
        s = res.score[np.isfinite(res.score)]
        for threshold in (0.25, 0.375, 0.5):
            rate, nominal = float(np.mean(s >= threshold)), float(score_to_p(threshold))
            # never far above nominal; near it where there are enough points to tell
            # (light, normal tails come out conservative far out: fewer alarms)
            assert rate <= 3.0 * nominal, (noise, scale, threshold, rate)
            if threshold < 0.5:
                assert rate >= nominal / 10.0, (noise, scale, threshold, rate)


def test_spike_scores_high_and_does_not_inflate_the_scale_for_the_next_one():
    rng = np.random.default_rng(4)
    n = 2000
    x = 40 + rng.normal(0, 0.5, n)
    x[1000] += 10.0
    x[1010] += 5.0  # a second, smaller one right after
    res, _ = score_series(np.arange(n) * 10.0, x)
    assert res.score[1000] >= 0.9
    assert res.z[1010] >= 8.0  # the first spike did not inflate the scale
    assert res.score[1010] >= 0.4  # (it did make the tail fit more cautious)
    quiet = np.r_[res.score[100:1000], res.score[1020:]]
    assert np.nanmax(quiet) < 0.75


def test_level_shift_alarms_then_becomes_the_new_normal():
    rng = np.random.default_rng(5)
    n = 3000
    x = 10 + rng.normal(0, 0.2, n)
    x[1500:] += 3.0
    res, _ = score_series(np.arange(n) * 60.0, x)
    assert res.score[1500] >= 0.9
    assert np.nanmax(res.score[1800:]) < 0.5  # re-adapted within 300 intervals


def test_stuck_value_alarms_within_a_few_points_but_flat_signals_never_do():
    rng = np.random.default_rng(6)
    n = 2000
    x = 25 + rng.normal(0, 0.3, n)
    x[1200:1260] = x[1200]
    res, _ = score_series(np.arange(n) * 10.0, x)
    first = 1200 + int(np.argmax(res.score[1200:1260] >= 0.75))
    assert res.score[first] >= 0.75 and first - 1200 <= 4
    assert np.all(res.score[1210:1260] >= 0.75)  # and stays up while stuck
    flat, _ = score_series(np.arange(n) * 10.0, np.zeros(n))  # e.g. an error counter
    assert np.nanmax(flat.score) == 0.0
    quant = np.round(25 + rng.normal(0, 0.6, n))  # whole degrees: repeats are normal
    qres, _ = score_series(np.arange(n) * 10.0, quant)
    assert np.nanmax(qres.score) < 0.75


def test_saturated_actuator_is_not_a_stuck_sensor():
    n = 1500
    speed = np.minimum(100.0, 60 + 0.1 * np.arange(n))  # ramps up, then pinned at 100 %
    res, _ = score_series(np.arange(n) * 10.0, speed)
    assert np.nanmax(res.score[500:]) < 0.5


def test_daily_pattern_does_not_raise_alarms():
    rng = np.random.default_rng(7)
    t = np.arange(0, 7 * DAY_S, 60.0)
    x = 300 + 150 * np.sin(2 * np.pi * t / DAY_S) + rng.normal(0, 5, len(t))
    x += np.where((t // DAY_S) % 7 >= 5, -80.0, 0.0) * 0  # weekday pattern, smooth part only
    res, _ = score_series(t, x)
    s = res.score[np.isfinite(res.score)]
    assert np.mean(s >= 0.5) <= 3 * score_to_p(0.5)
    assert np.max(s) < 0.75


def test_irregular_sampling_and_gaps():
    rng = np.random.default_rng(8)
    dt = rng.exponential(10.0, 5000)
    dt[2500] = 6 * 3600.0  # a six-hour gap
    t = np.cumsum(dt)
    x = 50 + rng.normal(0, 1, 5000)
    res, _ = score_series(t, x)
    s = res.score[np.isfinite(res.score)]
    assert np.mean(s >= 0.5) <= 3 * score_to_p(0.5)
    # after a long gap the series warms up again: no score right away, then scores
    assert np.isnan(res.score[2500])
    assert np.isfinite(res.score[2600])


def test_repeated_timestamps_and_constant_series_are_handled():
    t = np.repeat(np.arange(500) * 10.0, 2)
    x = np.full(1000, 7.0)
    res, _ = score_series(t, x)
    s = res.score[np.isfinite(res.score)]
    assert len(s) > 900 and np.all(s == 0.0)
    x[900] = 7.5  # the first change of a constant series is news
    res, _ = score_series(t, x)
    assert res.score[900] == 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="finite"):
        score_series(np.arange(3.0), np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        score_series(np.array([0.0, 10.0, 5.0]), np.ones(3))


def test_score_scale_and_combination():
    assert p_to_score(1e-8) == 1.0 and p_to_score(1.0) == 0.0 and p_to_score(1e-4) == 0.5
    assert np.isnan(p_to_score(np.nan))
    p = combine_p(np.array([[1e-6, np.nan], [0.5, np.nan], [0.01, np.nan]]))
    assert p[0] == pytest.approx(3e-6) and np.isnan(p[1])
