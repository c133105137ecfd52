"""Held-out failure modes (issue 21): each shows its documented precursor and failure in
the telemetry, deterministically per seed; they stay out of the training machinery; the
held-out report is reproducible.

One 3-h simulation of the dataset's 128-GPU site (2 halls, 4 CDUs, 4 CRAHs) with all
eight modes on distinct devices, 60-s reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

from experiments.failure.dataset import RunSpec, fault_spec, generate, heldout_fault_spec
from experiments.failure.evaluate import load_rows
from experiments.failure.heldout import comparable, heldout_report
from simulator.faults import CATALOG, HELDOUT_CATALOG, parse_faults
from simulator.model import SiteSimulator
from simulator.sitegen import synthetic_site
from tests.simtools import JAN, H, Recorder
from twin.failure.model import FailureModel

SITE = synthetic_site(128, racks_per_row=1, rows_per_hall=2)
NOWHERE = Path("/nonexistent")  # RunSpec.path only names the file
IDS = {c: [d.id for d in SITE.devices() if d.device_class == c] for c in ("gpu", "psu")}
GSP, HBM = IDS["gpu"][5], IDS["gpu"][70]
PSU_FAN, PSU_CAP, PSU_PEER = IDS["psu"][3], IDS["psu"][60], IDS["psu"][4]
BEARING, SEAL, CDU_PEER = "syn/h1/cdu-row1", "syn/h2/cdu-row1", "syn/h1/cdu-row2"
SLIP, WINDING = "syn/h1/crah1", "syn/h2/crah1"
ONSET_H, FAIL_H = 1 / 3, 7 / 3  # onset 20 min, failure 2 h later
SPEC = "; ".join(
    (
        f"gpu_gsp_hang@{GSP}:onset=20m,fail_after=2h,rate=2",
        f"hbm_thermal_degradation@{HBM}:onset=20m,fail_after=2h,severity=2.5",
        f"psu_fan_failure@{PSU_FAN}:onset=20m,fail_after=2h",
        f"psu_capacitor_wear@{PSU_CAP}:onset=20m,fail_after=2h",
        f"pump_bearing_wear@{BEARING}:onset=20m,fail_after=2h",
        f"seal_leak_intermittent@{SEAL}:onset=20m,rate=60,weep=10m,dry=10m",
        f"crah_belt_slip@{SLIP}:onset=20m,fail_after=2h",
        f"crah_winding_fault@{WINDING}:onset=20m,fail_after=2h",
    )
)


def simulate(seed: int = 5) -> tuple[SiteSimulator, Recorder]:
    sim = SiteSimulator(SITE, seed=seed, start_time_s=JAN, faults=SPEC, constant_util=0.8)
    return sim, Recorder(sim).run(3.0, 60.0)


@pytest.fixture(scope="module")
def run() -> tuple[SiteSimulator, Recorder]:
    return simulate()


def window(rec: Recorder, dev: str, metric: str, a_h: float, b_h: float) -> np.ndarray:
    t = rec.t_h()
    return rec.series(dev, metric)[(t >= a_h) & (t < b_h)]


BEFORE, LATE = (0.0, ONSET_H), (FAIL_H - 0.3, FAIL_H - 0.01)  # healthy; end of the precursor


def rise(rec: Recorder, dev: str, metric: str) -> float:
    """Mean at the end of the precursor minus mean before the onset."""
    return float(
        np.mean(window(rec, dev, metric, *LATE)) - np.mean(window(rec, dev, metric, *BEFORE))
    )


def loss(rec: Recorder, dev: str, span: tuple[float, float]) -> float:
    """A PSU's mean conversion loss (input - output) over a span, W."""
    return float(
        np.mean(
            window(rec, dev, "input_power_w", *span) - window(rec, dev, "output_power_w", *span)
        )
    )


def failure_events(sim: SiteSimulator, rec: Recorder, dev: str, kind: str) -> list:
    label = next(lab for lab in sim.labels() if lab["device_id"] == dev)
    out = [e for e in rec.events_of(dev) if e.kind == kind and e.time_ms == label["failure_ms"]]
    assert out, f"{dev}: no {kind} event at its label's failure time"
    return out


