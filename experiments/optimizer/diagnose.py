"""Issue 19 opt-calib: why recommendations realise ~1 % of their predicted saving.

Runs the ML closed loop of `evaluate` (no baseline, no optimum) from `start` and, for every
recommendation, records side by side:

* the predicted saving, raw (uncalibrated) and per component (models at the decision's
  current setpoints vs the recommendation, the decision's telemetry state), per ensemble
  member (member 0 alone ranks the search's candidates);
* the realised saving as `outcome.measure_settled` reports it;
* an independent recomputation on the true simulator: two fresh copies of the plant, one
  on the previous *commanded* setpoints and one on the recommendation, stepped over the
  same settle window, per component (the simulator's own powers: no telemetry noise), and
  the same difference over a later window (`late_*`: LATE_S after the change) to see
  whether the saving is still arriving when the window closes;
* for recommendations predicted >= ATTRIBUTE_KW, each changed setpoint moved alone: its
  predicted and its true (simulator copies, same window) saving;
* which setpoints the decision started from (telemetry, i.e. active) against what the
  plant had commanded, and whether the recommendation was active in the treatment copy
  when the window started.

Only for the calibration week or training periods: never the held-out weeks (refused).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from domain.site import Site
from experiments.optimizer.dataset import observe
from experiments.optimizer.outcome import measure_settled
from experiments.optimizer.plant_control import apply_setpoints, read_setpoints
from experiments.optimizer.telemetry_view import TelemetryView
from simulator.model import SiteSimulator
from twin.optimizer.models import PlantModels
from twin.optimizer.search import Optimizer
from twin.optimizer.space import POWER_TARGETS, SETPOINTS, STATE

COMPONENTS = POWER_TARGETS  # chiller, tower, plant pumps, CDU pumps, CRAH fans, non-cooling
LATE_S = 2700.0  # the later window: 45-55 min after the change
ATTRIBUTE_KW = 0.5
# the held-out evaluation weeks (docs/optimizer.md "Split"): never diagnosed on
HELD_OUT = (("2025-07-14", "2025-07-21"), ("2025-10-06", "2025-10-13"))


def _components(sim: SiteSimulator) -> np.ndarray:
    p = sim.plant
    cooling = p.plant_kw + p.cdu_pump_kw + p.crah_fan_kw
    return np.array(
        [
            p.chiller_kw,
            p.tower_kw,
            p.chw_pump_kw + p.cw_pump_kw,
            p.cdu_pump_kw,
            p.crah_fan_kw,
            p.facility_kw - cooling,
        ]
    )


@dataclass
class Probe:
    at: str
    state: list[float]  # the decision's state (telemetry), STATE order
    telemetry_sp: list[float]  # the decision's current setpoints (telemetry: active)
    commanded_sp: list[float]  # what the plant had commanded
    recommended_sp: list[float]
    predicted_raw_kw: float
    predicted_components_kw: list[float]  # COMPONENTS order
    predicted_from_commanded_kw: float  # models at the commanded setpoints vs recommended
    predicted_members_kw: list[float]  # per ensemble member (member 0 ranks the search)
    measured_kw: float  # measure_settled
    predicted_at_window_kw: float  # measure_settled: models at the window's state
    first_interval_kw: float  # measure_settled: over the first interval
    window_start_s: float
    recomputed_kw: float  # fresh copies, old vs new, same window
    recomputed_components_kw: list[float]
    late_kw: float  # fresh copies, window of the same length starting LATE_S after the change
    late_components_kw: list[float]
    active_at_window: bool  # treatment copy's active setpoints == recommendation
    category_note: str  # the decision's reason
    # per changed setpoint moved alone: name -> (predicted, true) kW
    alone: dict[str, tuple[float, float]] = field(default_factory=dict)
    # models (ensemble mean, window's mean state) - truth over the window, per component:
    # at the previous setpoints (counterfactual copy) and at the recommendation (treatment)
    level_err_current_kw: list[float] = field(default_factory=list)
    level_err_recommended_kw: list[float] = field(default_factory=list)


def _pair_diff(
    sim: SiteSimulator, new: np.ndarray, step_s: float, windows: list[tuple[int, int]]
) -> list[np.ndarray]:
    """Counterfactual - treatment per component, mean over each (first step, steps) window
    of two fresh copies of `sim`: one kept as is, one commanded `new`."""
    return [d for d, _, _, _ in _pair_run(sim, new, step_s, windows)]


def _pair_run(
    sim: SiteSimulator, new: np.ndarray, step_s: float, windows: list[tuple[int, int]]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per window: (counterfactual - treatment, counterfactual, treatment) per component,
    and the mean state (STATE order; the same load and weather in both copies)."""
    treat, cf = copy.deepcopy(sim), copy.deepcopy(sim)
    apply_setpoints(treat.controls, new)
    end = max(a + n for a, n in windows)
    out = [
        (np.zeros(len(COMPONENTS)), np.zeros(len(COMPONENTS)), np.zeros(len(STATE)))
        for _ in windows
    ]
    for i in range(end):
        treat.step(step_s)
        cf.step(step_s)
        c, t = _components(cf), _components(treat)
        obs = observe(treat)
        st = np.array([obs[k] for k in STATE])
        for (a, n), (acc_c, acc_t, acc_s) in zip(windows, out, strict=True):
            if a <= i < a + n:
                acc_c += c / n
                acc_t += t / n
                acc_s += st / n
    return [(c - t, c, t, s) for c, t, s in out]


