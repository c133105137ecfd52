"""Closed-loop evaluation on the simulator: fixed setpoints vs the ML optimizer vs an oracle.

Three simulators start from the same seed, time, load and weather. Every `control_s`:
* baseline keeps the site's fixed setpoints;
* ML: the optimizer recommends from the observed state, the recommendation is proposed,
  accepted (who = "closed-loop evaluator") and applied; a copy of the simulator kept on the
  previous setpoints is the counterfactual that measures the realised saving of that
  recommendation after the plant settles (outcome.measure_settled; lifecycle -> measured);
* oracle: searches the simulator's own true model: it evaluates the current setpoints, a
  +/- one-step move of each setpoint, the economizer toggle and random moves (all inside
  the same envelope, ramp, class and coil limits) on copies of its state over the interval,
  and applies the lowest mean facility power that keeps every GPU under the same cap.
Cooling = chillers + towers + plant pumps + CDU pumps + CRAH fans. A GPU violation is a
simulator step where any GPU is above the limit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from domain.site import Site
from experiments.optimizer.dataset import SETTLE_S, observe
from experiments.optimizer.outcome import OUTCOME_WINDOW_S, measure_settled
from experiments.optimizer.plant_control import apply_setpoints, read_setpoints
from simulator.model import SiteSimulator
from twin.leakage import LeakageError
from twin.optimizer.models import PlantModels
from twin.optimizer.recommendations import RecommendationStore
from twin.optimizer.search import CHW, CRAH, ECON, Optimizer
from twin.optimizer.space import (
    N_SP,
    SETPOINTS,
    STATE,
    Constraints,
)

EVALUATOR = "closed-loop evaluator"


@dataclass
class RunTotals:
    cooling_kwh: float = 0.0
    facility_kwh: float = 0.0
    it_kwh: float = 0.0
    gpu_violation_steps: int = 0
    gpu_temp_max_c: float = -np.inf

    def add(self, sim: SiteSimulator, dt_s: float, limit_c: float) -> None:
        p, h = sim.plant, dt_s / 3600.0
        self.cooling_kwh += (p.plant_kw + p.cdu_pump_kw + p.crah_fan_kw) * h
        self.facility_kwh += p.facility_kw * h
        self.it_kwh += p.it_kw * h
        t = float(sim.gpu.temp_c.max())
        self.gpu_temp_max_c = max(self.gpu_temp_max_c, t)
        self.gpu_violation_steps += int(t > limit_c)

    @property
    def pue(self) -> float:
        return self.facility_kwh / self.it_kwh if self.it_kwh else float("nan")


@dataclass
class EvalResult:
    days: float
    start: str
    climate: str
    seed: int
    model_version: str
    baseline: RunTotals
    ml: RunTotals
    oracle: RunTotals | None
    decisions: int = 0
    recommendations: int = 0
    no_recommendation: dict[str, int] = field(default_factory=dict)
    predicted_savings_kwh: float = 0.0  # vs baseline setpoints, facility
    predicted_cooling_savings_kwh: float = 0.0
    # realised savings over the same intervals (those whose state the models could judge)
    realised_on_predicted_kwh: float = 0.0
    realised_cooling_on_predicted_kwh: float = 0.0
    predicted_intervals: int = 0
    # each recommendation vs keeping the previous setpoints (outcome.measure_settled), kW
    # summed over recommendations
    per_rec_predicted_kw: float = 0.0  # at decision time
    per_rec_realised_kw: float = 0.0  # true counterfactual, settled window
    per_rec_predicted_at_window_kw: float = 0.0  # models, at the window's load and weather
    # live method (models' adjusted counterfactual - metered), where the window before the
    # change was settled (no change in the previous interval); true figure for the same ones
    per_rec_live_n: int = 0
    per_rec_live_estimate_kw: float = 0.0
    per_rec_live_true_kw: float = 0.0
    per_rec_first_interval_kw: float = 0.0  # true counterfactual, first interval (ramps)
    per_rec_unsettled: int = 0  # a ramp outlasted the wait
    wall_s: float = 0.0

    def savings_pct(self, run: RunTotals) -> float:
        return 100.0 * (1.0 - run.cooling_kwh / self.baseline.cooling_kwh)

    @property
    def realised_cooling_kwh(self) -> float:
        return self.baseline.cooling_kwh - self.ml.cooling_kwh

    @property
    def realised_facility_kwh(self) -> float:
        return self.baseline.facility_kwh - self.ml.facility_kwh

    @property
    def oracle_fraction(self) -> float | None:
        if self.oracle is None:
            return None
        return self.realised_cooling_kwh / (self.baseline.cooling_kwh - self.oracle.cooling_kwh)

    @property
    def oracle_facility_fraction(self) -> float | None:
        """The same on facility energy: the objective both the ML search and the oracle
        minimise (cooling traded against GPU leakage in IT power)."""
        if self.oracle is None:
            return None
        return self.realised_facility_kwh / (self.baseline.facility_kwh - self.oracle.facility_kwh)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("baseline", "ml", "oracle")}
        for name in ("baseline", "ml", "oracle"):
            run = getattr(self, name)
            if run is not None:
                out[name] = {**asdict(run), "pue": run.pue}
        out["cooling_savings_pct"] = self.savings_pct(self.ml)
        out["oracle_cooling_savings_pct"] = self.savings_pct(self.oracle) if self.oracle else None
        out["fraction_of_oracle_savings"] = self.oracle_fraction
        out["fraction_of_oracle_facility_savings"] = self.oracle_facility_fraction
        out["realised_cooling_savings_kwh"] = self.realised_cooling_kwh
        out["realised_facility_savings_kwh"] = self.realised_facility_kwh
        out["predicted_over_realised_facility"] = (
            self.predicted_savings_kwh / self.realised_on_predicted_kwh
            if self.realised_on_predicted_kwh
            else None
        )
        out["settle_s"], out["window_s"] = SETTLE_S, OUTCOME_WINDOW_S
        out["per_rec_predicted_over_realised"] = (
            self.per_rec_predicted_kw / self.per_rec_realised_kw
            if self.per_rec_realised_kw
            else None
        )
        out["predicted_over_realised_cooling"] = (
            self.predicted_cooling_savings_kwh / self.realised_cooling_on_predicted_kwh
            if self.realised_cooling_on_predicted_kwh
            else None
        )
        return out


def _advance(
    sim: SiteSimulator,
    seconds: float,
    step_s: float,
    totals: RunTotals | None,
    limit_c: float,
    tail: list | None = None,
) -> tuple[float, float]:
    """Step `seconds`; returns (mean facility kW, max GPU temp) over the steps. `tail`
    (a list) receives (states, facility kW) of the last SETTLE_S, as metered."""
    n = max(1, int(round(seconds / step_s)))
    n_tail = max(1, min(n, int(round(SETTLE_S / step_s))))
    kw = np.empty(n)
    states = []
    tmax = -np.inf
    for i in range(n):
        sim.step(step_s)
        kw[i] = sim.plant.facility_kw
        tmax = max(tmax, float(sim.gpu.temp_c.max()))
        if totals is not None:
            totals.add(sim, step_s, limit_c)
        if tail is not None and i >= n - n_tail:
            obs = observe(sim)
            states.append([obs[k] for k in STATE])
    if tail is not None:
        tail[:] = [np.array(states), kw[-n_tail:]]
    return float(kw.mean()), tmax


class Oracle:
    """Greedy search over the simulator's true model (copies of the live state)."""

    def __init__(
        self,
        c: Constraints,
        seed: int,
        n_random: int = 12,
        step_s: float = 300.0,
        n_verify: int = 4,
    ) -> None:
        self.c, self.n_random, self.step_s, self.n_verify = c, n_random, step_s, n_verify
        self.rng = np.random.default_rng([seed, 0x0AC])

    def candidates(self, cur: np.ndarray) -> np.ndarray:
        lo, hi = self.c.box(cur)
        step = np.array([self.c.max_step[n] for n in SETPOINTS])
        out = [cur.copy()]
        for i in range(ECON):
            for sign in (-1.0, 1.0):
                v = cur.copy()
                v[i] = np.clip(cur[i] + sign * step[i], lo[i], hi[i])
                out.append(v)
        v = cur.copy()
        v[ECON] = 1.0 - round(cur[ECON])
        out.append(v)
        rnd = self.rng.uniform(lo, hi, (self.n_random, N_SP))
        rnd[:, ECON] = np.round(rnd[:, ECON])
        out.extend(rnd)
        cand = np.array(out)
        # the same coil rule the optimizer obeys: CRAH supply >= chw supply + approach
        cand[:, CRAH] = np.clip(
            np.maximum(cand[:, CRAH], cand[:, CHW] + self.c.coil_approach_k), lo[CRAH], hi[CRAH]
        )
        keep = cand[:, CRAH] >= cand[:, CHW] + self.c.coil_approach_k - 1e-9
        return np.unique(cand[keep], axis=0)

    def choose(self, sim: SiteSimulator, control_s: float, run_step_s: float) -> np.ndarray:
        """Screen every candidate at the coarse step, then check the best ones, in order
        of power, at the run's own step (a coarse step misses short load peaks): the first
        that keeps every GPU under the cap and the loop in class is applied."""
        cur = read_setpoints(sim.controls)
        screened = []
        for cand in self.candidates(cur):
            kw, tmax, cdu_ok = self._try(sim, cand, control_s, self.step_s)
            if tmax <= self.c.gpu_temp_cap_c and cdu_ok:
                screened.append((kw, cand))
        screened.sort(key=lambda kc: kc[0])
        safest, safest_t = cur, np.inf
        for _, cand in screened[: self.n_verify]:
            _, tmax, cdu_ok = self._try(sim, cand, control_s, run_step_s)
            if tmax <= self.c.gpu_temp_cap_c and cdu_ok:
                return cand
            if tmax < safest_t:
                safest, safest_t = cand, tmax
        return safest

    def _try(
        self, sim: SiteSimulator, cand: np.ndarray, control_s: float, step_s: float
    ) -> tuple[float, float, bool]:
        trial = copy.deepcopy(sim)
        apply_setpoints(trial.controls, cand)
        kw, tmax = _advance(trial, control_s, step_s, None, 0.0)
        return kw, tmax, float(trial.cdu.supply_c.max()) <= self.c.tcs_max_c


