"""Closed-loop evaluation on the simulator: fixed setpoints vs the ML optimizer vs the true
optimum.

Three simulators start from the same seed, time, load and weather. Every `control_s`:
* baseline keeps the site's fixed setpoints;
* ML: the optimizer recommends from the observed state, the recommendation is proposed,
  accepted (who = "closed-loop evaluator") and applied; a copy of the simulator kept on the
  previous setpoints is the counterfactual that measures the realised saving of that
  recommendation after the plant settles (outcome.measure_settled; lifecycle -> measured);
* optimum: the same objective under the same constraints on the simulator's true model
  (experiments/optimizer/optimum.py): exhaustive search on the decision grid of the box
  reachable this step, the ML optimizer's own choice from the optimum's state added, then a
  pattern search no neighbour improves.
Cooling = chillers + towers + plant pumps + CDU pumps + CRAH fans. A GPU violation is a
simulator step where any GPU is above the limit; a coolant violation one where a CDU's
supply is above its ASHRAE class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from domain.site import Site
from experiments.optimizer.dataset import SETTLE_S, observe
from experiments.optimizer.optimum import TrueOptimum
from experiments.optimizer.outcome import OUTCOME_WINDOW_S, measure_settled
from experiments.optimizer.plant_control import apply_setpoints, read_setpoints
from experiments.optimizer.telemetry_view import TelemetryView
from simulator.model import SiteSimulator
from twin.leakage import LeakageError
from twin.optimizer.models import PlantModels
from twin.optimizer.recommendations import RecommendationStore
from twin.optimizer.search import Optimizer
from twin.optimizer.space import SETPOINTS, STATE, Constraints

EVALUATOR = "closed-loop evaluator"


@dataclass
class RunTotals:
    cooling_kwh: float = 0.0
    facility_kwh: float = 0.0
    it_kwh: float = 0.0
    gpu_violation_steps: int = 0
    gpu_temp_max_c: float = -np.inf
    coolant_violation_steps: int = 0  # a CDU supply above its ASHRAE class
    cdu_supply_max_c: float = -np.inf

    def add(
        self, sim: SiteSimulator, dt_s: float, limit_c: float, coolant_max_c: float = np.inf
    ) -> None:
        p, h = sim.plant, dt_s / 3600.0
        self.cooling_kwh += (p.plant_kw + p.cdu_pump_kw + p.crah_fan_kw) * h
        self.facility_kwh += p.facility_kw * h
        self.it_kwh += p.it_kw * h
        t = float(sim.gpu.temp_c.max())
        self.gpu_temp_max_c = max(self.gpu_temp_max_c, t)
        self.gpu_violation_steps += int(t > limit_c)
        cdu = float(sim.cdu.supply_c.max()) if len(sim.cdu.supply_c) else -np.inf
        self.cdu_supply_max_c = max(self.cdu_supply_max_c, cdu)
        self.coolant_violation_steps += int(cdu > coolant_max_c)

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
    optimum: RunTotals | None
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
    # (predicted, realised) kW per recommendation, for the median ratio (acceptance)
    per_rec_pairs: list[tuple[float, float]] = field(default_factory=list)
    optimum_trials: int = 0  # simulator copies the optimum ran (its cost)
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
    def optimum_fraction(self) -> float | None:
        """Share of the optimum's cooling savings vs the fixed setpoints."""
        if self.optimum is None:
            return None
        return self.realised_cooling_kwh / (self.baseline.cooling_kwh - self.optimum.cooling_kwh)

    @property
    def optimum_facility_fraction(self) -> float | None:
        """The same on facility energy: the objective both the ML search and the optimum
        minimise (cooling traded against GPU leakage in IT power)."""
        if self.optimum is None:
            return None
        return self.realised_facility_kwh / (self.baseline.facility_kwh - self.optimum.facility_kwh)

    def median_realised_over_predicted(self, min_predicted_kw: float = 1.0) -> float | None:
        """Median realised/predicted saving over recommendations predicted >= the floor."""
        r = [real / pred for pred, real in self.per_rec_pairs if pred >= min_predicted_kw]
        return float(np.median(r)) if r else None

    def summary(self) -> dict:
        skip = ("baseline", "ml", "optimum", "per_rec_pairs")
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        for name in ("baseline", "ml", "optimum"):
            run = getattr(self, name)
            if run is not None:
                out[name] = {**asdict(run), "pue": run.pue}
        out["cooling_savings_pct"] = self.savings_pct(self.ml)
        out["optimum_cooling_savings_pct"] = (
            self.savings_pct(self.optimum) if self.optimum else None
        )
        out["fraction_of_optimum_savings"] = self.optimum_fraction
        out["fraction_of_optimum_facility_savings"] = self.optimum_facility_fraction
        out["per_rec_ge_1kw"] = sum(p >= 1.0 for p, _ in self.per_rec_pairs)
        out["median_realised_over_predicted_ge_1kw"] = self.median_realised_over_predicted()
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
    coolant_max_c: float = np.inf,
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
            totals.add(sim, step_s, limit_c, coolant_max_c)
        if tail is not None and i >= n - n_tail:
            obs = observe(sim)
            states.append([obs[k] for k in STATE])
    if tail is not None:
        tail[:] = [np.array(states), kw[-n_tail:]]
    return float(kw.mean()), tmax