def diagnose(
    models: PlantModels,
    site: Site,
    *,
    start: datetime,
    hours: float,
    seed: int = 5,
    climate: str = "temperate",
    control_s: float = 900.0,
    step_s: float = 60.0,
    progress: bool = False,
) -> list[Probe]:
    t0 = start.astimezone(UTC).timestamp()
    for a, b in HELD_OUT:
        lo = datetime.fromisoformat(a).replace(tzinfo=UTC).timestamp()
        hi = datetime.fromisoformat(b).replace(tzinfo=UTC).timestamp()
        if t0 < hi and lo < t0 + hours * 3600:
            raise ValueError(f"{start} + {hours} h overlaps the held-out week {a}..{b}")
    sim = SiteSimulator(site, seed=seed, start_time_s=t0, climate=climate, horizon_s=hours * 3600)
    view, opt = TelemetryView(sim), Optimizer(models, seed=seed)
    probes: list[Probe] = []
    n_ctrl = int(round(hours * 3600 / control_s))
    for k in range(n_ctrl):
        seen = view.observe(sim)
        dec = opt.recommend(seen.state, seen.setpoints)
        if dec.recommended is not None:
            rec = np.array([dec.recommended[n] for n in SETPOINTS])
            tel = np.array([seen.setpoints[n] for n in SETPOINTS])
            cmd = read_setpoints(sim.controls)
            st = np.array([seen.state[n] for n in STATE])
            p = opt.predict_setpoints(np.vstack([tel, rec, cmd]), st)
            comp = [float(p.mean[c][0] - p.mean[c][1]) for c in COMPONENTS]
            out = measure_settled(sim, rec, models, step_s, interval_s=control_s)
            n_skip = int(round(out.window_start_s / step_s))
            n_win = int(round(out.window_s / step_s))
            n_late = int(round(LATE_S / step_s))
            (acc, cf_kw, tr_kw, w_state), (late, _, _, _) = _pair_run(
                sim, rec, step_s, [(n_skip, n_win), (n_late, n_win)]
            )
            # the models' level at the window's state minus the truth, per component
            pw = opt.predict_setpoints(np.vstack([cmd, rec]), w_state)
            err_cur = [float(pw.mean[c][0]) for c in COMPONENTS] - cf_kw
            err_rec = [float(pw.mean[c][1]) for c in COMPONENTS] - tr_kw
            treat = copy.deepcopy(sim)
            apply_setpoints(treat.controls, rec)
            for _ in range(n_skip):
                treat.step(step_s)
            active = bool(
                np.allclose([treat.controls.get(n, active=True) for n in SETPOINTS], rec, atol=1e-6)
            )
            alone: dict[str, tuple[float, float]] = {}
            raw = float(dec.uncalibrated_savings_kw or 0.0)
            if raw >= ATTRIBUTE_KW:
                for i, name in enumerate(SETPOINTS):
                    if abs(rec[i] - cmd[i]) < 1e-6:
                        continue
                    one = cmd.copy()
                    one[i] = rec[i]
                    pp = opt.predict_setpoints(np.vstack([cmd, one]), st)
                    (true,) = _pair_diff(sim, one, step_s, [(n_skip, n_win)])
                    alone[name] = (float(pp.facility_kw[0] - pp.facility_kw[1]), float(true.sum()))
            probes.append(
                Probe(
                    datetime.fromtimestamp(sim.time_s, UTC).isoformat(),
                    st.tolist(),
                    tel.tolist(),
                    cmd.tolist(),
                    rec.tolist(),
                    raw,
                    comp,
                    float(p.facility_kw[2] - p.facility_kw[1]),
                    (p.power_members[:, 0] - p.power_members[:, 1]).tolist(),
                    out.realised_kw,
                    out.predicted_at_window_kw,
                    out.first_interval_kw,
                    out.window_start_s,
                    float(acc.sum()),
                    acc.tolist(),
                    float(late.sum()),
                    late.tolist(),
                    active,
                    dec.reason,
                    alone,
                    err_cur.tolist(),
                    err_rec.tolist(),
                )
            )
            apply_setpoints(sim.controls, rec)
        for _ in range(int(round(control_s / step_s))):
            sim.step(step_s)
        if progress:
            print(f"# {k + 1}/{n_ctrl} decisions, {len(probes)} recommendations", flush=True)
    return probes


