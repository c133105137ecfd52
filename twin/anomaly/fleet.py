"""Fleet scorer: calibrated anomaly scores for every device, every interval, causally.

Per device and interval ("bucket"), each component below yields a tail probability p;
the device's p is the smallest, Bonferroni-corrected for how many there were, and its
score ``-log10(p)/8`` (calibration.py). Components:

- every metric: stuck values (streaming detector, p_flat); metrics whose level is not
  set by the workload (controlled temperatures, voltages, levels, error-counter rates)
  also get the streaming deviation p_dev;
- every physics residual (features.py / residuals.py): the frozen-reference p of its
  smoothed value (slow drifts) and the streaming p_dev of its raw value (sudden breaks);
- the class's multivariate forest (multivariate.py);
- missing data: k empty intervals in a row for a device that normally reports each
  interval has probability q**k, q its historical rate of empty intervals.

`update` scores buckets after everything scored so far; `fit` (re)trains the models on
history that ends before the next bucket to score — the models refuse anything else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import polars as pl

from domain.contract import GPU_CLOCK_EVENT_REASONS
from twin.anomaly.bank import SeriesBank
from twin.anomaly.calibration import combine_p, p_to_score
from twin.anomaly.features import RESIDUALS, class_frames, residuals_for
from twin.anomaly.frames import RESET_SUFFIX
from twin.anomaly.multivariate import MultivariateModel, fit_multivariate
from twin.anomaly.residuals import (
    ResidualModel,
    SmootherState,
    apply_residual,
    fit_residual,
    reference_p,
)
from twin.anomaly.streaming import DetectorParams

# Metrics whose level the workload does not set: a sudden change is news by itself.
ADAPTIVE_METRICS = frozenset(
    {
        "supply_temp_c",
        "supply_air_temp_c",
        "chw_supply_temp_c",
        "leak_detected",
        "reservoir_level_pct",
        "filter_dp_kpa",
        "supply_pressure_kpa",
        "return_pressure_kpa",
        "input_voltage_v",
        "output_voltage_v",
        "voltage_v",
        "frequency_hz",
        "ecc_corrected_total:rate",
        "ecc_uncorrected_total:rate",
        "pcie_replay_total:rate",
        "nvlink_errors_total:rate",
        "remapped_rows_correctable:rate",
        "remapped_rows_uncorrectable:rate",
        "xid_total:rate",
    }
)
# Discrete states (a bitmask, a flag): holding one is not a frozen sensor
CATEGORICAL_METRICS = frozenset(
    {
        "throttle_reasons",
        "leak_detected",
        # issue 22: NVML at DCGM depth: flags that hold for hours by design
        *(f"clock_event_{r}" for r in GPU_CLOCK_EVENT_REASONS),
        "row_remap_pending",
        "row_remap_failure",
        "mig_mode",
        # issue 20: PSU / cabinet temperatures come in whole degrees (PMBus behind Redfish)
        # and move slowly (tau ~ 2 min): on a quiet rack one holds a value for many
        # readings, which the stuck test scored as a frozen sensor on healthy racks (false
        # incidents). A frozen one still shows in the psu_temp residual once load moves.
        "temp_c",
        # issue 20 part anom2: NVML die / memory temperatures are whole degrees too; an
        # idle or steadily loaded GPU holds one for many readings (a third of the false
        # incidents on a healthy dev day). A frozen one shows in gpu_thermal / gpu_mem_thermal
        # once the power moves.
        "gpu_temp_c",
        "mem_temp_c",
    }
)
RESIDUAL_PARAMS = DetectorParams(abs_floor=1.0)  # residuals arrive in units of their sigma
MISSING_PRIOR = (1.0, 50.0)  # pseudo-counts (empty, full) for a device's empty-bucket rate
PRIME_BUCKETS = 360  # history the streaming states are primed on at each fit
STORM_P, STORM_MIN_DEVICES = 1e-4, 8  # see FleetScorer._less_storm
# a monotonic counter going backwards: a reset (driver reload, meter). Certain, not a
# tail event: strong enough to open an incident in the interval it happens (issue 20 part
# anom2: at 1e-7 it scored ~0.66 after the Bonferroni factor, one interval long, and
# never opened one; driver reloads were found 94 intervals late, by other signs)
COUNTER_RESET_P = 1e-12


@dataclass
class Models:
    residual: dict[str, ResidualModel] = field(default_factory=dict)
    multivariate: dict[str, MultivariateModel] = field(default_factory=dict)
    missing_rate: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"device_id": pl.String, "q": pl.Float64})
    )
    fitted_until: int = -1


class FleetScorer:
    def __init__(
        self,
        devices: pl.DataFrame,
        interval_s: float = 10.0,
        multivariate: bool = True,
        seed: int = 0,
    ) -> None:
        self.devices = devices
        self.interval_s = interval_s
        self.use_multivariate = multivariate
        self.seed = seed
        self.models = Models()
        self.raw = SeriesBank(["device_id", "metric"])
        self.resid = SeriesBank(["device_id", "residual"], RESIDUAL_PARAMS)
        self.smooth = SmootherState()
        self.scored_until = -1  # last bucket scored
        self.missing_run = pl.DataFrame(schema={"device_id": pl.String, "run": pl.Int64})

    # -- training ----------------------------------------------------------------------

    def fit(
        self, history: pl.DataFrame, until_bucket: int, exclude_devices: set[str] | None = None
    ) -> Models:
        """(Re)train on a long grid (frames.grid) of history, buckets <= until_bucket.

        Devices in ``exclude_devices`` (alarming in this history) keep their earlier fits.
        The streaming states are then primed on the end of the history, so scoring starts
        warm and a refit does not show up as a jump in the residuals.
        """
        if until_bucket < self.scored_until:
            raise ValueError(
                f"refit up to bucket {until_bucket} but bucket "
                f"{self.scored_until} is already scored: train on the past only"
            )
        hist = history.filter(pl.col("bucket") <= until_bucket)
        recent = pl.col("bucket") > until_bucket - PRIME_BUCKETS
        frames_all = class_frames(hist, self.devices)
        return self.fit_frames(
            frames_all,
            presence(hist),
            [(hist.filter(recent), {c: f.filter(recent) for c, f in frames_all.items()})],
            until_bucket,
            exclude_devices,
        )

    def fit_frames(
        self,
        frames_all: dict[str, pl.DataFrame],
        present: pl.DataFrame,
        prime: Iterable[tuple[pl.DataFrame, dict[str, pl.DataFrame]]],
        until_bucket: int,
        exclude_devices: set[str] | None = None,
    ) -> Models:
        """`fit` from its parts, which a caller may build piecewise (issue 24: the
        service's fit reads the store in chunks, not as one long grid): the class frames
        the models train on (``frames_all``, buckets <= until_bucket), each device's
        non-empty buckets in the window (`presence`), and the last PRIME_BUCKETS of the
        long grid and of the class frames (the streaming states start from them), in
        pieces in time order (the states carry from one to the next). ``frames_all`` is
        emptied once the models are fitted."""
        if until_bucket < self.scored_until:
            raise ValueError(
                f"refit up to bucket {until_bucket} but bucket "
                f"{self.scored_until} is already scored: train on the past only"
            )
        frames = frames_all
        if exclude_devices:
            out = ~pl.col("device_id").is_in(list(exclude_devices))
            present = present.filter(out)
            frames = {c: f.filter(out) for c, f in frames_all.items()}
        models = Models(fitted_until=until_bucket)
        for cls, frame in frames.items():
            for res in residuals_for(cls, frame):
                m = fit_residual(frame, res)
                if m is not None:
                    models.residual[res.name] = m
        lo = int(cast(int, present["first"].min())) if present.height else until_bucket
        span = until_bucket - lo + 1
        a, b = MISSING_PRIOR
        models.missing_rate = present.with_columns(
            q=((span - pl.col("n")).clip(lower_bound=0) + a) / (span + a + b)
        ).select("device_id", "q")
        self._keep_left_out(models)
        if self.use_multivariate:
            for cls, frame in frames.items():
                feats = self._mv_features(cls, frame, models)
                cols = [c for c in feats.columns if c not in ("device_id", "bucket")]
                mv = fit_multivariate(cls, feats, cols, until_bucket, self.seed)
                if mv is not None:
                    models.multivariate[cls] = mv
                del feats
        self.models = models
        # the training frames go before the priming (issue 24: the fit's peak memory)
        del frames
        frames_all.clear()
        self._prime(prime)
        self.scored_until = max(self.scored_until, until_bucket)
        return models

    def _keep_left_out(self, models: Models) -> None:
        """Devices missing from a refit (left out, or silent) keep their earlier fits."""
        old = self.models
        for name, m in old.residual.items():
            new = models.residual.get(name)
            if new is None:
                models.residual[name] = m
                continue
            keep = m.coef.join(new.coef, on="device_id", how="anti")
            if keep.height:
                new.coef = pl.concat(
                    [new.coef, keep.select(new.coef.columns)], how="vertical_relaxed"
                )
        keep = old.missing_rate.join(models.missing_rate, on="device_id", how="anti")
        models.missing_rate = pl.concat([models.missing_rate, keep])

    def _prime(self, pieces: Iterable[tuple[pl.DataFrame, dict[str, pl.DataFrame]]]) -> None:
        """Run the streaming states over recent history (scores discarded), piece by piece."""
        first = self.scored_until < 0  # first fit: raw series start warm
        # residuals under the new models, from scratch
        self.resid = SeriesBank(["device_id", "residual"], RESIDUAL_PARAMS)
        self.smooth = SmootherState()
        for recent, frames in pieces:
            if first:
                self.raw.score(
                    recent.select("device_id", "metric", "bucket", "t_s", "value").filter(
                        ~pl.col("metric").str.ends_with(RESET_SUFFIX)
                    )
                )
            for cls, frame in frames.items():
                self._residual_components(cls, frame)

    def _mv_features(self, cls: str, frame: pl.DataFrame, models: Models) -> pl.DataFrame:
        base = frame.select("device_id", "bucket")
        cols = {r.target for r in RESIDUALS if r.device_class == cls} & set(frame.columns)
        feats = frame.select("device_id", "bucket", *sorted(cols))
        for r in residuals_for(cls, frame):
            m = models.residual.get(r.name)
            if m is None:
                continue
            c = apply_residual(m, frame).select(
                "device_id", "bucket", pl.col("c").alias(f"c_{r.name}")
            )
            feats = feats.join(c, on=["device_id", "bucket"], how="left")
        return base.join(feats, on=["device_id", "bucket"], how="left")

    # -- scoring -----------------------------------------------------------------------

    def update(self, g: pl.DataFrame, upto_bucket: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Score buckets (scored_until, upto_bucket] of the long grid ``g``.

        ``g`` may include a few earlier buckets as context (lags, counter rates); they are
        not scored again. Returns (device scores per bucket, components per device and
        bucket with their p and metric).
        """
        lo = self.scored_until + 1
        if self.models.fitted_until < 0:
            raise RuntimeError("fit the scorer on history before scoring")
        lo = max(lo, self.models.fitted_until + 1)
        if upto_bucket < lo:
            return _empty_devices(), _empty_components()
        new = g.filter(pl.col("bucket").is_between(lo, upto_bucket))
        comps = [self._raw_components(new)]
        frames = class_frames(g.filter(pl.col("bucket") <= upto_bucket), self.devices)
        for cls, frame in frames.items():
            frame = frame.filter(pl.col("bucket") >= lo)
            comps.append(self._residual_components(cls, frame))
            mv = self.models.multivariate.get(cls)
            if mv is not None and frame.height:
                feats = self._mv_features(cls, frame, self.models)
                comps.append(
                    feats.select("device_id", "bucket").with_columns(
                        component=pl.lit("multivariate"),
                        metric=pl.lit("multivariate"),
                        p=mv.score(feats),
                    )
                )
        comps.append(self._missing_components(new, lo, upto_bucket))
        self.scored_until = upto_bucket
        comp = (
            pl.concat([c for c in comps if c.height], how="vertical_relaxed")
            if any(c.height for c in comps)
            else _empty_components()
        )
        comp = comp.filter(pl.col("p").is_not_null() & pl.col("p").is_not_nan())
        dev = (
            comp.group_by("device_id", "bucket")
            .agg(
                pl.col("p").min().alias("p_min"),
                pl.len().alias("m"),
                pl.col("metric").sort_by("p").first().alias("top_metric"),
                pl.col("component").sort_by("p").first().alias("top_component"),
            )
            .with_columns(p=(pl.col("p_min") * pl.col("m")).clip(upper_bound=1.0))
        )
        dev = (
            self._less_storm(dev)
            .with_columns(
                score=pl.col("p").map_batches(
                    lambda s: pl.Series(p_to_score(s.to_numpy())), return_dtype=pl.Float64
                )
            )
            .drop("p_min")
            .sort("device_id", "bucket")
        )
        return dev, comp

    def _less_storm(self, dev: pl.DataFrame) -> pl.DataFrame:
        """Score devices against their class when most of the class is anomalous at once.

        More than half of a class (of at least STORM_MIN_DEVICES) at p <= STORM_P in one
        interval is a shared cause (a job starting on racks idle all through training, a
        hall losing a CRAH), not that many faults: each device's p is then divided by the
        class median's (what is left is how much it stands out from its class).
        """
        cls = self.devices.select("device_id", "device_class")
        n = cls.group_by("device_class").agg(n_class=pl.len())
        d = dev.join(cls, on="device_id", how="left").join(n, on="device_class", how="left")
        rank = pl.col("p").rank("ordinal").over("device_class", "bucket")
        half = (pl.col("n_class") + 1) // 2
        d = d.with_columns(
            p_med=pl.col("p").filter(rank == half).first().over("device_class", "bucket")
        )
        storm = (
            (pl.col("n_class") >= STORM_MIN_DEVICES)
            & (pl.col("p_med") <= STORM_P)
            & pl.col("p_med").is_not_null()
        )
        return d.with_columns(
            p=pl.when(storm)
            .then((pl.col("p") / pl.col("p_med").clip(lower_bound=1e-300)).clip(upper_bound=1.0))
            .otherwise(pl.col("p"))
        ).select(dev.columns)

    def _raw_components(self, new: pl.DataFrame) -> pl.DataFrame:
        resets = new.filter(pl.col("metric").str.ends_with(RESET_SUFFIX))
        scored = self.raw.score(
            new.filter(~pl.col("metric").str.ends_with(RESET_SUFFIX)).select(
                "device_id", "metric", "bucket", "t_s", "value"
            )
        )
        adaptive = pl.col("metric").is_in(list(ADAPTIVE_METRICS))
        flat = (
            pl.when(pl.col("metric").is_in(list(CATEGORICAL_METRICS)))
            .then(1.0)
            .otherwise(pl.col("p_flat"))
        )
        p = (
            pl.when(adaptive)
            .then(pl.min_horizontal(pl.col("p_dev"), flat) * 2.0)
            .otherwise(flat)
            .clip(upper_bound=1.0)
        )
        base = pl.col("metric").str.replace(r":\w+$", "")
        return pl.concat(
            [
                scored.select("device_id", "bucket", component=pl.col("metric"), metric=base, p=p),
                resets.select(
                    "device_id",
                    "bucket",
                    component=pl.col("metric"),
                    metric=base,
                    p=pl.lit(COUNTER_RESET_P),
                ),
            ]
        )

    def _residual_components(self, cls: str, frame: pl.DataFrame) -> pl.DataFrame:
        parts = []
        for r in residuals_for(cls, frame):
            m = self.models.residual.get(r.name)
            if m is None or frame.height == 0:
                continue
            parts.append(apply_residual(m, frame))
        if not parts:
            return _empty_components()
        pts = pl.concat(parts, how="vertical_relaxed")
        tails = {name: m.tail for name, m in self.models.residual.items()}
        ref = reference_p(tails, pts, self.smooth)
        adapt = self.resid.score(
            ref.with_columns(
                t_s=pl.col("bucket").cast(pl.Float64) * self.interval_s, value=pl.col("c")
            )
        )
        blame = pl.DataFrame(
            {"residual": [r.name for r in RESIDUALS], "metric": [r.blame for r in RESIDUALS]}
        )
        out = adapt.select("device_id", "residual", "bucket", "p_ref", p_dev=pl.col("p_dev")).join(
            blame, on="residual", how="left"
        )
        p = combine_p(np.stack([out["p_ref"].to_numpy(), out["p_dev"].to_numpy()]))
        return out.select(
            "device_id", "bucket", component=pl.col("residual"), metric=pl.col("metric")
        ).with_columns(p=p)

    def _missing_components(self, new: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
        rates = self.models.missing_rate
        if rates.height == 0:
            return _empty_components()
        ids = rates["device_id"].to_list()
        pos = {d: i for i, d in enumerate(ids)}
        nb = hi - lo + 1
        present = np.zeros((len(ids), nb), dtype=bool)
        seen = new.select("device_id", "bucket").unique()
        seen = seen.filter(pl.col("device_id").is_in(ids))
        r = np.array([pos[d] for d in seen["device_id"].to_list()], dtype=np.int64)
        present[r, seen["bucket"].to_numpy() - lo] = True
        carry = rates.select("device_id").join(self.missing_run, on="device_id", how="left")
        run0 = carry["run"].fill_null(0).to_numpy()
        col = np.arange(nb)
        last = np.maximum.accumulate(np.where(present, col, -1), axis=1)
        run = np.where(last >= 0, col - last, col + 1 + run0[:, None])
        q = rates["q"].to_numpy()
        p = np.where(run > 0, q[:, None] ** run, 1.0)
        self.missing_run = pl.DataFrame({"device_id": ids, "run": run[:, -1].astype(np.int64)})
        return pl.DataFrame(
            {
                "device_id": np.repeat(ids, nb),
                "bucket": np.tile(col + lo, len(ids)),
                "component": "no_data",
                "metric": "no_data",
                "p": p.ravel(),
            }
        )


def presence(g: pl.DataFrame) -> pl.DataFrame:
    """device_id, n (its non-empty buckets), first (its first bucket) of a long grid."""
    return g.group_by("device_id").agg(
        n=pl.col("bucket").n_unique().cast(pl.Int64), first=pl.col("bucket").min()
    )


def _empty_components() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "device_id": pl.String,
            "bucket": pl.Int64,
            "component": pl.String,
            "metric": pl.String,
            "p": pl.Float64,
        }
    )


def _empty_devices() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "device_id": pl.String,
            "bucket": pl.Int64,
            "m": pl.UInt32,
            "top_metric": pl.String,
            "top_component": pl.String,
            "p": pl.Float64,
            "score": pl.Float64,
        }
    )
