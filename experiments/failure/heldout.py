"""Held-out evaluation with failure mechanisms the features were not designed around
(issue 21): simulator runs whose failures come only from simulator/faults.py's
HELDOUT_CATALOG, scored by an existing model with the same metrics as `evaluate`, per
class and per failure mode. The protocol (seeds, hours, horizon, metrics) is fixed in
docs/failure-prediction.md, "Held-out failure modes", before any result was looked at.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from experiments.failure.dataset import HELDOUT_CATALOG_VERSION
from experiments.failure.evaluate import evaluate
from simulator.faults import HELDOUT_CATALOG
from twin.failure.model import FailureModel

# the protocol, fixed before the first run (docs/failure-prediction.md): 8 runs of 24 h,
# one year after the training seeds' season (seed k starts 2k days after 2025-01-15:
# 184-191 are 2026-01-17 ... 2026-01-31), never used by any other command
HELDOUT_SEEDS = "184-191"
TARGET_PRECISION = 0.8
TARGET_RECALL = 0.8
TARGET_LEAD_MIN = 30.0
# figures compared by the reproducibility check (everything but where the runs lie)
_COMPARED = ("horizon_s", "classes", "modes", "runs")


def by_mode(model: FailureModel, rows: pl.DataFrame) -> dict[str, dict]:
    """`evaluate`'s figures for each failure mode alone: the mode's episodes plus every
    device of its class that never fails (so each mode is charged with all of the class's
    false alarms on healthy devices, and with its own early alarms under `strict`)."""
    out: dict[str, dict] = {}
    modes = sorted(set(rows["fault"].drop_nulls()))
    for mode in modes:
        cls = rows.filter(pl.col("fault") == mode)["device_class"][0]
        sub = rows.filter(
            (pl.col("device_class") == cls)
            & ((pl.col("fault") == mode) | pl.col("failure_time").is_null())
        )
        res = evaluate(model, sub)["classes"].get(cls, {})
        out[mode] = {"class": cls, **res}
    return out


def meets_targets(res: dict) -> dict[str, bool | None]:
    """Each target for one class or mode: None where the figure is undefined."""

    def at_least(key: str, target: float) -> bool | None:
        v = res.get(key)
        return None if v is None else bool(v >= target)

    return {
        "precision_strict": at_least("precision_strict", TARGET_PRECISION),
        "recall": at_least("recall", TARGET_RECALL),
        "lead_min_p50": at_least("lead_min_p50", TARGET_LEAD_MIN),
    }


def heldout_report(model: FailureModel, rows: pl.DataFrame, runs: list[str]) -> dict:
    """Per class and per mode figures of `model` on held-out rows (run_rows of runs made
    with catalog="heldout"), with the targets each meets."""
    rep = evaluate(model, rows)
    rep["modes"] = by_mode(model, rows)
    for res in (*rep["classes"].values(), *rep["modes"].values()):
        res["meets_targets"] = meets_targets(res)
    rep["runs"] = sorted(runs)
    rep["heldout_catalog_version"] = HELDOUT_CATALOG_VERSION
    rep["heldout_modes"] = {m: t.device_class for m, t in HELDOUT_CATALOG.items()}
    rep["targets"] = {
        "precision_strict": TARGET_PRECISION,
        "recall": TARGET_RECALL,
        "lead_min_p50": TARGET_LEAD_MIN,
    }
    return rep


def comparable(rep: dict) -> str:
    """The figures of a report as canonical JSON, for the reproducibility check."""
    return json.dumps({k: rep.get(k) for k in _COMPARED}, sort_keys=True, default=str)


def write_report(rep: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep, indent=2, sort_keys=True, default=str))
