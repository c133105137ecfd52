"""Printing and saving an evaluation (the table `dctwin anomaly evaluate` shows)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiments.anomaly.evaluate import Evaluation


def _fmt(v, pct: bool = False, digits: int = 1) -> str:
    if v is None or v != v:  # None or NaN
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def print_evaluation(ev: Evaluation, console: Console | None = None) -> None:
    console = console or Console(width=160)
    cfg = ev.config
    console.print(
        f"[bold]Anomaly incidents on simulator seeds {ev.seeds}[/] "
        f"({cfg['hours']:.0f} h each at {cfg['step_s']:.0f} s intervals, first "
        f"{cfg['train_h']:.0f} h for training; alarm at score >= "
        f"{cfg['incidents']['alarm_score']}); fault-free seeds {ev.healthy_seeds} "
        f"({cfg['healthy_hours']:.0f} h each)"
    )
    t = Table(title="per fault type (an interval = one reading period)")
    for col in (
        "fault",
        "signature",
        "faults",
        "detected",
        "recall",
        "median delay (intervals)",
        "median incidents per fault",
        "before failure",
        "first root cause (example)",
    ):
        t.add_column(col, justify="left" if col in ("fault", "signature") else "right")
    for r in ev.by_type.iter_rows(named=True):
        t.add_row(
            r["fault"],
            r["signature"],
            str(r["n"]),
            str(r["detected"]),
            _fmt(r["recall"], pct=True),
            _fmt(r["median_delay_intervals"]),
            _fmt(r["median_incidents"]),
            _fmt(r["before_failure"], pct=True),
            r["detected_by"] or "-",
        )
    console.print(t)
    s = ev.summary
    console.print(
        f"faults {s['faults']}, recall {_fmt(s['recall'], pct=True)}; incidents "
        f"{s['incidents']} (from {s['alarm_events']} alarm events), false {s['false_incidents']}: "
        f"STRICT precision {_fmt(s['precision_strict'], pct=True)} (topological "
        f"{_fmt(s['precision_topological'], pct=True)}); median incidents per fault "
        f"{_fmt(s['median_incidents_per_fault'])}; false incidents per healthy day "
        f"{_fmt(s['false_incidents_per_healthy_day'])} ({s['healthy_incidents']} in "
        f"{s['healthy_days']:.2f} days); abrupt median delay "
        f"{_fmt(s['abrupt_median_delay_intervals'])} intervals; gradual faults detected "
        f"before failure {_fmt(s['gradual_before_failure'], pct=True)}"
    )
    for name, ok in ev.acceptance().items():
        console.print(f"  {'[green]met[/]' if ok else '[red]NOT met[/]'}: {name}")


def write_json(ev: Evaluation, path: Path) -> None:
    doc = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seeds": ev.seeds,
        "healthy_seeds": ev.healthy_seeds,
        "config": ev.config,
        "summary": ev.summary,
        "acceptance": ev.acceptance(),
        "by_type": ev.by_type.to_dicts(),
        "faults": ev.faults.to_dicts(),
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
