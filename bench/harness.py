"""Benchmark results and the table `make bench` prints."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass
class Result:
    benchmark: str
    figure: str  # e.g. "samples/s", "ms per tick", "p99 ms", "peak RSS MB"
    value: float
    target: str = ""  # human form, e.g. ">= 1,000,000"
    ok: bool | None = None  # None: no target
    baseline: float | None = None  # same figure for the naive implementation, same process
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def print_table(results: list[Result], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="dctwin benchmarks")
    for col in ("benchmark", "figure", "value", "target", "ok", "baseline", "ratio", "note"):
        table.add_column(col, justify="right" if col in ("value", "baseline", "ratio") else "left")
    for r in results:
        table.add_row(
            r.benchmark,
            r.figure,
            f"{r.value:,.2f}",
            r.target,
            {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[r.ok],
            "" if r.baseline is None else f"{r.baseline:,.2f}",
            "" if r.ratio is None else f"{r.ratio:,.1f}x",
            r.note,
        )
    console.print(table)
