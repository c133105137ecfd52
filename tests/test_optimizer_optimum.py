"""The true optimum (issue #19 item 6) and the closed-loop evaluation's determinism."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.optimizer.evaluate import evaluate
from experiments.optimizer.optimum import REFINE_FRACTIONS, TrueOptimum
from experiments.optimizer.plant_control import read_setpoints
from simulator.model import SiteSimulator
from tests.optimizer_fixtures import START, small_site, trained
from twin.optimizer.search import Optimizer
from twin.optimizer.space import SETPOINTS, STATE, Constraints

CONTROL_S, STEP_S = 900.0, 120.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    m, _ = trained(tmp_path_factory.mktemp("optimum") / "history.duckdb")
    return m


def _sim(hour: int) -> SiteSimulator:
    # night on 3 July: inside the weather the 40-hour training run saw
    sim = SiteSimulator(
        small_site(),
        seed=11,
        start_time_s=START.replace(day=3, hour=hour).timestamp(),
        horizon_s=3 * 3600.0,
    )
    for _ in range(5):
        sim.step(STEP_S)
    return sim


def test_grid_covers_the_reachable_box_and_keeps_the_coil_rule():
    c = Constraints()
    opt = TrueOptimum(c)
    cur = read_setpoints(_sim(1).controls)
    grid = opt.grid(cur)
    lo, hi = c.box(cur)
    assert (grid >= lo - 1e-9).all() and (grid <= hi + 1e-9).all()
    assert (grid[:, 4] >= grid[:, 0] + c.coil_approach_k - 1e-9).all()
    assert set(grid[:, 5]) == {0.0, 1.0}
    for i in range(5):  # both faces of the box on every continuous setpoint
        assert np.isclose(grid[:, i].min(), lo[i]) and np.isclose(grid[:, i].max(), hi[i])
    assert any(np.allclose(g, cur) for g in grid)  # holding still is a candidate


def test_no_neighbourhood_search_improves_the_optimum_and_the_optimizer_never_beats_it(models):
    c = Constraints()
    for hour in (1, 4):
        sim = _sim(hour)
        ref = TrueOptimum(c)
        obs_state = {
            "gpu_util_mean": float(sim.gpu.util.mean()),
            "gpu_util_p95": float(np.percentile(sim.gpu.util, 95)),
            "outdoor_drybulb_c": sim.plant.outdoor_drybulb_c,
            "outdoor_wetbulb_c": sim.plant.outdoor_wetbulb_c,
        }
        cur = read_setpoints(sim.controls)
        dec = Optimizer(models, c, seed=hour).recommend(
            {n: obs_state[n] for n in STATE}, dict(zip(SETPOINTS, cur, strict=True))
        )
        ml_sp = (
            cur if dec.recommended is None else np.array([dec.recommended[n] for n in SETPOINTS])
        )
        best = ref.choose(sim, CONTROL_S, STEP_S, extra=[ml_sp])
        assert best.feasible
        # the ML optimizer's choice, run on the same true model from the same state
        ml = ref.run(sim, ml_sp, CONTROL_S, STEP_S)
        assert not (ml.feasible and ml.facility_kw < best.facility_kw - 1e-9)
        # a fresh neighbourhood search around the optimum finds nothing better
        for fraction in REFINE_FRACTIONS:
            for cand in ref.neighbours(best.setpoints, cur, fraction):
                t = ref.run(sim, cand, CONTROL_S, STEP_S)
                assert not (t.feasible and t.facility_kw < best.facility_kw - 1e-9), (
                    f"neighbour {cand} beats the optimum: {t.facility_kw} < {best.facility_kw}"
                )
        # and it beats holding the current setpoints, which the grid holds
        hold = ref.run(sim, cur, CONTROL_S, STEP_S)
        assert not hold.feasible or best.facility_kw <= hold.facility_kw + 1e-9


@pytest.mark.slow
def test_small_evaluation_with_the_optimum_is_deterministic(models):
    def once() -> dict:
        res = evaluate(
            models,
            small_site(),
            seed=11,
            start=START.replace(day=3, hour=0),
            days=0.5 / 24,
            step_s=STEP_S,
            optimum=True,
        )
        s = res.summary()
        s.pop("wall_s")
        return s

    a, b = once(), once()
    assert a == b
    assert a["decisions"] == 2 and a["optimum_trials"] > 2 * 100
    assert a["optimum"]["coolant_violation_steps"] == 0
    assert a["optimum"]["gpu_violation_steps"] == 0
    # the optimum never does worse than holding the fixed setpoints
    assert a["baseline"]["facility_kwh"] - a["optimum"]["facility_kwh"] >= -1e-6


def _summary(**kw) -> dict:
    s = {
        "cooling_savings_pct": 40.0,
        "ml": {"gpu_violation_steps": 0, "coolant_violation_steps": 0},
        "fraction_of_optimum_facility_savings": 0.95,
        "median_realised_over_predicted_ge_1kw": 1.0,
    }
    s.update(kw)
    return s


def test_acceptance_targets_guard_each_figure():
    from dctwin.cli.optimize import acceptance

    assert all(ok for _, ok in acceptance(_summary()))
    for bad in (
        {"cooling_savings_pct": 24.9},
        {"ml": {"gpu_violation_steps": 1, "coolant_violation_steps": 0}},
        {"ml": {"gpu_violation_steps": 0, "coolant_violation_steps": 2}},
        {"fraction_of_optimum_facility_savings": 0.89},
        {"fraction_of_optimum_facility_savings": 1.01},  # beating it: not an optimum
        {"median_realised_over_predicted_ge_1kw": 0.79},
        {"median_realised_over_predicted_ge_1kw": 1.21},
        {"median_realised_over_predicted_ge_1kw": None},
    ):
        assert sum(not ok for _, ok in acceptance(_summary(**bad))) == 1, bad
    # no optimum run: both of its lines fail, the others stand
    fails = [
        n for n, ok in acceptance(_summary(fraction_of_optimum_facility_savings=None)) if not ok
    ]
    assert len(fails) == 2 and all("optimum" in n for n in fails)