def test_heldout_modes_are_new_two_per_class_and_never_drawn_by_random():
    per_class: dict[str, int] = {}
    for name, kind in HELDOUT_CATALOG.items():
        assert name not in CATALOG and kind.fails
        per_class[kind.device_class] = per_class.get(kind.device_class, 0) + 1
    assert all(per_class.get(c, 0) >= 2 for c in ("gpu", "psu", "cdu", "crah"))
    drawn = parse_faults("random:n=60", SiteSimulator(SITE, seed=1, warmup_s=0).layout, JAN, 1)
    assert not {f.type for f in drawn.faults} & set(HELDOUT_CATALOG)
    # training runs never hold them; held-out runs hold them and no standard failure
    standard = fault_spec(7, 24.0)
    assert not any(m in standard for m in HELDOUT_CATALOG)
    held = heldout_fault_spec(7, 24.0)
    assert all(f"{m}@" in held for m in HELDOUT_CATALOG)
    assert not any(f"{m}@" in held for m, k in CATALOG.items() if k.fails)
    held_path = RunSpec(7, 24, 30, 128, "heldout").path(NOWHERE)
    assert held_path != RunSpec(7, 24, 30, 128).path(NOWHERE) and "heldout" in held_path.name
    with pytest.raises(ValueError, match="catalog"):
        RunSpec(7, 24, 30, 128, "mixed")


def test_gsp_hang_sporadic_gsp_xids_then_off_the_bus(run):
    sim, rec = run
    xids = [e for e in rec.events_of(GSP) if e.kind == "xid"]
    pre = [e for e in xids if e.attrs["xid"] in (119, 120, 62)]
    t_pre = np.array([(e.time_ms / 1000 - JAN) / H for e in pre])
    assert len(pre) >= 3 and ((t_pre > ONSET_H) & (t_pre < FAIL_H)).all()
    assert {e.attrs["xid"] for e in failure_events(sim, rec, GSP, "xid")} == {79}
    failure_events(sim, rec, GSP, "device_lost")
    temp = rec.series(GSP, "gpu_temp_c")
    t = rec.t_h()
    assert np.isfinite(temp[t < FAIL_H]).all() and np.isnan(temp[t > FAIL_H + 0.05]).all()
    # no sign in the numbers: temperature and ECC as before the onset
    assert abs(rise(rec, GSP, "gpu_temp_c")) < 1.5
    assert np.nanmax(rec.series(GSP, "ecc_corrected_total")) == 0


def test_hbm_degradation_heats_the_memory_not_the_die_with_ecc_bursts(run):
    sim, rec = run
    assert rise(rec, HBM, "mem_temp_c") > 20.0 and abs(rise(rec, HBM, "gpu_temp_c")) < 1.5
    ecc = rec.series(HBM, "ecc_corrected_total")
    t = rec.t_h()
    assert ecc[t < ONSET_H + 0.5].max() == 0 and ecc[t < FAIL_H].max() >= 10
    assert {e.attrs["xid"] for e in failure_events(sim, rec, HBM, "xid")} == {48, 95}


def test_psu_fan_failure_runs_hot_with_little_loss_change_then_shuts_down(run):
    sim, rec = run

    assert rise(rec, PSU_FAN, "temp_c") > 12.0 and abs(rise(rec, PSU_PEER, "temp_c")) < 1.5

    assert loss(rec, PSU_FAN, LATE) < 1.1 * loss(rec, PSU_FAN, BEFORE)
    failure_events(sim, rec, PSU_FAN, "psu_fault")
    t = rec.t_h()
    assert (rec.series(PSU_FAN, "output_power_w")[t > FAIL_H + 0.05] == 0).all()


def test_psu_capacitor_wear_adds_fixed_watts_of_loss_then_fails(run):
    sim, rec = run

    assert 20.0 < loss(rec, PSU_CAP, LATE) - loss(rec, PSU_CAP, BEFORE) < 32.0  # ~30 W x p
    failure_events(sim, rec, PSU_CAP, "psu_fault")


def test_pump_bearing_wear_draws_more_power_at_the_same_speed_and_flow(run):
    sim, rec = run

    def mean(dev, metric, span):
        return float(np.mean(window(rec, dev, metric, *span)))

    assert mean(BEARING, "pump_power_w", LATE) > 1.15 * mean(BEARING, "pump_power_w", BEFORE)
    for m in ("pump_speed_pct", "flow_lpm"):
        assert abs(mean(BEARING, m, LATE) / mean(BEARING, m, BEFORE) - 1) < 0.01
    # rubbing spikes: single reads well above the smooth rise
    p = window(rec, BEARING, "pump_power_w", ONSET_H, FAIL_H)
    assert (np.diff(p) > 5.0).sum() >= 3
    failure_events(sim, rec, BEARING, "pump_failed")


