"""`dctwin failure ...`: train, evaluate, approve and list failure-risk models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

failure_app = typer.Typer(
    help="Failure-risk models: train on simulator runs, evaluate on "
    "held-out runs, approve for serving.",
    no_args_is_help=True,
)

DATA = Path("var/failure-data")


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise typer.BadParameter(f"seeds: {part!r} is not N or A-B") from None
    return out


def _hours(text: str) -> float:
    from twin.failure.model import parse_horizon_s

    try:
        return parse_horizon_s(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _runs(
    seeds: list[int],
    hours: float,
    step_s: float,
    gpus: int,
    data: Path,
    catalog: str = "standard",
) -> list[Path]:
    from rich.progress import track

    from experiments.failure.dataset import RunSpec, generate

    specs = [RunSpec(s, hours, step_s, gpus, catalog) for s in seeds]
    return [generate(s, data) for s in track(specs, description="simulating runs")]


def _rows(paths: list[Path], horizon_s: float):
    from rich.progress import Progress

    from experiments.failure.evaluate import load_rows

    with Progress() as p:
        task = p.add_task("features", total=len(paths))
        return load_rows(paths, horizon_s, progress=lambda _: p.advance(task))


def _print_report(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"failure prediction, horizon {rep['horizon_s'] / 3600:g} h")
    cols = [
        "class",
        "episodes",
        "pos rows",
        "PR-AUC",
        "calib",
        "threshold",
        "precision",
        "prec (early ok)",
        "recall",
        "best prec at recall>=0.8",
        "lead p10/p50/p90 min",
        "caught",
        "false-alarm devs",
    ]
    for c in cols:
        t.add_column(c)

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    for cls, r in rep["classes"].items():
        lead = "/".join(
            f(r.get(k), "{:.0f}") for k in ("lead_min_p10", "lead_min_p50", "lead_min_p90")
        )
        t.add_row(
            cls,
            str(r.get("episodes", 0)),
            str(r.get("positives", 0)),
            f(r.get("pr_auc")),
            str(r.get("calibration") or "-"),
            f(r.get("threshold")),
            f(r.get("precision_strict")),
            f(r.get("precision_early_ok")),
            f(r.get("recall")),
            f(r.get("precision_at_recall_0.8")),
            lead,
            f"{r.get('episodes_caught', 0)}/{r.get('episodes', 0)}",
            str(r.get("false_alarm_devices", "-")),
        )
    Console().print(t)
    loss = rep.get("telemetry_loss")
    if loss:
        n = loss["loss_failures"]
        for tag, what in (
            ("loss_", "all signals"),
            ("silence_only_", "silence only, XID 79 hidden"),
        ):
            delays = ", ".join(
                "missed" if d is None else f"{d:g}" for d in loss[f"{tag}delays_reads"]
            )
            Console().print(
                f"telemetry-loss failures ({what}): {loss[f'{tag}flagged']}/{n} flagged, "
                f"{loss[f'{tag}within_2_reads']}/{n} within 2 read intervals; delay in read "
                f"intervals p50/p90/max {f(loss[f'{tag}delay_reads_p50'], '{:g}')}/"
                f"{f(loss[f'{tag}delay_reads_p90'], '{:g}')}/"
                f"{f(loss[f'{tag}delay_reads_max'], '{:g}')} (per episode: {delays})"
            )


@failure_app.command()
def train(
    seeds: str = typer.Option(
        "1-16", help="simulator seeds (N,A-B); each is a run, later seeds are later in time"
    ),
    hours: float = typer.Option(24.0, help="simulated hours per run"),
    step_s: float = typer.Option(30.0, "--step-s", help="seconds between reads"),
    gpus: int = typer.Option(128, help="GPUs in the synthetic site"),
    horizon: str = typer.Option("1h", help="risk horizon (30m, 1h, 24h)"),
    calibrate_runs: int = typer.Option(
        5,
        help="runs after the training runs that calibrate the risk and set the operating threshold",
    ),
    test_runs: int = typer.Option(2, help="latest runs held out for the test"),
    data: Path = typer.Option(DATA, help="where simulator runs are kept"),
    registry_root: Path = typer.Option(Path("var/models/failure"), "--registry"),
    approve: bool = typer.Option(False, help="approve the new version for serving"),
) -> None:
    """Simulate runs, train on the earliest, calibrate on the next, test on the latest."""
    from experiments.failure.evaluate import evaluate, loss_delays
    from twin.failure import registry
    from twin.failure.model import FailureModel, time_split

    horizon_s = _hours(horizon)
    paths = _runs(_seeds(seeds), hours, step_s, gpus, data)
    rows = _rows(paths, horizon_s)
    split = time_split(rows, horizon_s, calibrate_runs=calibrate_runs, test_runs=test_runs)
    model = FailureModel(horizon_s).fit(
        split.train, split.calibrate, progress=lambda c: typer.echo(f"fitted {c}")
    )
    rep = evaluate(model, split.test)
    test_paths = [p for p in paths if p.stem in set(split.test["run"])]
    rep["telemetry_loss"] = loss_delays(test_paths)
    meta = {
        "data_window": {
            "train": [split.train["t"].min(), split.train["t"].max()],
            "calibrate": [split.calibrate["t"].min(), split.calibrate["t"].max()],
            "test": [split.test["t"].min(), split.test["t"].max()],
        },
        "runs": {
            "train": sorted(set(split.train["run"])),
            "calibrate": sorted(set(split.calibrate["run"])),
            "test": sorted(set(split.test["run"])),
        },
        "simulation": {"hours": hours, "step_s": step_s, "gpus": gpus},
        "metrics": rep,
    }
    v = registry.save(model, meta, registry_root)
    if approve:
        v = registry.approve(v.version, registry_root)
    _print_report(rep)
    typer.echo(f"saved {v.version} at {v.path} (approved: {v.approved})")


def _version(version: str | None, registry_root: Path):
    """The asked version, else the newest approved one, else the newest."""
    from twin.failure import registry

    vs = registry.versions(registry_root)
    if not vs:
        raise typer.BadParameter(f"no models in {registry_root}: run `dctwin failure train`")
    if version:
        return registry.get(version, registry_root)
    approved = [x for x in vs if x.approved]
    return (approved or vs)[-1]


def _check_after_training(v, rows, horizon_s: float) -> None:
    """LeakageError unless the rows start after the model's calibration window plus the
    horizon its labels look ahead."""
    from datetime import datetime

    import polars as pl

    from twin.failure.model import check_disjoint

    trained_end = datetime.fromisoformat(str(v.meta["data_window"]["calibrate"][1]))
    seen = pl.DataFrame(
        {"t": [trained_end], "run": ["model"], "episode": [None]},
        schema={"t": pl.Datetime("us"), "run": pl.String, "episode": pl.String},
    )
    check_disjoint(seen, rows, horizon_s, ("model's training data", "evaluation runs"))


@failure_app.command()
def evaluate(
    seeds: str = typer.Option("17-24", help="held-out simulator seeds"),
    version: str = typer.Option(None, help="model version (default: newest approved, else newest)"),
    hours: float = typer.Option(None, help="simulated hours per run (default: as trained)"),
    data: Path = typer.Option(DATA),
    registry_root: Path = typer.Option(Path("var/models/failure"), "--registry"),
    json_out: Path = typer.Option(None, "--json", help="also write the report here"),
) -> None:
    """Evaluate a model on held-out runs that start after everything it was trained on."""
    from experiments.failure.evaluate import evaluate as run_eval
    from experiments.failure.evaluate import loss_delays

    v = _version(version, registry_root)
    sim = v.meta.get("simulation", {})
    model = v.load()
    paths = _runs(
        _seeds(seeds),
        hours or sim.get("hours", 24.0),
        sim.get("step_s", 30.0),
        sim.get("gpus", 128),
        data,
    )
    rows = _rows(paths, model.horizon_s)
    _check_after_training(v, rows, model.horizon_s)
    rep = run_eval(model, rows)
    rep["telemetry_loss"] = loss_delays(paths)
    rep["model_version"] = v.version
    typer.echo(f"model {v.version} (approved: {v.approved}), runs {[p.stem for p in paths]}")
    _print_report(rep)
    if json_out:
        json_out.write_text(json.dumps(rep, indent=2, default=str))


@failure_app.command("approve")
def approve_cmd(
    version: str, registry_root: Path = typer.Option(Path("var/models/failure"), "--registry")
) -> None:
    """Approve a model version for serving."""
    from twin.failure import registry

    v = registry.approve(version, registry_root)
    typer.echo(f"approved {v.version}")


@failure_app.command("list")
def list_cmd(registry_root: Path = typer.Option(Path("var/models/failure"), "--registry")) -> None:
    """Model versions, oldest first, then the shipped default(s)."""
    from twin.failure import registry

    for v in registry.versions(registry_root) + registry.shipped_versions():
        typer.echo(
            f"{v.version}  {v.source}  approved={v.approved}  code={v.meta.get('code_version')}"
        )


def _print_modes(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="held-out failure modes (each with its class's never-failing devices)")
    for c in (
        "mode",
        "class",
        "episodes",
        "pos rows",
        "PR-AUC",
        "precision",
        "prec (early ok)",
        "recall",
        "best prec at recall>=0.8",
        "lead p10/p50/p90 min",
        "caught",
        "targets P/R/lead",
    ):
        t.add_column(c)

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    def ok(x):
        return "-" if x is None else ("yes" if x else "NO")

    for mode, r in rep["modes"].items():
        lead = "/".join(
            f(r.get(k), "{:.0f}") for k in ("lead_min_p10", "lead_min_p50", "lead_min_p90")
        )
        m = r.get("meets_targets", {})
        t.add_row(
            mode,
            r["class"],
            str(r.get("episodes", 0)),
            str(r.get("positives", 0)),
            f(r.get("pr_auc")),
            f(r.get("precision_strict")),
            f(r.get("precision_early_ok")),
            f(r.get("recall")),
            f(r.get("precision_at_recall_0.8")),
            lead,
            f"{r.get('episodes_caught', 0)}/{r.get('episodes', 0)}",
            "/".join(ok(m.get(k)) for k in ("precision_strict", "recall", "lead_min_p50")),
        )
    Console().print(t)


@failure_app.command("evaluate-heldout")
def evaluate_heldout(
    seeds: str = typer.Option(
        "184-191",
        help="held-out seeds (the documented protocol: 184-191; never used for training)",
    ),
    version: str = typer.Option(None, help="model version (default: newest approved, else newest)"),
    hours: float = typer.Option(None, help="simulated hours per run (default: as trained)"),
    data: Path = typer.Option(DATA, help="where simulator runs are kept"),
    registry_root: Path = typer.Option(Path("var/models/failure"), "--registry"),
    json_out: Path = typer.Option(
        Path("var/failure-heldout.json"), "--json", help="write the report here"
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="simulate the runs again in a scratch directory, recompute, and fail unless "
        "every figure is identical",
    ),
) -> None:
    """Evaluate a model on runs whose failures come only from the held-out failure modes
    (mechanisms the features were not designed around; docs/failure-prediction.md)."""
    import tempfile

    from experiments.failure.heldout import comparable, heldout_report, write_report

    v = _version(version, registry_root)
    sim = v.meta.get("simulation", {})
    model = v.load()
    args = (
        _seeds(seeds),
        hours or sim.get("hours", 24.0),
        sim.get("step_s", 30.0),
        sim.get("gpus", 128),
    )

    def report(root: Path) -> dict:
        paths = _runs(*args, root, catalog="heldout")
        rows = _rows(paths, model.horizon_s)
        _check_after_training(v, rows, model.horizon_s)
        rep = heldout_report(model, rows, [p.stem for p in paths])
        rep["model_version"] = v.version
        rep["protocol"] = {
            "seeds": seeds,
            "hours": args[1],
            "step_s": args[2],
            "gpus": args[3],
            "horizon_s": model.horizon_s,
        }
        return rep

    rep = report(data)
    typer.echo(f"model {v.version} (approved: {v.approved}), held-out runs {rep['runs']}")
    _print_report(rep)
    _print_modes(rep)
    if check:
        with tempfile.TemporaryDirectory(prefix="dctwin-heldout-") as tmp:
            again = report(Path(tmp))
        same = comparable(rep) == comparable(again)
        rep["reproducible"] = same
        typer.echo(
            "reproducible: identical figures from a fresh simulation"
            if same
            else "NOT reproducible: a fresh simulation gave different figures"
        )
    write_report(rep, json_out)
    typer.echo(f"report written to {json_out}")
    if check and not rep["reproducible"]:
        raise typer.Exit(1)


@failure_app.command("train-default")
def train_default_cmd(
    data: Path = typer.Option(DATA, help="where simulator runs are kept (reused if present)"),
    out: Path = typer.Option(
        None, help="where to write it (default: the package's twin/failure/default_model)"
    ),
) -> None:
    """Train the default model shipped with the package, reproducibly (fixed seeds, split
    and hyper-parameters): writes <out>/<version>/ with model.joblib, meta.json and
    MODEL_CARD.md, replacing the previous default."""
    from experiments.failure.default_model import train_default
    from twin.failure import registry

    v = train_default(data, out or registry.SHIPPED_ROOT, log=typer.echo)
    _print_report({"horizon_s": v.meta["horizon_s"], "classes": v.meta["validation"]["classes"]})
    typer.echo(f"held-out: {v.meta['validation']['method']}")
    typer.echo(f"saved {v.version} at {v.path} (model sha256 {v.meta['model_sha256']})")


@failure_app.command("import-records")
def import_records_cmd(
    csv_file: Path = typer.Argument(..., help="failure/maintenance records CSV"),
    db: Path = typer.Option(Path("var/dctwin.duckdb"), help="the twin's DuckDB store"),
) -> None:
    """Import the site's failure and maintenance records (schema: docs/failure-prediction.md).
    All or nothing: any bad row imports nothing, and each error names its row and field."""
    import duckdb

    from twin.failure.records import RecordsError, import_records

    if not csv_file.is_file():
        raise typer.BadParameter(f"{csv_file}: no such file")
    con = duckdb.connect(str(db))
    try:
        res = import_records(con, csv_file)
    except RecordsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    finally:
        con.close()
    typer.echo(f"{res.rows} records read, {res.new} new, {res.rows - res.new} already imported")
    if res.unknown_devices:
        typer.echo(
            f"warning: {len(res.unknown_devices)} device id(s) have no telemetry in {db} "
            f"(kept; they cannot label training rows): {res.unknown_devices[:10]}",
            err=True,
        )


@failure_app.command()
def retrain(
    db: Path = typer.Option(Path("var/dctwin.duckdb"), help="the twin's DuckDB store"),
    horizon: str = typer.Option("1h", help="risk horizon (30m, 1h, 24h)"),
    prior: bool = typer.Option(
        True,
        help="add the shipped default's simulator training runs to the training slice",
    ),
    prior_seeds: str = typer.Option(
        "", help="simulator seeds of the prior (default: the shipped default's training seeds)"
    ),
    data: Path = typer.Option(DATA, help="where simulator runs are kept"),
    registry_root: Path = typer.Option(Path("var/models/failure"), "--registry"),
) -> None:
    """Train on the site's history labelled by its imported records; approve the new model
    only if it beats the serving one on the latest (held-out) period. Exit code 0 either
    way; the decision and both models' figures are in <version>/report.json."""
    import duckdb

    from experiments.failure.default_model import DefaultSpec
    from experiments.failure.retrain import RetrainError
    from experiments.failure.retrain import retrain as run_retrain

    horizon_s = _hours(horizon)
    seeds: list[int] = []
    if prior:
        seeds = _seeds(prior_seeds) if prior_seeds else DefaultSpec().seeds[:6]
    con = duckdb.connect(str(db), read_only=True)
    try:
        res = run_retrain(con, registry_root, horizon_s, seeds, data)
    except RetrainError as exc:
        typer.echo(f"retrain: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        con.close()
    rep = res.report
    recs = rep["records"]
    typer.echo(
        f"records: {recs['failure_records']} failure(s) on {recs['devices_failed']} device(s); "
        f"{recs['note']}"
    )
    if recs["unresolved_serial_only"]:
        typer.echo(
            f"warning: {recs['unresolved_serial_only']} failure record(s) given by serial "
            "could not be placed in a slot (see report.json records.unresolved_examples)",
            err=True,
        )
    for cls, feats in rep["unreported_features"].items():
        typer.echo(
            f"{cls}: {len(feats)} feature(s) have no value in the store (metrics the site "
            f"does not report), left out of the model: {', '.join(feats)}"
        )
    _print_report({"horizon_s": horizon_s, "classes": rep["candidate"]["classes"]})
    if rep["serving"]:
        typer.echo(f"serving model {rep['serving']['version']} ({rep['serving']['source']}):")
        _print_report({"horizon_s": horizon_s, "classes": rep["serving"]["classes"]})
    verdict = "PROMOTED (approved, serving from now on)" if res.promoted else "REFUSED"
    typer.echo(f"{res.version.version}: {verdict}: {res.reason}")
    if not res.promoted:
        typer.echo("the serving model stays in place")
    typer.echo(f"report: {res.version.path / 'report.json'}")