def check_after_training(models: PlantModels, start: datetime, days: float = 0.0) -> None:
    """Refuse to evaluate on or before the history the models learned from (a week inside
    or before the end of the training data would grade the models on what they saw), or on
    days overlapping the week their savings were calibrated on."""
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
    cal = getattr(models, "calibration", None)
    if cal is not None:
        c0 = datetime.fromisoformat(cal.week_start)
        c1 = c0 + timedelta(days=cal.days)
        e0 = start.astimezone(UTC)
        if e0 < c1 and c0 < e0 + timedelta(days=days):
            raise LeakageError(
                f"evaluation {e0:%Y-%m-%d %H:%M} + {days:g} days overlaps the calibration "
                f"week of model {models.version} ({c0:%Y-%m-%d %H:%M} + {cal.days:g} days)"
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
    optimum: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    c = constraints or Constraints()
    check_after_training(models, start, days)
    t0 = start.astimezone(UTC).timestamp()
    horizon = days * 86400.0

    def make() -> SiteSimulator:
        return SiteSimulator(site, seed=seed, start_time_s=t0, climate=climate, horizon_s=horizon)

    base_sim, ml_sim = make(), make()
    or_sim = make() if optimum else None
    baseline_sp = read_setpoints(base_sim.controls)
    opt = Optimizer(models, c, seed=seed)
    # the ML's choice from the optimum's own state joins the optimum's candidates (its own
    # generator, so the ML run's draws do not depend on whether the optimum runs)
    opt_at_optimum = Optimizer(models, c, seed=seed + 1)
    ref = TrueOptimum(c) if optimum else None
    ml_view = TelemetryView(ml_sim)
    or_view = TelemetryView(or_sim) if or_sim is not None else None
    res = EvalResult(
        days,
        start.isoformat(),
        climate,
        seed,
        models.version,
        RunTotals(),
        RunTotals(),
        RunTotals() if optimum else None,
    )
    n_ctrl = int(round(horizon / control_s))
    h = control_s / 3600.0
    wall0 = datetime.now(UTC)
    before: list = []  # the ML plant's metered last minutes before each decision
    settled_before = False  # ... taken a whole interval after the last change
    for k in range(n_ctrl):
        b0 = (res.baseline.facility_kwh, res.baseline.cooling_kwh)
        m0 = (res.ml.facility_kwh, res.ml.cooling_kwh)
        lim, cool_max = c.gpu_temp_limit_c, c.tcs_max_c
        _advance(base_sim, control_s, step_s, res.baseline, lim, coolant_max_c=cool_max)
        # ML loop: observe, recommend, accept, apply; counterfactual on the old setpoints
        # the ML sees the plant's telemetry, as `dctwin serve` does (current_state)
        seen = ml_view.observe(ml_sim)
        dec = opt.recommend(seen.state, seen.setpoints)
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
            res.per_rec_pairs.append((dec.predicted_savings_kw, out.realised_kw))
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
        state = np.array([seen.state[n] for n in STATE])
        now_sp = read_setpoints(ml_sim.controls)
        judged = not models.domain.state_reasons(state)
        if judged:
            p = opt.predict_setpoints(np.vstack([baseline_sp, now_sp]), state)
            res.predicted_savings_kwh += float(p.facility_kw[0] - p.facility_kw[1]) * h
            res.predicted_cooling_savings_kwh += float(p.cooling_kw[0] - p.cooling_kw[1]) * h
            res.predicted_intervals += 1
        _advance(ml_sim, control_s, step_s, res.ml, lim, tail=before, coolant_max_c=cool_max)
        settled_before = dec.recommended is None and k > 0
        if judged:
            res.realised_on_predicted_kwh += (res.baseline.facility_kwh - b0[0]) - (
                res.ml.facility_kwh - m0[0]
            )
            res.realised_cooling_on_predicted_kwh += (res.baseline.cooling_kwh - b0[1]) - (
                res.ml.cooling_kwh - m0[1]
            )
        if ref is not None and or_sim is not None and or_view and res.optimum is not None:
            o_seen = or_view.observe(or_sim)
            o_dec = opt_at_optimum.recommend(o_seen.state, o_seen.setpoints)
            extra = []
            if o_dec.recommended is not None:
                extra.append(np.array([o_dec.recommended[n] for n in SETPOINTS]))
            best = ref.choose(or_sim, control_s, step_s, extra=extra)
            apply_setpoints(or_sim.controls, best.setpoints)
            _advance(or_sim, control_s, step_s, res.optimum, lim, coolant_max_c=cool_max)
            res.optimum_trials = ref.trials
        if progress:
            progress(k + 1, n_ctrl)
    res.wall_s = (datetime.now(UTC) - wall0).total_seconds()
    return res
