"""The default failure model shipped with the package, and its model card.

`dctwin failure train-default` (`make failure-model`) is the single source of the
artifact: it simulates fixed seeds, splits them in time order, trains, evaluates on the
internal test runs and on later held-out seeds, and writes
`twin/failure/default_model/<version>/` (model.joblib, meta.json, MODEL_CARD.md). Every
figure in the card is rendered from meta.json, which holds the command's own output.

Deterministic: the simulator, the split and the classifiers are seeded, so the same
command gives the same model.joblib (its sha256 names the version) and the same figures;
meta.json differs only in `created` and `code_version`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import joblib  # type: ignore[import-untyped]  # no stubs or py.typed
import polars as pl
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

from twin.failure import registry

CARD = "MODEL_CARD.md"


@dataclass(frozen=True)
class DefaultSpec:
    """What the shipped default is trained on. 12 training seeds rather than the 16 of
    docs/failure-prediction.md's reference run, and 4 held-out seeds rather than 8: 16
    runs to simulate instead of 24 (~15 s each on an idle 2-core machine); the cost is 6
    training runs instead of 9 and fewer held-out episodes (MODEL_CARD.md)."""

    seeds: list[int] = field(default_factory=lambda: list(range(1, 13)))
    heldout_seeds: list[int] = field(default_factory=lambda: [31, 32, 33, 34])
    hours: float = 24.0
    step_s: float = 30.0
    gpus: int = 128
    horizon_s: float = 3600.0
    calibrate_runs: int = 5
    test_runs: int = 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_default(
    data: Path,
    out_root: Path = registry.SHIPPED_ROOT,
    spec: DefaultSpec | None = None,
    log: Callable[[str], None] = print,
) -> registry.ModelVersion:
    """Train, evaluate and write the shipped default; replaces any earlier one in
    `out_root` (one default per horizon)."""
    from experiments.failure.dataset import CATALOG_VERSION, RunSpec, generate
    from experiments.failure.evaluate import evaluate, load_rows, loss_delays
    from twin.failure.model import FailureModel, check_disjoint, time_split

    spec = spec or DefaultSpec()

    def runs(seeds: list[int]) -> list[Path]:
        out = []
        for s in seeds:
            out.append(generate(RunSpec(s, spec.hours, spec.step_s, spec.gpus), data))
            log(f"run {out[-1].name}")
        return out

    paths = runs(spec.seeds)
    # one DuckDB thread: parallel float sums differ by ~1e-13 from run to run, enough to
    # move a Platt threshold in the 5th decimal and change the model file's hash
    rows = load_rows(paths, spec.horizon_s, threads=1)
    split = time_split(rows, spec.horizon_s, spec.calibrate_runs, spec.test_runs)
    # one OpenMP thread: the same trees on any machine, and on a loaded 2-core machine
    # spinning threads cost ~20x the CPU
    with threadpool_limits(1):
        model = FailureModel(spec.horizon_s).fit(split.train, split.calibrate, progress=log)
    internal = evaluate(model, split.test)
    held_paths = runs(spec.heldout_seeds)
    held_rows = load_rows(held_paths, spec.horizon_s, threads=1)
    # the held-out runs start after everything the model saw, labels' horizon included
    check_disjoint(
        pl.concat([split.calibrate, split.test], how="diagonal_relaxed"),
        held_rows,
        spec.horizon_s,
        ("training data", "held-out runs"),
    )
    held = evaluate(model, held_rows)
    held["telemetry_loss"] = loss_delays(held_paths)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_model = Path(tmp) / "model.joblib"
        joblib.dump(model, tmp_model)
        sha = _sha256(tmp_model)
        version = f"default-h{int(spec.horizon_s)}s-{sha[:12]}"

        def window(df: pl.DataFrame) -> list[str]:
            return [
                cast(datetime, df["t"].min()).isoformat(),
                cast(datetime, df["t"].max()).isoformat(),
            ]

        meta = {
            "version": version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "horizon_s": spec.horizon_s,
            "code_version": registry.code_version(),
            "model_sha256": sha,
            "approved": True,  # shipped: serving falls back to it without an approval
            "approved_at": None,
            "training_data": (
                f"simulator runs (fault catalog {CATALOG_VERSION}), "
                f"{spec.gpus}-GPU synthetic site, {spec.hours:g} h each"
            ),
            "spec": asdict(spec),
            "features": {c: m.features for c, m in model.classes.items()},
            "thresholds": {c: m.threshold for c, m in model.classes.items()},
            "calibration": {c: m.calibration for c, m in model.classes.items()},
            "data_window": {
                "train": window(split.train),
                "calibrate": window(split.calibrate),
                "test": window(split.test),
                "heldout": window(held_rows),
            },
            "runs": {
                "train": _in_time_order(split.train),
                "calibrate": _in_time_order(split.calibrate),
                "test": _in_time_order(split.test),
                "heldout": [p.stem for p in held_paths],
            },
            "simulation": {"hours": spec.hours, "step_s": spec.step_s, "gpus": spec.gpus},
            "metrics": internal,
            "validation": {
                "method": (
                    f"held-out simulator seeds {spec.heldout_seeds[0]}-"
                    f"{spec.heldout_seeds[-1]}, strictly later in time than training"
                ),
                **held,
            },
        }
        meta = json.loads(json.dumps(meta, default=str))
        out_root.mkdir(parents=True, exist_ok=True)
        for old in out_root.iterdir():  # one shipped default per horizon
            if old.is_dir() and old.name.startswith(f"default-h{int(spec.horizon_s)}s-"):
                shutil.rmtree(old)
        path = out_root / version
        path.mkdir()
        shutil.copyfile(tmp_model, path / "model.joblib")
    # insertion order (deterministic): the card lists classes as meta.json does
    (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (path / CARD).write_text(model_card(meta))
    return registry.ModelVersion(version, path, meta)


def _in_time_order(rows: pl.DataFrame) -> list[str]:
    return rows.group_by("run").agg(pl.col("t").min()).sort("t")["run"].to_list()


def _f(x: object, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def figures_table(classes: dict) -> str:
    """Markdown table of an `evaluate` report's per-class figures."""
    lines = [
        "| class | episodes | positive rows | PR-AUC | threshold | precision (strict) "
        "| recall | lead p10/p50/p90 min | caught | false-alarm devices |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cls, r in classes.items():
        lead = "/".join(
            _f(r.get(k), "{:.0f}") for k in ("lead_min_p10", "lead_min_p50", "lead_min_p90")
        )
        lines.append(
            f"| {cls} | {r.get('episodes', 0)} | {r.get('positives', 0)} | "
            f"{_f(r.get('pr_auc'))} | {_f(r.get('threshold'))} | "
            f"{_f(r.get('precision_strict'))} | {_f(r.get('recall'))} | {lead} | "
            f"{r.get('episodes_caught', 0)}/{r.get('episodes', 0)} | "
            f"{r.get('false_alarm_devices', '-')} |"
        )
    return "\n".join(lines)


def model_card(meta: dict) -> str:
    """MODEL_CARD.md, rendered from meta.json alone (tests re-render and compare)."""
    spec = meta["spec"]
    loss = meta["validation"].get("telemetry_loss") or {}
    runs = meta["runs"]
    horizon_min = meta["horizon_s"] / 60
    return f"""# Failure-risk model card: `{meta["version"]}`

The default model shipped with dctwin. Serving uses it until the site approves a model
of its own (`dctwin failure retrain` / `approve`); the API says which one serves
(`GET /v1/failure-models`, `model` in `GET /v1/failure-risk`).

Made by `dctwin failure train-default` (`make failure-model`), the only source of this
directory: every figure below is copied from that command's output (meta.json).
Created {meta["created"]} at code version `{meta["code_version"]}`;
model.joblib sha256 `{meta["model_sha256"]}`.

## Data

* {meta["training_data"]}, one simulated read every {spec["step_s"]:g} s.
* Simulator seeds {spec["seeds"][0]}-{spec["seeds"][-1]}, split by whole runs in time order:
  train {", ".join(runs["train"])};
  calibrate {", ".join(runs["calibrate"])};
  internal test {", ".join(runs["test"])}.
* Held out: seeds {", ".join(str(s) for s in spec["heldout_seeds"])}
  ({meta["data_window"]["heldout"][0]} to {meta["data_window"]["heldout"][1]}), strictly
  later than the training data (checked: LeakageError otherwise), never used to develop it.
* Each run: ECC storms, aging PSUs, a degrading pump, a coolant leak, two CRAH fan
  failures, a GPU off the bus, and non-failing look-alikes (fouling, TIM wear, sensor
  drift, driver reloads); experiments/failure/dataset.py.

## What it predicts

* Classes: {", ".join(meta["features"])} (one calibrated gradient-boosting classifier each;
  calibration: {", ".join(f"{c} {m}" for c, m in meta["calibration"].items())}).
* Horizon: {meta["horizon_s"]:.0f} s ({horizon_min:g} min): the probability that the device
  fails within it. Telemetry loss (GPU off the bus) is a rule, not the classifier.
* Operating thresholds: {", ".join(f"{c} {t:.3f}" for c, t in meta["thresholds"].items())}.

## Held-out figures ({meta["validation"]["method"]})

{figures_table(meta["validation"]["classes"])}

Telemetry-loss failures: {loss.get("loss_within_2_reads", "-")}/{loss.get("loss_failures", "-")}
flagged within 2 read intervals (all signals),
{loss.get("silence_only_within_2_reads", "-")}/{loss.get("loss_failures", "-")} from silence alone.

## Internal test ({", ".join(runs["test"])})

{figures_table(meta["metrics"]["classes"])}

## Known limits

* Trained and measured on simulated failures only: the simulator's fault physics decide
  what is learnable, and the features were designed with those faults in view. Real
  fleets have rarer failures, other failure mechanisms, more look-alikes and label noise.
* A {spec["gpus"]}-GPU synthetic site: thresholds are calibrated on its device mix; a
  site's own records (`dctwin failure import-records`, `dctwin failure retrain`) replace
  it once they beat it on the site's latest period.
* Few failure episodes per class (a few a run): figures on a few dozen episodes vary by
  ~0.1 from one slice of runs to the next.
"""
