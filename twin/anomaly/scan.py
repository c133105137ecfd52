"""Segmented first-order linear recurrences, vectorized over time and over series.

Every statistic the streaming detector keeps (exponentially weighted sums of weights,
values, squared residuals, exceedances) is a recurrence ``y[i] = d[i] * y[i-1] + u[i]``.
Many series are laid end to end in one 1-D array; ``d = 0`` at the first point of a
series cuts it off from the one before, so one call covers one long series, many short
ones, or ragged ones alike.

A Python loop over every point would manage ~10^5 points/s. Instead the array is cut
into chunks of ``width`` points; the loop runs over the positions within a chunk, each
step a numpy op across all chunks at once, and a second loop over the chunk boundaries
carries the state forward (the recurrence is linear, so a chunk's true output is its zero-start
output plus the running product of ``d`` times the state it really started from).
About 2*sqrt(n) numpy calls for n points: tens of millions of points per second.
"""

from __future__ import annotations

import math

import numpy as np

MIN_CHUNK = 64


def ew_scan(u: np.ndarray, d: np.ndarray, y0: np.ndarray | None = None) -> np.ndarray:
    """Solve ``y[:, i] = d[i] * y[:, i-1] + u[:, i]`` with ``y[:, -1] = y0`` (default 0).

    ``u`` is (k, n): k channels sharing the decay ``d`` (n,). Returns (k, n) float64.
    """
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    d = np.asarray(d, dtype=np.float64)
    k, n = u.shape
    if d.shape != (n,):
        raise ValueError(f"d has shape {d.shape}, expected ({n},)")
    if n == 0:
        return np.empty((k, 0))
    start = np.zeros(k) if y0 is None else np.asarray(y0, dtype=np.float64).reshape(k)
    width = max(MIN_CHUNK, int(math.sqrt(n)))
    if n <= width:  # one chunk: a plain loop over time, vectorized over channels
        y = np.empty((k, n))
        acc = start.copy()
        for i in range(n):
            acc = d[i] * acc + u[:, i]
            y[:, i] = acc
        return y
    n_chunks = -(-n // width)
    pad = n_chunks * width - n
    # positions-major layout so that each loop step touches contiguous memory
    dp = np.concatenate([d, np.ones(pad)]).reshape(n_chunks, width).T.copy()
    up = np.concatenate([u, np.zeros((k, pad))], axis=1).reshape(k, n_chunks, width)
    up = np.ascontiguousarray(up.transpose(2, 0, 1))  # (width, k, n_chunks)
    y = np.empty_like(up)
    p = np.empty_like(dp)
    acc = np.zeros((k, n_chunks))
    prod = np.ones(n_chunks)
    for j in range(width):
        acc *= dp[j]
        acc += up[j]
        y[j] = acc
        prod *= dp[j]
        p[j] = prod
    # state entering each chunk: a short sequential scan over chunk ends
    carry = np.empty((k, n_chunks))
    c = start
    last_y, last_p = y[width - 1], p[width - 1]
    for i in range(n_chunks):
        carry[:, i] = c
        c = last_y[:, i] + last_p[i] * c
    y += p[:, None, :] * carry[None, :, :]
    return y.transpose(1, 2, 0).reshape(k, n_chunks * width)[:, :n]