def summarise(probes: list[Probe], floor: float = 1.0) -> dict:
    big = [pr for pr in probes if pr.predicted_raw_kw >= floor]

    def med(f) -> float | None:
        return float(np.median([f(pr) for pr in big])) if big else None

    def total(f) -> dict[str, float] | None:
        if not big:
            return None
        return dict(zip(COMPONENTS, np.sum([f(pr) for pr in big], 0).tolist(), strict=True))

    return {
        "recommendations": len(probes),
        f"ge_{floor:g}kw": len(big),
        "median_measured_over_predicted": med(lambda pr: pr.measured_kw / pr.predicted_raw_kw),
        "median_recomputed_over_predicted": med(lambda pr: pr.recomputed_kw / pr.predicted_raw_kw),
        "median_late_over_predicted": med(lambda pr: pr.late_kw / pr.predicted_raw_kw),
        "median_at_window_over_predicted": med(
            lambda pr: (
                pr.measured_kw / pr.predicted_at_window_kw
                if abs(pr.predicted_at_window_kw) > 1e-9
                else float("nan")
            )
        ),
        "sum_predicted_kw": float(sum(pr.predicted_raw_kw for pr in big)),
        "sum_measured_kw": float(sum(pr.measured_kw for pr in big)),
        "sum_predicted_components_kw": total(lambda pr: pr.predicted_components_kw),
        "sum_recomputed_components_kw": total(lambda pr: pr.recomputed_components_kw),
        "max_abs_measured_minus_recomputed_kw": max(
            (abs(pr.measured_kw - pr.recomputed_kw) for pr in probes), default=None
        ),
        "not_active_at_window": sum(not pr.active_at_window for pr in probes),
        "telemetry_ne_commanded": sum(
            not np.allclose(pr.telemetry_sp, pr.commanded_sp, atol=1e-3) for pr in probes
        ),
    }


