"""Run-out estimators compared on the development scenarios only (issue 27 part whatif2;
docs/capacity.md "Run-out, second look"). Not a product path: the record of a choice.

    python -m experiments.capacity_variants [--cache DIR]

Each variant changes one thing of `twin.capacity.forecast` and reports the development
run-outs within 10 % and the pooled coverage. `--cache DIR` keeps the simulated hourly
series (`dev_<name>.npz`) so that a second run skips the simulation.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import experiments.capacity_eval as ce
import twin.capacity.forecast as fc_mod
from twin.capacity.forecast import Forecast, ForecastConfig, daily

FORECAST = fc_mod.forecast
LAD = fc_mod._lad


def _window(days: int) -> Callable[..., Forecast]:
    def forecast(t, y, temp=None, cfg=None) -> Forecast:
        n = days * 24
        return FORECAST(t[-n:], y[-n:], None if temp is None else temp[-n:], cfg)

    return forecast


def _no_weather(t, y, temp=None, cfg=None) -> Forecast:
    return FORECAST(t, y, None, cfg)


def _quantile(q: float) -> Callable[..., Forecast]:
    """Quantile regression of the daily peaks (IRLS with asymmetric weights)."""

    def fit(x: np.ndarray, y: np.ndarray, iterations: int = 60) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        eps = 1e-6 * max(float(np.abs(y).mean()), 1.0)
        for _ in range(iterations):
            r = y - x @ coef
            w = np.sqrt(np.where(r > 0, q, 1 - q) / np.maximum(np.abs(r), eps))
            coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
        return coef

    def forecast(t, y, temp=None, cfg=None) -> Forecast:
        fc_mod._lad = fit
        try:
            return FORECAST(t, y, temp, cfg)
        finally:
            fc_mod._lad = LAD

    return forecast


def _smoothed(t, y, temp=None, cfg=None) -> Forecast:
    """Run-out on the truth's own smoothing: a centred 7-day running median of the
    forecast peaks (the last 3 history days before it)."""
    f = FORECAST(t, y, temp, cfg)
    _d, peaks, _t = daily(t, y)
    f.peak_kw = ce._running_median(np.concatenate([peaks[-3:], f.peak_kw]), 7)[3:]
    return f


VARIANTS: dict[str, Callable[..., Forecast]] = {
    "current": FORECAST,
    "window-28d": _window(28),
    "window-42d": _window(42),
    "no-weather": _no_weather,
    "quantile-0.4": _quantile(0.4),
    "quantile-0.6": _quantile(0.6),
    "running-median": _smoothed,
}


@contextmanager
def _using(forecast: Callable[..., Forecast]) -> Iterator[None]:
    ce.forecast = forecast
    try:
        yield
    finally:
        ce.forecast = FORECAST


def dev_data(cache: Path | None) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for sc in ce.DEV_SCENARIOS:
        path = None if cache is None else cache / f"dev_{sc.name}.npz"
        if path is not None and path.exists():
            out[sc.name] = dict(np.load(path))
            continue
        out[sc.name] = ce.simulate_hourly(sc)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **out[sc.name])
    return out


def compare(data: dict[str, dict[str, np.ndarray]]) -> list[str]:
    lines = []
    for name, forecast in VARIANTS.items():
        within = total = 0
        held = inside = 0.0
        with _using(forecast):
            for sc in ce.DEV_SCENARIOS:
                for series in ("power_kw", "cooling_kw"):
                    r = ce.evaluate_series(
                        sc.name,
                        series,
                        data[sc.name],
                        sc.history_days * 24,
                        ForecastConfig(horizon_days=sc.heldout_days),
                    )
                    within += sum(ro["within_10pct"] for ro in r.runouts)
                    total += len(r.runouts)
                    held += r.n_heldout
                    inside += r.coverage * r.n_heldout
        lines.append(
            f"{name:15} run-outs within 10 %: {within}/{total}  coverage {inside / held:.3f}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    for line in compare(dev_data(args.cache)):
        print(line)


if __name__ == "__main__":
    main()
