"""Where the anomaly fit's memory goes (issue 24): one warm-start refresh, profiled.

`python -m bench.anomaly_fit_memory STORE [--max-samples N] [--duckdb-memory-limit L]`
opens STORE (a copy: the service writes its tables) with the example site, runs
`AnomalyService.refresh` once (the first fit on the stored history, then the newest
interval scored) and prints, per phase (reading the grid, class frames, each residual
and multivariate fit, priming the streaming states), RSS before and after and the peak
in between (sampled every 10 ms by a thread), then VmHWM and DuckDB's own memory. For
polars' allocator as `dctwin serve` sets it, run with `_RJEM_MALLOC_CONF` from
`dctwin.POLARS_MALLOC_CONF` in the environment (polars reads it when it loads).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import polars as pl

import twin.anomaly.fleet as fleet
import twin.anomaly.service as svc
from domain.site import EXAMPLE_SITE, load_site
from ingest.store import Store


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class _Peak:
    def __init__(self) -> None:
        self.value = 0.0
        self.depth = 0
        self.stop = False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop:
            self.value = max(self.value, _rss_mb())
            time.sleep(0.01)

    def wrap(self, owner: Any, name: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)

        def phase(*args: Any, **kwargs: Any) -> Any:
            before, outer = _rss_mb(), self.value
            self.value = before
            t = time.perf_counter()
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
                peak = self.value
                print(
                    f"{'  ' * self.depth}{name}: RSS {before:.0f} -> {_rss_mb():.0f} MB, "
                    f"peak {peak:.0f} MB, {time.perf_counter() - t:.1f} s",
                    flush=True,
                )
                self.value = max(outer, peak)
            if isinstance(out, pl.DataFrame):
                print(
                    f"{'  ' * self.depth}  frame {out.shape}, {out.estimated_size() / 1e6:.0f} MB"
                )
            return out

        setattr(owner, name, phase)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--max-samples", type=int, default=svc.AnomalyServiceConfig().fit_max_samples)
    ap.add_argument("--duckdb-memory-limit", default="512MB")
    args = ap.parse_args()
    peak = _Peak()
    for owner, name in (
        (svc.AnomalyService, "_fit"),
        (svc.AnomalyService, "_fit_frames"),
        (svc.AnomalyService, "_presence"),
        (fleet.FleetScorer, "_prime"),
        (fleet.FleetScorer, "_mv_features"),
        (fleet, "fit_residual"),
        (fleet, "fit_multivariate"),
    ):
        if hasattr(owner, name):  # (older code lacks some phases)
            peak.wrap(owner, name)
    print(f"start: RSS {_rss_mb():.0f} MB")
    store = Store(args.store, memory_limit=args.duckdb_memory_limit)
    config = svc.AnomalyServiceConfig(fit_max_samples=args.max_samples)
    service = svc.AnomalyService(load_site(EXAMPLE_SITE), store, config)
    print(f"service: RSS {_rss_mb():.0f} MB")
    t = time.perf_counter()
    scored = service.refresh(datetime(2100, 1, 1))
    peak.stop = True
    print(f"{scored} interval(s) scored in {time.perf_counter() - t:.0f} s: {service.status}")
    print(f"RSS {_rss_mb():.0f} MB, VmHWM {_rss_mb('VmHWM'):.0f} MB")
    mem = store.cursor().execute(
        "SELECT tag, memory_usage_bytes // 1000000 FROM duckdb_memory() "
        "WHERE memory_usage_bytes > 0"
    )
    print("DuckDB MB:", dict(mem.fetchall()))
    store.close()


if __name__ == "__main__":
    main()
