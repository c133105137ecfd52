"""`dctwin anomaly score|evaluate`: score any CSV series; evaluate the detector offline."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

anomaly_app = typer.Typer(
    help="Anomaly scores: score a CSV series, evaluate on the simulator.", no_args_is_help=True
)


@anomaly_app.command("score")
def anomaly_score(
    input_csv: Path = typer.Argument(..., help="CSV with a header; '-' reads stdin"),
    output: Path = typer.Option(None, "--output", "-o", help="output CSV (default stdout)"),
    column: str = typer.Option("value", "--column", help="column to score"),
    time_column: str = typer.Option("timestamp", "--time-column", help="timestamp column"),
    warmup: float = typer.Option(20.0, help="points before the first score"),
    level_intervals: float = typer.Option(30.0, help="baseline time constant, in intervals"),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="leave bad rows unscored instead of stopping"
    ),
    threshold: float = typer.Option(0.5, help="score counted as an alarm in the summary"),
) -> None:
    """Append a calibrated, causal anomaly_score in [0, 1] to every row of a CSV series."""
    import csv

    from twin.anomaly.csvscore import CsvInputError, score_csv
    from twin.anomaly.streaming import DetectorParams

    params = DetectorParams(warmup_points=warmup, level_intervals=level_intervals)
    src = sys.stdin if str(input_csv) == "-" else None
    try:
        with contextlib.ExitStack() as stack:
            if src is None:
                src = stack.enter_context(open(input_csv, newline="", encoding="utf-8"))
            dst = (
                sys.stdout
                if output is None
                else stack.enter_context(open(output, "w", newline="", encoding="utf-8"))
            )
            summary = score_csv(
                src,
                dst,
                column=column,
                time_column=time_column,
                params=params,
                skip_invalid=skip_invalid,
                threshold=threshold,
            )
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc.filename}: no such file", err=True)
        raise typer.Exit(2) from exc
    except (CsvInputError, UnicodeDecodeError, csv.Error) as exc:
        # one line naming the problem, never a traceback (issue #20, part anom-real)
        what = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        typer.echo(f"error: {input_csv}: {what}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:
        typer.echo(f"error: {input_csv}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    for note in summary.notes():
        typer.echo(f"warning: {note}", err=True)
    typer.echo(
        f"{summary.rows} rows: {summary.scored} scored, {summary.missing} missing, "
        f"{summary.skipped} skipped, {summary.above_threshold} >= {threshold}, "
        f"max score {summary.max_score:.3f}",
        err=True,
    )


@anomaly_app.command("evaluate")
def anomaly_evaluate(
    seeds: str = typer.Option(
        None,
        help="seeds: 3000-3004 or 3000,3002 (default: the held-out evaluation seeds 3000-3004)",
    ),
    dev: bool = typer.Option(False, "--dev", help="development seeds (1-999) only"),
    hours: float = typer.Option(12.0, help="simulated hours per scenario (2 of them train)"),
    step_s: float = typer.Option(30.0, "--step-s", help="seconds between readings"),
    threshold: float = typer.Option(None, help="alarm score (default: the incident config's)"),
    healthy_seeds: str = typer.Option(
        None,
        "--healthy-seeds",
        help="fault-free runs for false incidents per healthy day (default 3500; --dev: 21)",
    ),
    healthy_hours: float = typer.Option(24.0, "--healthy-hours", help="hours per fault-free run"),
    no_multivariate: bool = typer.Option(
        False, "--no-multivariate", help="leave the IsolationForest component out"
    ),
    json_out: Path = typer.Option(None, "--json", help="also write the results here"),
    check: bool = typer.Option(False, "--check", help="exit 1 if an acceptance target fails"),
) -> None:
    """Run the live scorer over simulator scenarios with injected faults and over fault-free
    runs; report incidents: recall, strict precision, incidents per fault, false incidents
    per healthy day and detection delay, per fault type and overall."""
    from experiments.anomaly.evaluate import DEFAULT_EVAL_SEEDS, SeedError, evaluate
    from experiments.anomaly.report import print_evaluation, write_json

    try:
        chosen = (
            _parse_seeds(seeds)
            if seeds
            else (list(range(1, 6)) if dev else list(DEFAULT_EVAL_SEEDS))
        )
    except ValueError as exc:
        typer.echo(f"error: --seeds: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        healthy = _parse_seeds(healthy_seeds) if healthy_seeds else None
    except ValueError as exc:
        typer.echo(f"error: --healthy-seeds: {exc}", err=True)
        raise typer.Exit(2) from exc

    def progress(seed, run, faults, incidents) -> None:
        found = (
            "fault-free"
            if faults is None
            else f"{faults['detected'].sum()}/{faults.height} faults detected"
        )
        typer.echo(
            f"seed {seed}: {run.samples:,} samples, {found}, {incidents.height} incidents, "
            f"{run.wall_s:.0f} s",
            err=True,
        )

    try:
        result = evaluate(
            chosen,
            dev=dev,
            hours=hours,
            step_s=step_s,
            threshold=threshold,
            multivariate=not no_multivariate,
            progress=progress,
            healthy_seeds=healthy,
            healthy_hours=healthy_hours,
        )
    except SeedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    print_evaluation(result)
    if json_out is not None:
        write_json(result, json_out)
    if check and not all(result.acceptance().values()):
        raise typer.Exit(1)


def _parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.strip().isdigit() or (dash and not hi.strip().isdigit()):
            raise ValueError(f"{part!r} is not N or N-M")
        out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    return out


# --- issue #20, part anom-real: the real-world evaluation ---------------------------------
@anomaly_app.command("evaluate-realworld")
def anomaly_evaluate_realworld(
    corpus: Path = typer.Option(
        ..., "--corpus", help="SKAB's data/ folder (or a SKAB checkout) at the pinned commit"
    ),
    download: bool = typer.Option(
        False, "--download", help="fetch the pinned SKAB recordings into --corpus first"
    ),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="a corpus in SKAB's format other than the pinned one"
    ),
    json_out: Path = typer.Option(None, "--json", help="also write the results here"),
    check: bool = typer.Option(
        False, "--check", help="exit 1 unless dctwin beats both baselines (held-out)"
    ),
) -> None:
    """dctwin's detector, a rolling z-score and IsolationForest on the SKAB corpus,
    scored with SKAB's own metrics (F1/FAR/MAR and NAB); see docs/anomaly.md."""
    import json

    import httpx

    from experiments.anomaly.realworld import evaluate_realworld, format_report
    from experiments.anomaly.skab import (
        SKAB_COMMIT,
        SKAB_LICENSE,
        SKAB_REPO,
        CorpusError,
        load_corpus,
    )
    from experiments.anomaly.skab import download as fetch_corpus

    try:
        if download:
            fetch_corpus(corpus / "data" if corpus.name != "data" else corpus)
        recordings = load_corpus(corpus, verify=not no_verify)
    except CorpusError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except (OSError, httpx.HTTPError) as exc:  # the network, a full disk
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    source = "unverified corpus" if no_verify else f"{SKAB_REPO}@{SKAB_COMMIT[:12]}"
    typer.echo(f"corpus: {source} ({SKAB_LICENSE}), {len(recordings)} recordings", err=True)
    result = evaluate_realworld(recordings)
    typer.echo(format_report(result))
    accept = result.acceptance()
    for name, ok in accept.items():
        typer.echo(f"dctwin beats both baselines, held-out, {name}: {'yes' if ok else 'NO'}")
    if json_out is not None:
        doc = {"corpus": source, **result.as_dict(), "acceptance": accept}
        json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if check and not (accept and all(accept.values())):
        raise typer.Exit(1)
