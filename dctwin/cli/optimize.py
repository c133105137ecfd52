"""`dctwin optimize train|evaluate`: the chilled-water setpoint optimizer (docs/optimizer.md)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

optimize_app = typer.Typer(
    help="chilled-water setpoint optimizer: train models, evaluate closed-loop on the simulator",
    no_args_is_help=True,
)

DEFAULT_GPUS = 256  # the small evaluation site: 8 racks, 2 CDUs, 2 CRAHs
DEFAULT_DIR = Path("var/optimizer")
# issue 19: the training history, fixed before any evaluation (docs/optimizer.md "Split")
TRAIN_START, TRAIN_PERIODS, TRAIN_SPACING_DAYS, TRAIN_STEP_S = "2024-03-04", 12, 21.0, 120.0
CALIBRATION_START, CALIBRATION_SEED = "2025-05-12", 5  # neither training nor evaluation


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _site(site: Path | None, gpus: int | None):
    from domain.site import SiteFileError, load_site
    from simulator.sitegen import synthetic_site

    if site is not None and gpus is not None:
        _fail("--site and --gpus: give one of them")
    try:
        return load_site(site) if site else synthetic_site(gpus or DEFAULT_GPUS, racks_per_row=4)
    except (SiteFileError, ValueError) as exc:
        _fail(str(exc))


def _time(text: str, option: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"{option}: {text!r} is not an ISO date/time")
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _climate(name: str) -> str:
    from simulator.weather import CLIMATES

    if name not in CLIMATES:
        _fail(f"--climate: {name!r} is not one of {sorted(CLIMATES)}")
    return name


@optimize_app.command()
def train(
    site: Path = typer.Option(None, "--site", help="site TOML"),
    gpus: int = typer.Option(None, "--gpus", help=f"synthetic site (default {DEFAULT_GPUS})"),
    db: Path = typer.Option(
        DEFAULT_DIR / "history.duckdb",
        "--db",
        help="the telemetry store (DuckDB, the Store's schema) to explore into and learn from",
    ),
    model: Path = typer.Option(DEFAULT_DIR / "model.pkl", "--model", help="where to save"),
    start: str = typer.Option(TRAIN_START, "--start", help="first exploration period (UTC)"),
    periods: int = typer.Option(TRAIN_PERIODS, "--periods", help="exploration periods"),
    period_days: float = typer.Option(7.0, "--period-days"),
    spacing_days: float = typer.Option(
        TRAIN_SPACING_DAYS, "--spacing-days", help="between period starts"
    ),
    climate: str = typer.Option("temperate", "--climate"),
    seed: int = typer.Option(101, "--seed", help="seed of the first period (+1 per period)"),
    step_s: float = typer.Option(TRAIN_STEP_S, "--step-s", help="simulator step = read interval"),
    members: int = typer.Option(3, "--members", help="ensemble members per power model"),
    reuse: bool = typer.Option(
        False,
        "--reuse",
        help="learn from the telemetry already in --db over the same periods "
        "(default: explore them into --db first)",
    ),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Explore setpoints on the simulator, its telemetry into a store; learn the models from
    the stored telemetry (twin/optimizer/history.py); report the held-out error."""
    import polars as pl
    from rich.progress import Progress

    from experiments.optimizer.dataset import explore_to_store
    from ingest.store import Store
    from twin.optimizer.history import HistoryError, training_rows
    from twin.optimizer.models import train as fit

    model_site, clim = _site(site, gpus), _climate(climate)
    t0 = _time(start, "--start")
    windows = [
        (t0 + timedelta(days=i * spacing_days), t0 + timedelta(days=i * spacing_days + period_days))
        for i in range(periods)
    ]
    store = Store(db)
    try:
        with Progress(disable=quiet) as bar:
            if not reuse:
                task = bar.add_task("exploring", total=periods * period_days * 24)
                for i, (begin, end) in enumerate(windows):
                    bar.update(task, description=f"exploring {begin:%Y-%m-%d}")
                    # a re-run replaces the period's telemetry instead of doubling it
                    store.con.execute(
                        "DELETE FROM samples WHERE read_time >= ? AND read_time < ?",
                        [begin.replace(tzinfo=None), end.replace(tzinfo=None)],
                    )
                    done = i * period_days * 24

                    def tick(h: float, done: float = done) -> None:
                        bar.update(task, completed=done + h)

                    explore_to_store(
                        store.con,
                        model_site,
                        seed=seed + i,
                        start_s=begin.timestamp(),
                        hours=period_days * 24,
                        climate=clim,
                        step_s=step_s,
                        progress=tick,
                    )
            try:
                history = pl.concat(
                    [
                        training_rows(store.cursor(), model_site, b, e, bucket_s=step_s)
                        for b, e in windows
                    ]
                )
            except HistoryError as exc:
                _fail(f"{exc} (explore first: `dctwin optimize train` without --reuse)")
            n_models = 6 * members + 4
            task = bar.add_task("training", total=n_models)
            models = fit(history, members=members, progress=lambda _m: bar.advance(task))
    finally:
        store.close()
    models.save(model)
    out = {
        "model": str(model),
        "version": models.version,
        "history": str(db),
        "rows_train": models.n_train,
        "rows_holdout": models.n_holdout,
        "data_window": models.data_window,
        "holdout_error": models.holdout_error,
    }
    typer.echo(json.dumps(out, indent=2))