def test_seal_leak_drops_the_reservoir_in_steps_without_tripping_the_leak_cable(run):
    sim, rec = run
    label = next(lab for lab in sim.labels() if lab["device_id"] == SEAL)
    fail_h = (label["failure_ms"] / 1000 - JAN) / H
    t = rec.t_h()
    level = rec.series(SEAL, "reservoir_level_pct")
    step = np.diff(level[(t > ONSET_H) & (t < fail_h)])
    assert (step < -0.3).sum() >= 10 and (np.abs(step) < 0.05).sum() >= 10  # weeping, dry
    assert 29.0 < level[t < fail_h][-1] < 33.0
    assert np.nanmax(rec.series(SEAL, "leak_detected")) == 0
    assert not [e for e in rec.events_of(SEAL) if e.kind == "leak_detected"]
    failure_events(sim, rec, SEAL, "pump_failed")


def test_crah_belt_slip_moves_less_air_and_draws_less_power_per_speed_cubed(run):
    sim, rec = run

    def ratio(span):
        power = window(rec, SLIP, "fan_power_w", *span)
        speed = window(rec, SLIP, "fan_speed_pct", *span) / 100
        air = window(rec, SLIP, "airflow_m3h", *span)
        return np.mean(power / speed**3), np.mean(air / speed)

    (p0, a0), (p1, a1) = ratio(BEFORE), ratio(LATE)
    assert p1 < 0.7 * p0 and a1 < 0.8 * a0
    assert failure_events(sim, rec, SLIP, "fan_failed")[0].message == "CRAH fan belt broken"


def test_crah_winding_fault_power_spikes_then_motor_fails(run):
    sim, rec = run
    p = window(rec, WINDING, "fan_power_w", ONSET_H, FAIL_H)
    base = np.median(p)
    assert (p > 1.15 * base).sum() >= 5
    before = window(rec, WINDING, "fan_power_w", *BEFORE)
    assert before.max() < 1.03 * np.median(before)
    failure_events(sim, rec, WINDING, "fan_failed")


def test_heldout_modes_are_deterministic_per_seed(run):
    sim, rec = run
    sim2, rec2 = simulate()
    assert sim.labels() == sim2.labels()
    np.testing.assert_array_equal(np.array(rec.values), np.array(rec2.values))
    assert [(e.time_ms, e.device_id, e.message) for e in rec.events] == [
        (e.time_ms, e.device_id, e.message) for e in rec2.events
    ]
    other = SiteSimulator(SITE, seed=6, start_time_s=JAN, faults=SPEC, constant_util=0.8)
    gsp = lambda s: json.loads(next(x for x in s.labels() if x["device_id"] == GSP)["params"])  # noqa: E731
    assert gsp(other)["pattern"] != gsp(sim)["pattern"]  # another seed, other XID times


def test_heldout_report_is_reproducible(tmp_path):
    """A tiny model (one 3-h standard run as train and calibration) scores a 3-h held-out
    run simulated twice into two directories: the reports are identical."""
    train = load_rows([generate(RunSpec(1, 3.0, 60.0, 64), tmp_path / "train")], 1800)
    # one OpenMP thread: on a loaded machine the boosting's thread pool spins and stalls
    with threadpool_limits(1):
        model = FailureModel(1800).fit(train, train)
        reps = []
        for d in ("a", "b"):
            path = generate(RunSpec(184, 3.0, 60.0, 64, "heldout"), tmp_path / d)
            rows = load_rows([path], 1800)
            assert set(rows["fault"].drop_nulls()) <= set(HELDOUT_CATALOG)
            reps.append(heldout_report(model, rows, [path.stem]))
    assert comparable(reps[0]) == comparable(reps[1])
    rep = reps[0]
    assert set(rep["modes"]) <= set(HELDOUT_CATALOG) and len(rep["modes"]) >= 6
    for mode, r in rep["modes"].items():
        assert r["class"] == HELDOUT_CATALOG[mode].device_class
        assert set(r["meets_targets"]) == {"precision_strict", "recall", "lead_min_p50"}
    assert rows.filter(pl.col("fault").is_not_null())["episode"].n_unique() >= 6
