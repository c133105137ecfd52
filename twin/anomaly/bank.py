"""Detector state for named series, kept across calls (the live, incremental path)."""

from __future__ import annotations

import numpy as np
import polars as pl

from twin.anomaly.streaming import DetectorParams, DetectorState, score_points_batched


class SeriesBank:
    """Streaming detectors for many series identified by key columns.

    ``score(points)`` scores points (key columns, ``t_s``, ``value``) that come after
    everything this bank has seen for their series, and remembers each series' state.
    """

    def __init__(self, key: list[str], params: DetectorParams | None = None) -> None:
        self.key = key
        self.params = params or DetectorParams()
        self.index = pl.DataFrame(schema={**{k: pl.String for k in key}, "_idx": pl.Int64})
        self.state = DetectorState.empty(0)

    def __len__(self) -> int:
        return len(self.state)

    def _indices(self, keys: pl.DataFrame) -> np.ndarray:
        known = keys.join(self.index, on=self.key, how="left", maintain_order="left")
        missing = known.filter(pl.col("_idx").is_null()).select(self.key)
        if missing.height:
            start = len(self.state)
            self.state.extend(missing.height)
            self.index = pl.concat(
                [
                    self.index,
                    missing.with_columns(
                        _idx=pl.int_range(start, start + missing.height, dtype=pl.Int64)
                    ),
                ]
            )
            known = keys.join(self.index, on=self.key, how="left", maintain_order="left")
        return known["_idx"].to_numpy()

    def score(self, points: pl.DataFrame) -> pl.DataFrame:
        """The points sorted by series and time, with p_dev, p_flat, z and score added."""
        pts = points.filter(pl.col("value").is_finite())
        if pts.height == 0:
            return pts.with_columns(
                **{c: pl.lit(None, pl.Float64) for c in ("p_dev", "p_flat", "z", "score")}
            )
        idx = self._indices(pts.select(self.key).unique())
        del idx  # registers new series; the join below maps every point
        # sorting on integer ids is much cheaper than on the string keys
        pts = pts.join(self.index, on=self.key, how="inner").sort("_idx", "t_s")
        ids = pts["_idx"].to_numpy()
        starts = np.flatnonzero(np.diff(ids, prepend=-1) != 0)
        # a batch of series at a time: the fit's priming scores every raw series
        res, new = score_points_batched(
            pts["t_s"].to_numpy(),
            pts["value"].to_numpy(),
            starts,
            self.params,
            self.state.take(ids[starts]),
        )
        self.state.put(ids[starts], new)
        return pts.drop("_idx").with_columns(
            p_dev=res.p_dev, p_flat=res.p_flat, z=res.z, score=res.score
        )