@optimize_app.command()
def calibrate(
    site: Path = typer.Option(None, "--site", help="site TOML (the one trained on)"),
    gpus: int = typer.Option(None, "--gpus"),
    model: Path = typer.Option(DEFAULT_DIR / "model.pkl", "--model", help="calibrated in place"),
    start: str = typer.Option(CALIBRATION_START, "--start", help="calibration week (UTC)"),
    days: float = typer.Option(7.0, "--days"),
    climate: str = typer.Option("temperate", "--climate"),
    seed: int = typer.Option(CALIBRATION_SEED, "--seed"),
    step_s: float = typer.Option(60.0, "--step-s", help="simulator step"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Fit the shrinkage of predicted savings on a week that is neither training nor
    evaluation (closed loop, realised vs predicted per recommendation)."""
    from rich.progress import Progress

    from experiments.optimizer.calibrate import CalibrationError
    from experiments.optimizer.calibrate import calibrate as fit
    from experiments.optimizer.evaluate import LeakageError, check_after_training
    from twin.optimizer.models import PlantModels

    model_site, clim = _site(site, gpus), _climate(climate)
    t0 = _time(start, "--start")
    try:
        models = PlantModels.load(model)
        check_after_training(models, t0)
    except (FileNotFoundError, TypeError, LeakageError) as exc:
        _fail(str(exc))
    with Progress(disable=quiet) as bar:
        task = bar.add_task(f"calibration week, {days:g} days", total=1)
        try:
            cal = fit(
                models,
                model_site,
                start=t0,
                days=days,
                seed=seed,
                climate=clim,
                step_s=step_s,
                progress=lambda k, n: bar.update(task, completed=k, total=n),
            )
        except CalibrationError as exc:
            _fail(str(exc))
    cal.save(model)
    typer.echo(
        json.dumps(
            {
                "model": str(model),
                "version": cal.version,
                "calibration": dataclasses.asdict(cal.calibration) if cal.calibration else None,
            },
            indent=2,
        )
    )


@optimize_app.command()
def evaluate(
    site: Path = typer.Option(None, "--site", help="site TOML (the one trained on)"),
    gpus: int = typer.Option(None, "--gpus"),
    model: Path = typer.Option(DEFAULT_DIR / "model.pkl", "--model"),
    store: Path = typer.Option(
        DEFAULT_DIR / "evaluation.duckdb",
        "--store",
        help="DuckDB file for the recommendations' lifecycle",
    ),
    start: str = typer.Option("2025-07-14", "--start", help="evaluation start (UTC)"),
    days: float = typer.Option(7.0, "--days"),
    climate: str = typer.Option("temperate", "--climate"),
    seed: int = typer.Option(7, "--seed"),
    control_s: float = typer.Option(900.0, "--control-s", help="seconds between decisions"),
    step_s: float = typer.Option(60.0, "--step-s", help="simulator step"),
    optimum: bool = typer.Option(
        True, "--optimum/--no-optimum", help="also run the true optimum (exhaustive, slow)"
    ),
    json_out: Path = typer.Option(None, "--json", help="also write the full result here"),
    check: bool = typer.Option(
        False, "--check", help="exit 1 unless every acceptance target of issue #19 passes"
    ),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Closed loop on the simulator: fixed setpoints vs accepted recommendations vs the
    true optimum."""
    import duckdb
    from rich.progress import Progress

    from experiments.optimizer.evaluate import LeakageError, check_after_training
    from experiments.optimizer.evaluate import evaluate as run
    from twin.optimizer.models import PlantModels
    from twin.optimizer.recommendations import RecommendationStore

    model_site, clim = _site(site, gpus), _climate(climate)
    try:
        models = PlantModels.load(model)
    except (FileNotFoundError, TypeError) as exc:
        _fail(str(exc))
    try:
        check_after_training(models, _time(start, "--start"), days)
    except LeakageError as exc:
        _fail(str(exc))
    store.parent.mkdir(parents=True, exist_ok=True)
    if store.exists():
        store.unlink()  # one evaluation per file: the report covers exactly this run
    rec = RecommendationStore(duckdb.connect(str(store)))
    with Progress(disable=quiet) as bar:
        task = bar.add_task(f"closed loop, {days:g} days", total=1)

        def tick(k: int, n: int) -> None:
            bar.update(task, completed=k, total=n)
            if quiet and k % 96 == 0:  # a line a simulated day, for logs of long runs
                typer.echo(f"{k}/{n} decisions", err=True)

        res = run(
            models,
            model_site,
            seed=seed,
            start=_time(start, "--start"),
            days=days,
            climate=clim,
            control_s=control_s,
            step_s=step_s,
            store=rec,
            optimum=optimum,
            progress=tick,
        )
    summary = res.summary()
    summary["lifecycle_report"] = rec.report()
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2, default=str))
    typer.echo(format_result(summary))
    if check and not all(ok for _, ok in acceptance(summary)):
        raise typer.Exit(1)


