"""30-day demand forecast with prediction intervals, and when headroom runs out.

What is forecast: each day's peak demand (the highest hourly mean of the day), the figure
capacity is planned against; hour-to-hour swings of AI load (training jobs starting,
checkpointing, pausing) are noise at a 30-day horizon, while the daily peak carries the
growth, the weekly pattern and the weather.

Model (fixed before any held-out month was evaluated; docs/capacity.md): least absolute
deviations on the daily peaks (the typical day: a day a big job paused does not pull the
line down) with a linear trend, weekly Fourier terms and the day's mean outdoor dry-bulb
(weather sensitivity, kW/K); the weekly and weather terms only when they forecast the
calibration days (below) better than the model without them. The future temperature is
not known: it is the mean of the last TEMP_DAYS days of history (persistence), so its
error is part of the forecast error the intervals are calibrated on.

Intervals: split conformal, time-ordered. The last `min(horizon, half the history)` days
are held back; a model fitted on the days before forecasts them exactly as the final
forecast is made, and the quantiles (finite-sample corrected) of its residuals, relative
to the forecast, at (1 - level)/2 and (1 + level)/2 give the band around the forecast of
the model refitted on all history.

Run-out: the first forecast day whose peak exceeds the capacity (`expected`); `earliest`
with the interval's upper bound, `latest` with its lower bound. None: not within the
horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HOUR_S = 3600.0
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
TEMP_DAYS = 7
MIN_HOURS_PER_DAY = 18  # a day with fewer known hours has no peak (it would be low)


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    horizon_days: int = 30
    level: float = 0.9  # central prediction interval
    weekly_harmonics: int = 2
    min_history_days: int = 14
    min_temp_coverage: float = 0.8  # fewer days with a temperature: fit without weather


@dataclass(slots=True)
class Forecast:
    day_s: np.ndarray  # day starts (UTC midnight), epoch seconds
    peak_kw: np.ndarray  # forecast daily peak
    lower_kw: np.ndarray
    upper_kw: np.ndarray
    level: float
    weather_kw_per_k: float | None  # None: fitted without temperature
    trend_kw_per_day: float
    calibration_days: int
    history_days: int


class ForecastError(ValueError):
    """Not enough history to forecast."""


def daily(
    t_s: np.ndarray, y: np.ndarray, temp_c: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(day start, daily peak, daily mean temperature) from hourly values; days with fewer
    than MIN_HOURS_PER_DAY known hours are dropped."""
    t_s, y = np.asarray(t_s, float), np.asarray(y, float)
    temp = np.full(t_s.size, np.nan) if temp_c is None else np.asarray(temp_c, float)
    ok = np.isfinite(y)
    day = np.floor(t_s / DAY_S).astype(np.int64)
    days, inv = np.unique(day, return_inverse=True)
    n = np.bincount(inv, ok.astype(float), days.size)
    peak = np.full(days.size, -np.inf)
    np.maximum.at(peak, inv[ok], y[ok])
    t_ok = np.isfinite(temp)
    t_n = np.bincount(inv, t_ok.astype(float), days.size)
    t_mean = np.bincount(inv, np.where(t_ok, temp, 0.0), days.size) / np.maximum(t_n, 1)
    t_mean[t_n == 0] = np.nan
    keep = n >= MIN_HOURS_PER_DAY
    return days[keep] * DAY_S, peak[keep], t_mean[keep]


