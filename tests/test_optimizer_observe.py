"""The optimizer's state from telemetry (twin/optimizer/observe.py) equals the simulator's
own values: setpoints as published (active, ramped), GPU utilization and weather."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from experiments.optimizer.dataset import observe as sim_observe
from ingest.store import Store
from tests.twin_sim import SimHarness
from twin.optimizer.observe import FEATURE_METRICS, current_state, guard_readings
from twin.optimizer.space import FEATURES, SETPOINTS, STATE


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_current_state_matches_the_simulator_and_follows_the_ramp(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    try:
        h = SimHarness(store, crah_duty=False)
        t = h.step(10.0)
        obs = current_state(store.cursor(), _at(t), max_age_s=30)
        assert obs.complete and set(obs.values) == set(FEATURES) == set(FEATURE_METRICS)
        truth = sim_observe(h.sim)
        for k in STATE:
            tol = 0.011 if k.startswith("gpu_util") else 0.051  # util in whole %, weather 0.1
            assert obs.state[k] == pytest.approx(truth[k], abs=tol), k
        ctl = h.sim.controls
        for k in SETPOINTS:
            assert obs.setpoints[k] == pytest.approx(ctl.get(k, active=True), abs=0.01), k
        # a command ramps: the published (active) setpoint moves towards it at the
        # envelope's rate (chilled water 0.5 K/min), not in one jump
        before = obs.setpoints["chw_supply_setpoint_c"]
        ctl.set("chw_supply_setpoint_c", before + 2.0)
        t = h.step(60.0)
        moved = current_state(store.cursor(), _at(t), 30).setpoints["chw_supply_setpoint_c"]
        assert moved == pytest.approx(before + 0.5, abs=0.01)
        g = guard_readings(store.cursor(), _at(t - 1000))
        assert g.values["gpu_temp_max_c"] == pytest.approx(
            float(np.floor(h.sim.gpu_temp_read_c.max() + 0.5)), abs=1.0
        )
        assert g.values["cdu_dp_min_kpa"] > 0
        # nothing fresh: everything missing, nothing made up
        late = current_state(store.cursor(), _at(t + 3_600_000), 30)
        assert late.values == {} and set(late.missing) == set(FEATURES)
    finally:
        store.close()
