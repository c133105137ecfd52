"""The demand forecast (issue 27): coverage of its intervals, the weather term, run-out,
and the evaluation command's determinism on a small simulated growth scenario."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.capacity_eval import QUICK, evaluate
from twin.capacity.forecast import DAY_S, HOUR_S, ForecastConfig, forecast, runout

T0 = 1_740_787_200.0  # 2025-03-01 00:00 UTC


def synthetic(seed: int, days: int = 90, weather_kw_per_k: float = 0.0):
    """Hourly demand: growth, a daily swing, a weekly pattern, weather, noise (seeded)."""
    rng = np.random.default_rng(seed)
    t = T0 + HOUR_S * np.arange(days * 24)
    d = (t - T0) / DAY_S
    temp = 12 + 8 * np.sin(2 * np.pi * d / 365) + 4 * np.cos(2 * np.pi * (t % DAY_S) / DAY_S)
    temp += np.repeat(rng.normal(0, 2.5, days), 24)  # weather systems: day-to-day swings
    weekday = ((t // DAY_S + 3) % 7) >= 5
    y = 500 + 2.5 * d + 20 * np.cos(2 * np.pi * (t % DAY_S) / DAY_S) - 15 * weekday
    y = y + weather_kw_per_k * temp + np.repeat(rng.normal(0, 8, days), 24)
    y = y + rng.normal(0, 3, t.size)
    return t, y, temp


def _daily_peaks(t, y):
    return y.reshape(-1, 24).max(1)


def test_interval_coverage_on_held_out_days_is_in_band():
    """20 seeded series, 60 days of history each, the next 30 held out: the 90 % interval
    covers 85-95 % of the 600 held-out daily peaks together."""
    inside = total = 0
    for seed in range(20):
        t, y, temp = synthetic(seed)
        h = 60 * 24
        fc = forecast(t[:h], y[:h], temp[:h])
        held = _daily_peaks(t[h:], y[h:])
        inside += int(((held >= fc.lower_kw) & (held <= fc.upper_kw)).sum())
        total += held.size
    assert 0.85 <= inside / total <= 0.95, inside / total


def test_weather_sensitivity_is_found_when_it_is_there():
    t, y, temp = synthetic(3, weather_kw_per_k=6.0)
    fc = forecast(t[: 60 * 24], y[: 60 * 24], temp[: 60 * 24])
    assert fc.weather_kw_per_k == pytest.approx(6.0, abs=1.5)
    assert fc.trend_kw_per_day == pytest.approx(2.5, abs=0.5)
    # the same series without temperature readings: fitted without the weather term
    fc = forecast(t[: 60 * 24], y[: 60 * 24], None)
    assert fc.weather_kw_per_k is None


def test_runout_dates_and_insufficient_history():
    t, y, temp = synthetic(5)
    h = 60 * 24
    fc = forecast(t[:h], y[:h], temp[:h], ForecastConfig(horizon_days=30))
    # the typical daily peak grows 2.5 kW/day: a capacity 25 kW above the forecast's first
    # day is reached about ten days on; far above, not within the horizon
    cap = float(fc.peak_kw[0]) + 25.0
    r = runout(fc, cap)
    assert r.expected_s is not None
    assert abs((r.expected_s - fc.day_s[0]) / DAY_S - 10) <= 2
    assert r.earliest_s is not None and r.earliest_s <= r.expected_s
    assert r.latest_s is None or r.latest_s >= r.expected_s
    assert runout(fc, cap + 1e4).expected_s is None
    with pytest.raises(ValueError, match="days of hourly history"):
        forecast(t[: 5 * 24], y[: 5 * 24])


def test_evaluation_is_deterministic_on_a_small_scenario():
    """`dctwin capacity evaluate --quick`: the seeded simulator run twice gives the same
    figures, and they are figures (coverage a share, run-outs dated)."""
    a = evaluate((QUICK,))
    b = evaluate((QUICK,))
    assert a["results"] == b["results"]
    for r in a["results"]:
        assert 0.0 <= r["coverage"] <= 1.0 and r["mape_pct"] < 25.0
        assert len(r["runouts"]) == 3


def test_runout_bound_of_a_line_through_all_days():
    """The evaluation's bound (issue 27 part whatif2): a line through all the daily peaks
    dates a run-out exactly when the peaks are that line."""
    from experiments.capacity_eval import evaluate_series
    from twin.capacity.forecast import ForecastConfig

    days = 74
    t = np.arange(days * 24) * 3600.0
    peak = 500.0 + 4.0 * (t // 86400.0)  # 4 kW/day growth, the same peak all day
    data = {"t_s": t, "power_kw": peak, "outdoor_c": np.full(t.size, 20.0)}
    r = evaluate_series("line", "power_kw", data, 60 * 24, ForecastConfig(horizon_days=14))
    for ro in r.runouts:
        assert ro["oracle_error_days"] == 0.0 and ro["oracle_within_10pct"]
        assert ro["pred_error_days"] == 0.0  # a noiseless line is forecast exactly
