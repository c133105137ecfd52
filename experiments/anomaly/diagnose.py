"""Which detector components raise the alarms on a (healthy) development run.

    python -m experiments.anomaly.diagnose --seed 21 --healthy --hours 12 \
        --save var/anomaly-diag/s21
    python -m experiments.anomaly.diagnose --scores var/anomaly-diag/s21

Runs one development scenario through the live scorer exactly as `dctwin anomaly evaluate`
does (or reads a saved score stream), then counts alarming intervals (score >= 0.6) per
device class and top component, and the devices behind them, per half hour. Development
seeds only (issue 20 part anom2: how the false incidents of a healthy day were traced).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from experiments.anomaly.evaluate import check_seeds, make_scenario, run_scenario

ALARM = 0.6


def breakdown(scores: pl.DataFrame, devices: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(alarming intervals and devices per class and component, devices per half hour)."""
    s = scores.join(devices.select("device_id", "device_class"), on="device_id")
    a = s.filter(pl.col("score") >= ALARM)
    by_comp = (
        a.group_by("device_class", "top_component")
        .agg(
            intervals=pl.len(),
            devices=pl.col("device_id").n_unique(),
            strong=(pl.col("score") >= 0.9).sum(),
        )
        .sort("intervals", descending=True)
    )
    b0 = s["bucket"].min()
    by_time = (
        a.with_columns(half_h=(pl.col("bucket") - b0) // 60)
        .group_by("half_h", "device_class")
        .agg(devices=pl.col("device_id").n_unique())
        .pivot(on="device_class", index="half_h", values="devices")
        .sort("half_h")
    )
    return by_comp, by_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--healthy", action="store_true")
    ap.add_argument("--hours", type=float, default=12.0)
    ap.add_argument("--save", type=Path, help="write scores/devices/incidents parquet here")
    ap.add_argument("--scores", type=Path, help="read a saved run instead of simulating")
    a = ap.parse_args()
    if a.scores is not None:
        scores = pl.read_parquet(a.scores / "scores.parquet")
        devices = pl.read_parquet(a.scores / "devices.parquet")
        incidents = pl.read_parquet(a.scores / "incidents.parquet")
    else:
        if a.seed is None:
            ap.error("--seed or --scores")
        check_seeds([a.seed], dev=True)
        run = run_scenario(make_scenario(a.seed, a.hours, healthy=a.healthy))
        scores, devices, incidents = run.scores, run.devices, run.incidents
        if a.save is not None:
            a.save.mkdir(parents=True, exist_ok=True)
            scores.write_parquet(a.save / "scores.parquet")
            devices.write_parquet(a.save / "devices.parquet")
            incidents.write_parquet(a.save / "incidents.parquet")
    by_comp, by_time = breakdown(scores, devices)
    with pl.Config(tbl_rows=60, tbl_width_chars=200):
        print(f"incidents {incidents.height}")
        print(by_comp)
        print(by_time)


if __name__ == "__main__":
    main()