def _lad(x: np.ndarray, y: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Least absolute deviations by iteratively reweighted least squares: the typical day,
    not pulled down by the odd day a big job paused."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    eps = 1e-6 * max(float(np.abs(y).mean()), 1.0)
    for _ in range(iterations):
        w = 1.0 / np.sqrt(np.maximum(np.abs(y - x @ coef), eps))
        coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    return coef


def _design(
    d_s: np.ndarray, temp_c: np.ndarray | None, t0: float, cfg: ForecastConfig, weekly: bool
):
    cols = [np.ones_like(d_s), (d_s - t0) / DAY_S]
    for k in range(1, (cfg.weekly_harmonics if weekly else 0) + 1):
        w = 2 * np.pi * k * d_s / WEEK_S
        cols += [np.sin(w), np.cos(w)]
    if temp_c is not None:
        cols.append(temp_c)
    return np.column_stack(cols)


def _fit_predict(
    d_s: np.ndarray,
    y: np.ndarray,
    temp_c: np.ndarray | None,
    future_s: np.ndarray,
    cfg: ForecastConfig,
    weekly: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(forecast at future_s, coefficients); trend measured from the forecast origin."""
    t0 = float(d_s[-1])
    x = _design(d_s, temp_c, t0, cfg, weekly)
    ok = np.all(np.isfinite(x), axis=1)
    coef = _lad(x[ok], y[ok])
    future_temp = None
    if temp_c is not None:
        recent = temp_c[-TEMP_DAYS:]
        future_temp = np.full(future_s.size, float(np.nanmean(recent)))
    return _design(future_s, future_temp, t0, cfg, weekly) @ coef, coef


def _conformal(residuals: np.ndarray, level: float) -> tuple[float, float]:
    r = np.sort(residuals[np.isfinite(residuals)])
    n = r.size
    alpha = (1.0 - level) / 2.0
    hi_k = min(math.ceil((n + 1) * (1.0 - alpha)), n) - 1
    lo_k = max(math.floor((n + 1) * alpha), 1) - 1
    return float(r[lo_k]), float(r[hi_k])


def forecast(
    t_s: np.ndarray,
    y: np.ndarray,
    temp_c: np.ndarray | None = None,
    cfg: ForecastConfig | None = None,
) -> Forecast:
    """Forecast the daily peak of hourly `y` (hour starts `t_s`, NaN where unknown) for
    `cfg.horizon_days` days after the last whole day. Deterministic."""
    cfg = cfg or ForecastConfig()
    d_s, peak, temp = daily(t_s, y, temp_c)
    if d_s.size < cfg.min_history_days:
        raise ForecastError(
            f"needs at least {cfg.min_history_days} days of hourly history (has {d_s.size})"
        )
    temp_opt: np.ndarray | None = temp
    if np.isfinite(temp).mean() < cfg.min_temp_coverage:
        temp_opt = None
    future = d_s[-1] + DAY_S * np.arange(1, cfg.horizon_days + 1)
    n_cal = min(cfg.horizon_days, d_s.size // 2)
    fit = slice(0, d_s.size - n_cal)
    cal = slice(d_s.size - n_cal, d_s.size)
    # model selection on the calibration days only: with or without the weekly terms and
    # the weather term, whichever forecasts them best (mean absolute error). Growth and
    # season are confounded over a few weeks: a spurious weather slope would extrapolate.
    best: tuple[float, bool, bool, np.ndarray] | None = None
    for weekly in (False, True):
        for use_t in (False, True) if temp_opt is not None else (False,):
            t_fit = temp_opt[fit] if use_t and temp_opt is not None else None
            pred, _ = _fit_predict(d_s[fit], peak[fit], t_fit, d_s[cal], cfg, weekly)
            mae = float(np.mean(np.abs(peak[cal] - pred)))
            if best is None or mae < best[0] - 1e-9:
                best = (mae, weekly, use_t, pred)
    assert best is not None
    _mae, weekly, use_t, pred_cal = best
    if not use_t:
        temp_opt = None
    q_lo, q_hi = _conformal((peak[cal] - pred_cal) / np.abs(pred_cal), cfg.level)
    mean, coef = _fit_predict(d_s, peak, temp_opt, future, cfg, weekly)
    return Forecast(
        future,
        mean,
        mean * (1.0 + q_lo),
        mean * (1.0 + q_hi),
        cfg.level,
        None if temp_opt is None else float(coef[-1]),
        float(coef[1]),
        n_cal,
        int(d_s.size),
    )


def first_over(day_s: np.ndarray, y: np.ndarray, capacity_kw: float | None) -> float | None:
    """Start (epoch s) of the first day whose value exceeds capacity_kw; None if none."""
    if capacity_kw is None or not math.isfinite(capacity_kw):
        return None
    over = np.flatnonzero(np.asarray(y) > capacity_kw)
    return float(day_s[over[0]]) if over.size else None


@dataclass(slots=True)
class Runout:
    expected_s: float | None  # forecast peak
    earliest_s: float | None  # upper bound
    latest_s: float | None  # lower bound


def runout(fc: Forecast, capacity_kw: float | None) -> Runout:
    return Runout(
        first_over(fc.day_s, fc.peak_kw, capacity_kw),
        first_over(fc.day_s, fc.upper_kw, capacity_kw),
        first_over(fc.day_s, fc.lower_kw, capacity_kw),
    )
