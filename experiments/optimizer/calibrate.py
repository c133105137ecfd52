"""Calibration of predicted savings (issue 19 item 5) on a week that is neither training
nor evaluation.

The search picks, among many candidates, the one whose predicted saving looks best, and a
small step's predicted gain is a difference of two nearby predictions: predicted savings
per recommendation come out systematically high (selection on noise, and the state moves
between the decision and the settled window). The models are run closed loop on the
calibration week without calibration; every recommendation's realised saving is measured
after the plant settles against a counterfactual on the previous setpoints
(`outcome.measure_settled`). The shrinkage factor is the median realised/predicted over
the recommendations whose *scaled* prediction is >= `min_predicted_kw` (a fixed point:
which recommendations count depends on the factor), so that on held-out data the median
realised/predicted of recommendations predicted >= 1 kW is 1 if the calibration week is
representative. Too few recommendations >= 1 kW on the calibration week: the floor steps
down FLOOR_LADDER_KW (recorded in the Calibration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from domain.site import Site
from experiments.optimizer.evaluate import evaluate
from twin.optimizer.models import Calibration, PlantModels

MIN_PREDICTED_KW = 1.0
# with fewer than MIN_USED recommendations at MIN_PREDICTED_KW, the floor steps down this
# ladder (the largest floor with enough of them is used, and recorded)
FLOOR_LADDER_KW = (1.0, 0.5, 0.25)
MIN_USED = 5  # fewer recommendations than this at every floor: no calibration, said so
SCALE_BOUNDS = (0.05, 1.5)


class CalibrationError(ValueError):
    """The calibration week gave too few recommendations to fit on."""


def fit_scale(
    pairs: list[tuple[float, float]], min_predicted_kw: float = MIN_PREDICTED_KW
) -> tuple[float, int]:
    """(factor, recommendations used) from (raw predicted, realised) kW pairs."""
    pred = np.array([p for p, _ in pairs], float)
    real = np.array([r for _, r in pairs], float)
    scale = 1.0
    used = np.zeros(len(pred), bool)
    raw = pred >= min_predicted_kw
    seen = (  # what the calibration week showed, for the error message
        f"; unscaled: {int(raw.sum())} of {len(pred)} recommendations predicted >= "
        f"{min_predicted_kw} kW, median realised/predicted "
        + (f"{float(np.median(real[raw] / pred[raw])):.3f}" if raw.any() else "n/a")
    )
    for _ in range(50):
        used = pred * scale >= min_predicted_kw
        if used.sum() < MIN_USED:
            raise CalibrationError(
                f"{int(used.sum())} recommendations predicted >= {min_predicted_kw} kW "
                f"(after scaling by {scale:.3f}) on the calibration week; need >= {MIN_USED}" + seen
            )
        new = float(np.clip(np.median(real[used] / pred[used]), *SCALE_BOUNDS))
        if abs(new - scale) < 1e-9:
            break
        scale = new
    return scale, int(used.sum())


def fit_ladder(pairs: list[tuple[float, float]]) -> tuple[float, int, float]:
    """(factor, used, floor): `fit_scale` at the first floor of FLOOR_LADDER_KW with enough
    recommendations."""
    errors = []
    for floor in FLOOR_LADDER_KW:
        try:
            return (*fit_scale(pairs, floor), floor)
        except CalibrationError as exc:
            errors.append(str(exc))
    raise CalibrationError(" | ".join(errors))


def calibrate(
    models: PlantModels,
    site: Site,
    *,
    start: datetime,
    days: float = 7.0,
    seed: int = 5,
    climate: str = "temperate",
    step_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> PlantModels:
    """A copy of `models` with its Calibration fitted on the closed loop from `start`."""
    raw = dataclasses.replace(models, calibration=None)
    res = evaluate(
        raw,
        site,
        seed=seed,
        start=start,
        days=days,
        climate=climate,
        step_s=step_s,
        optimum=False,
        progress=progress,
    )
    scale, used, floor = fit_ladder(res.per_rec_pairs)
    cal = Calibration(
        savings_scale=scale,
        min_predicted_kw=floor,
        week_start=start.astimezone(UTC).isoformat(),
        days=days,
        seed=seed,
        n_recommendations=len(res.per_rec_pairs),
        n_used=used,
    )
    return dataclasses.replace(models, calibration=cal)