# issue #19 acceptance targets (docs/optimizer.md "Acceptance")
MIN_COOLING_SAVINGS_PCT = 25.0
MIN_OPTIMUM_SHARE = 0.9
REALISED_OVER_PREDICTED = (0.8, 1.2)  # median, recommendations predicted >= 1 kW


def acceptance(s: dict) -> list[tuple[str, bool]]:
    """(target, passed) for a summary of `evaluate` (shared by the printout and --check)."""
    m = s["ml"]
    share = s.get("fraction_of_optimum_facility_savings")
    med = s.get("median_realised_over_predicted_ge_1kw")
    lo, hi = REALISED_OVER_PREDICTED
    return [
        (
            f"cooling energy >= {MIN_COOLING_SAVINGS_PCT:g} % below fixed setpoints",
            s["cooling_savings_pct"] >= MIN_COOLING_SAVINGS_PCT,
        ),
        (
            "zero GPU and coolant limit violations",
            m["gpu_violation_steps"] == 0 and m["coolant_violation_steps"] == 0,
        ),
        (
            f">= {100 * MIN_OPTIMUM_SHARE:g} % of the true optimum's (facility) savings",
            share is not None and share >= MIN_OPTIMUM_SHARE,
        ),
        ("the optimizer does not beat the true optimum", share is not None and share <= 1.0),
        (
            f"median realised/predicted in [{lo}, {hi}] for recommendations predicted >= 1 kW",
            med is not None and lo <= med <= hi,
        ),
    ]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} %"


def format_result(s: dict) -> str:
    b, m, o = s["baseline"], s["ml"], s.get("optimum")
    ratio_f = s["predicted_over_realised_facility"]
    frac = s["fraction_of_optimum_savings"]
    med = s.get("median_realised_over_predicted_ge_1kw")
    lines = [
        f"closed-loop evaluation: {s['days']:g} days from {s['start']}, {s['climate']}, "
        f"seed {s['seed']}, model {s['model_version']}",
        f"{'':22}{'cooling kWh':>12}{'facility kWh':>14}{'PUE':>8}{'GPU max':>9}{'viol.':>7}"
        f"{'CDU max':>9}{'viol.':>7}",
    ]
    for name, r in (("fixed setpoints", b), ("ML (accepted recs)", m), ("true optimum", o)):
        if r is not None:
            lines.append(
                f"{name:22}{r['cooling_kwh']:12.1f}{r['facility_kwh']:14.1f}"
                f"{r['pue']:8.4f}{r['gpu_temp_max_c']:9.1f}{r['gpu_violation_steps']:7d}"
                f"{r['cdu_supply_max_c']:9.1f}{r['coolant_violation_steps']:7d}"
            )
    lines += [
        f"decisions {s['decisions']}, recommendations {s['recommendations']}, "
        f"none: {s['no_recommendation']}",
        f"cooling energy saved: ML {_pct(s['cooling_savings_pct'])}, "
        f"optimum {_pct(s['optimum_cooling_savings_pct'])}; ML reaches "
        f"{'n/a' if frac is None else f'{100 * frac:.1f} %'} of the optimum's cooling savings "
        f"({_frac(s.get('fraction_of_optimum_facility_savings'))} of its facility savings, "
        f"the objective both minimise; {s['optimum_trials']} simulator copies run)",
        f"facility savings vs fixed setpoints over the {s['predicted_intervals']} intervals "
        f"the models could judge: predicted {s['predicted_savings_kwh']:.1f} kWh, realised "
        f"{s['realised_on_predicted_kwh']:.1f} kWh (predicted/realised "
        f"{'n/a' if ratio_f is None else f'{ratio_f:.3f}'}); cooling: predicted "
        f"{s['predicted_cooling_savings_kwh']:.1f}, realised "
        f"{s['realised_cooling_on_predicted_kwh']:.1f} kWh",
        f"per recommendation, measured after the plant settles (ramps done + "
        f"{s['settle_s']:.0f} s, {s['window_s']:.0f} s window) vs a counterfactual on the "
        f"previous setpoints, summed over {s['recommendations']}: predicted "
        f"{s['per_rec_predicted_kw']:.1f} kW, realised {s['per_rec_realised_kw']:.1f} kW "
        f"(predicted/realised {_ratio(s['per_rec_predicted_over_realised'])}); models at the "
        f"window's load and weather {s['per_rec_predicted_at_window_kw']:.1f} kW; live "
        f"estimate (models' adjusted counterfactual - metered) over the "
        f"{s['per_rec_live_n']} with a settled window before the change: "
        f"{s['per_rec_live_estimate_kw']:.1f} kW vs true {s['per_rec_live_true_kw']:.1f} kW; "
        f"first interval only (ramps) {s['per_rec_first_interval_kw']:.1f} kW; not settled "
        f"{s['per_rec_unsettled']}",
        *_by_size(s.get("lifecycle_report", {}).get("by_predicted_size", [])),
        f"median realised/predicted over the {s['per_rec_ge_1kw']} recommendations "
        f"predicted >= 1 kW: {_ratio(med)}",
        f"wall time {s['wall_s']:.0f} s",
        "acceptance:",
        *(f"  {name}: {_ok(ok)}" for name, ok in acceptance(s)),
    ]
    return "\n".join(lines)