def compare(models: PlantModels, probes: list[dict], shift_fraction: float = 0.25) -> list[dict]:
    """Other estimates of the same recommendations' savings (`probes`: the JSON lines of a
    run), each against the realised one: `point` (the two single predictions, from the
    commanded setpoints), `members_1_2` (the ensemble members that did not rank the
    search), `shifted` (the move averaged over 32 shifted copies of both points within
    +-shift_fraction of each setpoint's per-step limit), `shifted_capped` (each cooling
    term's saving capped at what the plant drew then: the counterfactual copy's window),
    `shifted_no_noncooling` (the non-cooling term left out)."""
    from twin.optimizer.space import DEFAULT_MAX_STEP

    step = np.array([DEFAULT_MAX_STEP[n] for n in SETPOINTS])
    step[SETPOINTS.index("economizer_enabled")] = 0.0
    d = np.random.default_rng(0).uniform(-1, 1, (32, len(SETPOINTS))) * step * shift_fraction
    est: dict[str, list[float]] = {
        k: []
        for k in ("point", "members_1_2", "shifted", "shifted_capped", "shifted_no_noncooling")
    }
    real = np.array([pr["measured_kw"] for pr in probes])
    for pr in probes:
        st, cur, rec = (np.array(pr[k]) for k in ("state", "commanded_sp", "recommended_sp"))
        x = np.vstack([cur, rec, cur + d, rec + d])
        p = models.predict(np.hstack([x, np.broadcast_to(st, (len(x), len(st)))]))
        comp = np.array([p.mean[c] for c in COMPONENTS])
        n = len(d)
        point = comp[:, 0] - comp[:, 1]
        shifted = comp[:, 2 : 2 + n].mean(1) - comp[:, 2 + n :].mean(1)
        drawn = np.maximum(comp[:, 0] - np.array(pr["level_err_current_kw"]), 0.0)
        capped = shifted.copy()
        capped[:-1] = np.minimum(capped[:-1], drawn[:-1])
        est["point"].append(float(point.sum()))
        est["members_1_2"].append(float((p.power_members[1:, 0] - p.power_members[1:, 1]).mean()))
        est["shifted"].append(float(shifted.sum()))
        est["shifted_capped"].append(float(capped.sum()))
        est["shifted_no_noncooling"].append(float(shifted[:-1].sum()))
    members = np.array([pr["predicted_members_kw"] for pr in probes])
    tel = np.array([pr["telemetry_sp"] for pr in probes])
    cmd = np.array([pr["commanded_sp"] for pr in probes])
    pred = np.array([pr["predicted_raw_kw"] for pr in probes])
    out: list[dict] = [
        {
            "recommendations": len(probes),
            "sum_predicted_kw": float(pred.sum()),
            "sum_realised_kw": float(real.sum()),
            "mean_member0_kw": float(members[:, 0].mean()),  # the member that ranks
            "mean_other_members_kw": float(members[:, 1:].mean()),
            "mean_realised_kw": float(real.mean()),
            "max_abs_telemetry_minus_commanded": dict(
                zip(SETPOINTS, np.abs(tel - cmd).max(0).tolist(), strict=True)
            ),
            "max_abs_saving_from_telemetry_minus_from_commanded_kw": float(
                np.abs(pred - np.array([pr["predicted_from_commanded_kw"] for pr in probes])).max()
            ),
            "window_start_s_min_max": [
                min(pr["window_start_s"] for pr in probes),
                max(pr["window_start_s"] for pr in probes),
            ],
        }
    ]
    for name, v in est.items():
        e = np.array(v)
        row: dict = {"estimate": name, "corr_with_realised": float(np.corrcoef(e, real)[0, 1])}
        for floor in (1.0, 0.5, 0.25):
            sel = e >= floor
            row[f"n_ge_{floor:g}"] = int(sel.sum())
            row[f"median_ratio_ge_{floor:g}"] = (
                float(np.median(real[sel] / e[sel])) if sel.any() else None
            )
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m experiments.optimizer.diagnose --model M [--hours 24]`: one JSON line
    per recommendation, then summary lines (medians over recommendations >= 1 and 0.5 kW);
    `--compare RUN.jsonl`: other estimates of that run's savings against the realised."""
    import argparse
    import dataclasses
    import json

    from simulator.sitegen import synthetic_site

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--start", default="2025-05-12")  # the calibration week
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--gpus", type=int, default=256)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--compare", help="a run's JSON lines: other estimates of its savings")
    a = ap.parse_args(argv)
    models = PlantModels.load(a.model)
    if a.compare:
        with open(a.compare) as f:
            probes_in = [json.loads(line) for line in f if line.startswith('{"at"')]
        for row in compare(models, probes_in):
            print(json.dumps(row))
        return
    site = synthetic_site(a.gpus, racks_per_row=4)
    start = datetime.fromisoformat(a.start).replace(tzinfo=UTC)
    probes = diagnose(models, site, start=start, hours=a.hours, seed=a.seed, progress=a.progress)
    for pr in probes:
        print(json.dumps(dataclasses.asdict(pr)), flush=True)
    for floor in (1.0, 0.5):
        print(json.dumps({"summary": summarise(probes, floor)}))


if __name__ == "__main__":
    main()
