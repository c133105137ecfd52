"""`make bench`: run every benchmark module in bench/ and print one table."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

from rich.console import Console

import bench
from bench.harness import Result, peak_rss_mb, print_table


def main(quick: bool = False, only: str | None = None) -> int:
    # a pipe (CI, tee) gets a wide table instead of 80-column wrapping
    console = Console() if sys.stdout.isatty() else Console(width=200)
    results: list[Result] = []
    failed = False
    for mod in sorted(m.name for m in pkgutil.iter_modules(bench.__path__)):
        if not mod.startswith("bench_") or (only and only not in mod):
            continue
        console.print(f"[bold]running {mod}[/]")
        try:
            results += importlib.import_module(f"bench.{mod}").run(quick=quick)
        except Exception:
            failed = True
            console.print(f"[red]{mod} failed[/]\n{traceback.format_exc()}")
    results.append(Result("whole bench process", "peak RSS MB", peak_rss_mb()))
    print_table(results, console)
    return 1 if failed or any(r.ok is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