def _by_size(buckets: list[dict]) -> list[str]:
    """Measured recommendations by predicted size: predicted vs realised (settled)."""
    parts = []
    for b in buckets:
        lo, hi = b["predicted_kw_from"], b["predicted_kw_to"]
        name = f"< {hi:g} kW" if lo < -1e8 else f">= {lo:g} kW" if hi > 1e8 else f"{lo:g}-{hi:g} kW"
        ratio = b["realised_over_predicted"]
        pred, real = b["predicted_savings_kw_sum"] or 0.0, b["realised_savings_kw_sum"] or 0.0
        parts.append(
            f"{name}: {b['measured']} recs, predicted {pred:.1f}, realised {real:.1f} "
            f"kW (realised/predicted {'n/a' if ratio is None else f'{ratio:.2f}'})"
        )
    return ["per recommendation by predicted saving: " + "; ".join(parts)] if parts else []


def _frac(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


# issue 19/26 (opt-default): the model shipped for the example site
@optimize_app.command("train-default")
def train_default_cmd(
    data: Path = typer.Option(
        DEFAULT_DIR / "default-history.duckdb",
        "--data",
        help="telemetry store of the exploration runs (periods already in it are reused)",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="where to write it (default: the package's twin/optimizer/default_model)",
    ),
    periods: int = typer.Option(
        None, "--periods", help="fewer exploration periods (tests; default: the shipped recipe)"
    ),
    period_days: float = typer.Option(None, "--period-days", help="(tests)"),
    site: Path = typer.Option(None, "--site", help="another site TOML (tests; default: example)"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Train the optimizer model shipped for the example site, reproducibly (fixed seeds,
    periods, split and hyper-parameters): writes <out>/<version>/ with model.pkl, meta.json
    and MODEL_CARD.md, replacing the previous default."""
    from rich.progress import Progress

    from experiments.optimizer import default_model as dm
    from twin.optimizer.shipped import SHIPPED_ROOT

    n = periods or dm.DEFAULT_PERIODS
    days = period_days or dm.DEFAULT_PERIOD_DAYS
    with Progress(disable=quiet) as bar:
        task = bar.add_task("exploring + training", total=n * days * 24)
        models, vdir = dm.train_default(
            data,
            out or SHIPPED_ROOT,
            periods=n,
            period_days=days,
            site_file=site or dm.SITE_FILE,
            log=(lambda _m: None) if quiet else bar.console.print,
            progress=lambda h: bar.update(task, completed=h),
        )
    meta = json.loads((vdir / "meta.json").read_text())
    keep = ("cooling_kw", "facility_kw", "gpu_temp_max_c")
    typer.echo(
        json.dumps(
            {
                "version": models.version,
                "path": str(vdir),
                "model_bytes": meta["model_bytes"],
                "rows_train": models.n_train,
                "rows_holdout": models.n_holdout,
                "data_window": models.data_window,
                "holdout_error": {k: models.holdout_error[k] for k in keep},
            },
            indent=2,
        )
    )