def check_after_training(models: PlantModels, start: datetime) -> None:
    """Refuse to evaluate on or before the history the models learned from: a week inside
    (or before the end of) the training data would grade the models on what they saw."""
    if models.data_window is None:
        raise LeakageError(
            f"model {models.version} records no training data window; "
            "retrain it with `dctwin optimize train`"
        )
    end = datetime.fromisoformat(models.data_window[1])
    if start.astimezone(UTC) <= end:
        raise LeakageError(
            f"evaluation starts {start.astimezone(UTC):%Y-%m-%d %H:%M} UTC, not after the end "
            f"of model {models.version}'s training history ({end:%Y-%m-%d %H:%M} UTC): "
            "evaluate on a later period or train on earlier data"
        )


def evaluate(
    models: PlantModels,
    site: Site,
    *,
    seed: int = 7,
    start: datetime,
    days: float = 7.0,
    climate: str = "temperate",
    control_s: float = 900.0,
    step_s: float = 60.0,
    constraints: Constraints | None = None,
    store: RecommendationStore | None = None,
    oracle: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    c = constraints or Constraints()
    check_after_training(models, start)
    t0 = start.astimezone(UTC).timestamp()
    horizon = days * 86400.0

    def make() -> SiteSimulator:
        return SiteSimulator(site, seed=seed, start_time_s=t0, climate=climate, horizon_s=horizon)

    base_sim, ml_sim = make(), make()
    or_sim = make() if oracle else None
    baseline_sp = read_setpoints(base_sim.controls)
    opt = Optimizer(models, c, seed=seed)
    orc = Oracle(c, seed) if oracle else None
    res = EvalResult(
        days,
        start.isoformat(),
        climate,
        seed,
        models.version,
        RunTotals(),
        RunTotals(),
        RunTotals() if oracle else None,
    )
    n_ctrl = int(round(horizon / control_s))
    h = control_s / 3600.0
    wall0 = datetime.now(UTC)
    before: list = []  # the ML plant's metered last minutes before each decision
    settled_before = False  # ... taken a whole interval after the last change
    for k in range(n_ctrl):
        b0 = (res.baseline.facility_kwh, res.baseline.cooling_kwh)
        m0 = (res.ml.facility_kwh, res.ml.cooling_kwh)
        _advance(base_sim, control_s, step_s, res.baseline, c.gpu_temp_limit_c)
        # ML loop: observe, recommend, accept, apply; counterfactual on the old setpoints
        obs = observe(ml_sim)
        cur = read_setpoints(ml_sim.controls)
        dec = opt.recommend({n: obs[n] for n in STATE}, dict(zip(SETPOINTS, cur, strict=True)))
        res.decisions += 1
        rec_id = None
        if dec.recommended is not None:
            res.recommendations += 1
            rec_sp = np.array([dec.recommended[n] for n in SETPOINTS])
            at = datetime.fromtimestamp(ml_sim.time_s, UTC)
            if store is not None:
                rec_id = store.propose(dec, site.site.id, at)
                store.accept(rec_id, EVALUATOR, at=at)
            # its own outcome, after the plant settles, vs the previous setpoints
            out = measure_settled(
                ml_sim,
                rec_sp,
                models,
                step_s,
                interval_s=control_s,
                before=tuple(before) if settled_before else None,
            )
            assert dec.predicted_savings_kw is not None  # set with every recommendation
            res.per_rec_predicted_kw += dec.predicted_savings_kw
            res.per_rec_realised_kw += out.realised_kw
            res.per_rec_predicted_at_window_kw += out.predicted_at_window_kw
            if settled_before:  # the live method needs a settled window before the change
                res.per_rec_live_n += 1
                res.per_rec_live_estimate_kw += out.model_counterfactual_kw
                res.per_rec_live_true_kw += out.realised_kw
            res.per_rec_first_interval_kw += out.first_interval_kw
            res.per_rec_unsettled += int(not out.settled)
            if store is not None and rec_id is not None:
                end = at + timedelta(seconds=out.window_start_s + out.window_s)
                store.record_outcome(rec_id, out.realised_kw, at=end, note=out.note())
            apply_setpoints(ml_sim.controls, rec_sp)
        else:
            key = dec.category
            res.no_recommendation[key] = res.no_recommendation.get(key, 0) + 1
        # predicted saving of what is now commanded against the fixed baseline setpoints
        state = np.array([obs[n] for n in STATE])
        now_sp = read_setpoints(ml_sim.controls)
        judged = not models.domain.state_reasons(state)
        if judged:
            p = opt.predict_setpoints(np.vstack([baseline_sp, now_sp]), state)
            res.predicted_savings_kwh += float(p.facility_kw[0] - p.facility_kw[1]) * h
            res.predicted_cooling_savings_kwh += float(p.cooling_kw[0] - p.cooling_kw[1]) * h
            res.predicted_intervals += 1
        _advance(ml_sim, control_s, step_s, res.ml, c.gpu_temp_limit_c, tail=before)
        settled_before = dec.recommended is None and k > 0
        if judged:
            res.realised_on_predicted_kwh += (res.baseline.facility_kwh - b0[0]) - (
                res.ml.facility_kwh - m0[0]
            )
            res.realised_cooling_on_predicted_kwh += (res.baseline.cooling_kwh - b0[1]) - (
                res.ml.cooling_kwh - m0[1]
            )
        if orc is not None and or_sim is not None:
            apply_setpoints(or_sim.controls, orc.choose(or_sim, control_s, step_s))
            _advance(or_sim, control_s, step_s, res.oracle, c.gpu_temp_limit_c)
        if progress:
            progress(k + 1, n_ctrl)
    res.wall_s = (datetime.now(UTC) - wall0).total_seconds()
    return res
