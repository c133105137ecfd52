"""Batched scoring (issue 24, memory): `score_points_batched` is `score_points` with the
peak memory of a batch; series are independent, so both give the same scores and states
for any batch size (to rounding: the scan's chunking follows each call's length)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.anomaly.streaming import DetectorState, score_points, score_points_batched


def _series(seed: int, n_series: int, max_len: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n_series)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n = int(lengths.sum())
    t = np.concatenate([np.cumsum(rng.exponential(10, k)) for k in lengths])
    x = rng.normal(size=n) * np.repeat(rng.uniform(0.1, 100, n_series), lengths)
    x[rng.random(n) < 0.05] = 3.0  # repeats (the stuck-value path)
    return t, x, starts


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_series=st.integers(1, 60),
    max_len=st.integers(1, 400),
    batch=st.integers(1, 5_000),
    carried=st.booleans(),
)
def test_batched_scoring_equals_one_call(seed, n_series, max_len, batch, carried):
    t, x, starts = _series(seed, n_series, max_len)
    state = None
    if carried:  # states carried from an earlier call, as the live path has them
        _, state = score_points(t - 1e5, x, starts)
    whole, end = score_points(t, x, starts, state=state)
    got, got_end = score_points_batched(t, x, starts, state=state, batch_points=batch)
    for name in ("score", "p", "z", "p_dev", "p_flat", "baseline"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(whole, name), rtol=1e-9, atol=1e-12, equal_nan=True
        )
    for name in DetectorState.__dataclass_fields__:
        np.testing.assert_allclose(
            getattr(got_end, name), getattr(end, name), rtol=1e-9, atol=1e-12, equal_nan=True
        )


def test_batches_split_between_series_and_keep_their_order():
    t, x, starts = _series(7, 50, 300)
    whole, _ = score_points(t, x, starts)
    got, _ = score_points_batched(t, x, starts, batch_points=500)
    assert len(got.score) == len(x)
    # a batch much smaller than the input still scores every point in place
    np.testing.assert_allclose(got.z, whole.z, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isfinite(got.score).sum() == np.isfinite(whole.score).sum() > 0
