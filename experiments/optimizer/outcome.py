"""Measured outcome of an accepted recommendation: realised savings once the plant settles.

The models predict settled power for commanded setpoints. The 15 minutes right after a
change include the ramps and the plant's lags (setpoints ramp, the chilled-water and loop
temperatures follow with ~5-minute lags), so an immediate window understates what the
change delivers, and a raw before/after mixes in the change of load and weather. The
outcome is therefore measured over a window that starts SETTLE_S after every setpoint has
finished ramping (the same rule that makes a training row "settled"), and compared against
a counterfactual for the same load and weather, never against the power before the change:

* `measure_settled` (simulator, closed-loop evaluation): two copies of the live state, one
  on the recommended and one on the previous setpoints, run through the same load and
  weather; realised = mean(counterfactual - treatment) over the settled window. This is the
  true realised saving of that recommendation alone.
* `model_counterfactual_savings` (live plant, where no counterfactual exists): the models'
  prediction for the previous setpoints at the window's measured load and weather, minus
  the metered facility power over the window. Its error is the models' error at the new
  operating point, which `measure_settled` reports next to the true figure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

from experiments.optimizer.dataset import SETTLE_S, observe
from experiments.optimizer.plant_control import apply_setpoints
from simulator.model import SiteSimulator
from twin.optimizer.models import PlantModels
from twin.optimizer.space import SETPOINTS, STATE

OUTCOME_WINDOW_S = 600.0  # measured after settling
MAX_RAMP_WAIT_S = 3600.0  # a ramp that has not ended by then: measure anyway (noted)


@dataclass(frozen=True)
class Outcome:
    realised_kw: float  # true: counterfactual - treatment, mean over the settled window
    model_counterfactual_kw: float  # live method: models' adjusted counterfactual - metered
    predicted_at_window_kw: float  # the models' saving re-predicted at the window's state
    window_start_s: float  # after the change
    window_s: float
    ramp_end_s: float  # when every setpoint of both copies had reached its command
    first_interval_kw: float  # counterfactual - treatment over the first `interval_s`
    settled: bool  # False: a ramp outlasted MAX_RAMP_WAIT_S

    def note(self) -> str:
        return (
            f"settled window {self.window_start_s:.0f}-"
            f"{self.window_start_s + self.window_s:.0f} s after the change (ramps ended "
            f"at {self.ramp_end_s:.0f} s, +{SETTLE_S:.0f} s settling), against a "
            f"counterfactual on the previous setpoints under the same load and weather; "
            f"models' saving at the window's state {self.predicted_at_window_kw:.3f} kW; "
            f"live estimate (models' counterfactual - metered) "
            f"{self.model_counterfactual_kw:.3f} kW"
            + ("" if self.settled else "; a ramp had not ended, not settled")
        )


def _ramping(sim: SiteSimulator) -> bool:
    c = sim.controls
    return any(not np.allclose(c.active[n], c.commanded[n]) for n in SETPOINTS)


def model_counterfactual_savings(
    models: PlantModels,
    previous_setpoints: np.ndarray,
    window_states: np.ndarray,
    measured_facility_kw: np.ndarray,
    before_states: np.ndarray | None = None,
    before_facility_kw: np.ndarray | None = None,
) -> float:
    """Realised saving (kW) of a change, live: the models' facility power for the previous
    setpoints at each measured state of the settled window, minus the metered facility
    power then, averaged over the window. With a metered window from just before the change
    (`before_*`, still on the previous setpoints), the models' error there is removed
    (adjusted baseline): realised = [model(prev, after) - model(prev, before)] -
    [metered after - metered before], i.e. the before/after difference corrected for the
    change in load and weather only. States are rows in STATE order, one per sample."""

    def pred(states: np.ndarray, kw: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        st = np.atleast_2d(np.asarray(states, float))
        kw = np.asarray(kw, float).ravel()
        if len(kw) == 0 or st.shape != (len(kw), len(STATE)):
            raise ValueError(
                f"{what}: need one state row of {len(STATE)} values per metered "
                f"sample (>= 1), got states {st.shape} for {len(kw)} samples"
            )
        sp = np.broadcast_to(np.asarray(previous_setpoints, float), (len(kw), len(SETPOINTS)))
        with threadpool_limits(1):  # a few rows: OpenMP threads only spin on shared cores
            return models.predict(np.hstack([sp, st])).facility_kw, kw

    p_after, kw_after = pred(window_states, measured_facility_kw, "window")
    saving = float((p_after - kw_after).mean())
    if before_states is not None and before_facility_kw is not None:
        p_before, kw_before = pred(before_states, before_facility_kw, "before")
        saving -= float((p_before - kw_before).mean())
    return saving


def measure_settled(
    sim: SiteSimulator,
    recommended: np.ndarray,
    models: PlantModels,
    step_s: float = 60.0,
    settle_s: float = SETTLE_S,
    before: tuple[np.ndarray, np.ndarray] | None = None,
    window_s: float = OUTCOME_WINDOW_S,
    interval_s: float = 900.0,
) -> Outcome:
    """Outcome of commanding `recommended` on `sim` now (sim itself is not advanced):
    a treatment copy on the recommendation and a counterfactual copy on the current
    commanded setpoints run until both have finished ramping, then `settle_s`, then
    `window_s` over which the facility power of the two is compared. For contrast,
    `first_interval_kw` is the same comparison over the first `interval_s` (ramps and lags
    included), what an immediate measurement would report. `before` = (states, facility
    kW) metered just before the change, for the live estimate's adjusted baseline."""
    previous = np.array([sim.controls.get(n) for n in SETPOINTS])
    treat, cf = copy.deepcopy(sim), copy.deepcopy(sim)
    apply_setpoints(treat.controls, recommended)
    diff: list[float] = []  # counterfactual - treatment, every step

    def step() -> None:
        treat.step(step_s)
        cf.step(step_s)
        diff.append(cf.plant.facility_kw - treat.plant.facility_kw)

    t, ramp_end, settled = 0.0, None, True
    while ramp_end is None:
        step()
        t += step_s
        if not (_ramping(treat) or _ramping(cf)):
            ramp_end = t
        elif t >= MAX_RAMP_WAIT_S:
            ramp_end, settled = t, False
    for _ in range(int(round(settle_s / step_s))):
        step()
    start = ramp_end + settle_s
    n = max(1, int(round(window_s / step_s)))
    kw_t, kw_c, states = np.empty(n), np.empty(n), np.empty((n, len(STATE)))
    for i in range(n):
        step()
        kw_t[i], kw_c[i] = treat.plant.facility_kw, cf.plant.facility_kw
        obs = observe(treat)
        states[i] = [obs[k] for k in STATE]
    mean_state = states.mean(0)
    both = np.vstack([np.hstack([previous, mean_state]), np.hstack([recommended, mean_state])])
    with threadpool_limits(1):
        p = models.predict(both).facility_kw
    while len(diff) * step_s < interval_s:
        step()
    first = float(np.mean(diff[: max(1, int(round(interval_s / step_s)))]))
    return Outcome(
        float((kw_c - kw_t).mean()),
        model_counterfactual_savings(models, previous, states, kw_t, *(before or (None, None))),
        float(p[0] - p[1]),
        start,
        n * step_s,
        ramp_end,
        first,
        settled,
    )
