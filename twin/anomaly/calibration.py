"""From raw deviations to calibrated scores in [0, 1], and from series to devices.

A score is a tail probability on a log scale: ``score = -log10(p) / P_DECADES`` where
``p`` is the chance, under the series' own recent behaviour, of a deviation at least as
large as the one seen. So a threshold ``s`` means a false-alarm rate of ``10**(-8 s)``
per point on *every* series, whatever its noise level or tail shape (0.5 -> 1e-4,
0.75 -> 1e-6, 1.0 -> 1e-8 or rarer).

The tail of each series' |z| is fitted causally, peaks-over-threshold style: a
generalized Pareto distribution above ``u0`` whose parameters come from exponentially
weighted moments of the exceedances (method of moments), shrunk towards a prior
exponential tail while the series has few exceedances. All of it is the same linear
recurrence the detector uses, so it vectorizes over time too.
"""

from __future__ import annotations

import math

import numpy as np

P_DECADES = 8.0  # p = 1e-8 maps to score 1
TAIL_U0 = 3.0  # |z| above this is an exceedance
# Prior tail: the exceedance rate of a normal variable and a light exponential excess;
# PRIOR_WEIGHT pseudo-exceedances of it, so a few real ones already move the fit.
PRIOR_RATE = math.erfc(TAIL_U0 / math.sqrt(2.0))
PRIOR_SCALE = 0.5
PRIOR_WEIGHT = 10.0
MAX_SHAPE = 0.45
MAX_EXCESS = 50.0  # |z| beyond TAIL_U0 + MAX_EXCESS counts as that: a glitch of 1e9 sigma


def p_to_score(p: np.ndarray | float) -> np.ndarray:
    """Tail probability -> score in [0, 1] (NaN stays NaN: no score yet)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        s = -np.log10(np.clip(p, 0.0, 1.0)) / P_DECADES
    return np.clip(s, 0.0, 1.0) + 0.0  # no -0.0


def score_to_p(score: np.ndarray | float) -> np.ndarray:
    """The per-point false-alarm rate a score threshold stands for."""
    return 10.0 ** (-P_DECADES * np.asarray(score, dtype=np.float64))


def tail_moments(abs_z: np.ndarray) -> np.ndarray:
    """Per-point inputs of the tail recurrences: (counted, exceeded, excess, excess^2).

    NaN |z| (warm-up) contributes nothing.
    """
    valid = np.isfinite(abs_z)
    a = np.where(valid, abs_z, 0.0)
    # capped, so that one absurd glitch cannot make the fitted tail arbitrarily heavy
    excess = np.where(valid, np.clip(a - TAIL_U0, 0.0, MAX_EXCESS), 0.0)
    exceeded = (excess > 0).astype(np.float64)
    return np.stack([valid.astype(np.float64), exceeded, excess, excess * excess])


def tail_p(
    abs_z: np.ndarray, weight: np.ndarray, n_exc: np.ndarray, s1: np.ndarray, s2: np.ndarray
) -> np.ndarray:
    """P(|Z| >= abs_z) from the (predictive) tail sums of a series.

    ``weight`` is the weighted number of scored points, ``n_exc`` the weighted number of
    exceedances, ``s1``/``s2`` the weighted sums of excess and squared excess.
    """
    k0 = PRIOR_WEIGHT
    rate = (n_exc + k0) / (weight + k0 / PRIOR_RATE)
    mean = (s1 + k0 * PRIOR_SCALE) / (n_exc + k0)
    second = (s2 + k0 * 2.0 * PRIOR_SCALE**2) / (n_exc + k0)
    var = np.maximum(second - mean * mean, 1e-12)
    ratio = mean * mean / var
    shape = np.clip(0.5 * (1.0 - ratio), 0.0, MAX_SHAPE)
    scale = np.maximum(0.5 * mean * (ratio + 1.0), 1e-9)
    y = abs_z - TAIL_U0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        gpd = np.where(
            shape > 1e-6,
            np.power(np.maximum(1.0 + shape * y / scale, 1e-300), -1.0 / np.maximum(shape, 1e-6)),
            np.exp(-y / scale),
        )
        p = np.minimum(1.0, rate * gpd)
    return np.where(np.isfinite(abs_z), p, np.nan)


def combine_p(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """Family-wise p of several components (Bonferroni on the smallest).

    Keeps the calibration of the combined score: the chance that *any* of m components
    of a healthy device reaches p is at most m * p. NaN components are ignored.
    """
    p = np.asarray(p, dtype=np.float64)
    m = np.sum(np.isfinite(p), axis=axis)
    with np.errstate(invalid="ignore"):
        lo = np.nanmin(np.where(np.isfinite(p), p, np.inf), axis=axis)
    out = np.minimum(1.0, lo * np.maximum(m, 1))
    return np.where(m > 0, out, np.nan)
