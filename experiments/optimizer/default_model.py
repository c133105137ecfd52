"""`dctwin optimize train-default` (issue 19/26, opt-default): the optimizer model shipped
for the example site, made reproducibly (fixed seeds, periods, split, hyper-parameters).

Exploration runs of the example site's simulator go through the store path
(`explore_to_store` -> `samples`), the rows come from `twin/optimizer/history.py` (the
query a live site trains from), the models from `twin/optimizer/models.train`. The periods
cover the whole year (the demo runs at wall-clock time, any season) at modest cost:
DEFAULT_PERIODS periods of DEFAULT_PERIOD_DAYS days, DEFAULT_SPACING_DAYS apart.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from domain.site import load_site
from experiments.optimizer.dataset import explore_to_store
from ingest.store import Store
from twin.optimizer.history import training_rows
from twin.optimizer.models import HOLDOUT_FRACTION, PlantModels, train
from twin.optimizer.shipped import site_fingerprint

SITE_FILE = Path(__file__).resolve().parents[2] / "domain" / "sites" / "example.toml"
# fixed before training (issue 26): Jan, Mar, May, Jul, Sep, Nov 2024 (temperate climate)
DEFAULT_START = datetime(2024, 1, 8, tzinfo=UTC)
DEFAULT_PERIODS, DEFAULT_PERIOD_DAYS, DEFAULT_SPACING_DAYS = 6, 4.0, 61.0
DEFAULT_SEED, DEFAULT_STEP_S, DEFAULT_MEMBERS, DEFAULT_CLIMATE = 201, 120.0, 3, "temperate"


def windows(
    start: datetime = DEFAULT_START,
    periods: int = DEFAULT_PERIODS,
    period_days: float = DEFAULT_PERIOD_DAYS,
    spacing_days: float = DEFAULT_SPACING_DAYS,
) -> list[tuple[datetime, datetime]]:
    return [
        (
            start + timedelta(days=i * spacing_days),
            start + timedelta(days=i * spacing_days + period_days),
        )
        for i in range(periods)
    ]


def _offset(
    progress: Callable[[float], None] | None, done_h: float
) -> Callable[[float], None] | None:
    """A period's hours as hours of the whole run."""
    if progress is None:
        return None
    report = progress
    return lambda h: report(done_h + h)


def _explored(store: Store, begin: datetime, end: datetime) -> bool:
    row = store.con.execute(
        "SELECT count(*) FROM samples WHERE read_time >= ? AND read_time < ?",
        [begin.replace(tzinfo=None), end.replace(tzinfo=None)],
    ).fetchone()
    return bool(row and row[0] > 0)


def train_default(
    data_db: Path,
    out_root: Path,
    *,
    site_file: Path = SITE_FILE,
    periods: int = DEFAULT_PERIODS,
    period_days: float = DEFAULT_PERIOD_DAYS,
    log: Callable[[str], None] = print,
    progress: Callable[[float], None] | None = None,
) -> tuple[PlantModels, Path]:
    """Explore (or reuse the periods already in `data_db`), train, and write
    `<out_root>/<version>/` (model.pkl, meta.json, MODEL_CARD.md), replacing any previous
    shipped version. Returns the models and the version's directory."""
    site = load_site(site_file)
    wins = windows(periods=periods, period_days=period_days)
    store = Store(data_db)
    try:
        for i, (begin, end) in enumerate(wins):
            if _explored(store, begin, end):
                log(f"period {begin:%Y-%m-%d}: reusing the telemetry in {data_db}")
                continue
            log(
                f"period {begin:%Y-%m-%d}: exploring {period_days:g} days (seed {DEFAULT_SEED + i})"
            )
            explore_to_store(
                store.con,
                site,
                seed=DEFAULT_SEED + i,
                start_s=begin.timestamp(),
                hours=period_days * 24,
                climate=DEFAULT_CLIMATE,
                step_s=DEFAULT_STEP_S,
                progress=_offset(progress, i * period_days * 24),
            )
        history = pl.concat(
            [training_rows(store.cursor(), site, b, e, bucket_s=DEFAULT_STEP_S) for b, e in wins]
        )
    finally:
        store.close()
    log(f"training on {history.height} settled rows")
    models = train(history, members=DEFAULT_MEMBERS, seed=0)
    if out_root.is_dir():  # one shipped version at a time
        for old in out_root.iterdir():
            if old.is_dir():
                shutil.rmtree(old)
    vdir = out_root / models.version
    vdir.mkdir(parents=True)
    # gzip: the pickled trees compress ~3x; PlantModels.load reads either (mtime=0: same
    # bytes from the same models)
    (vdir / "model.pkl").write_bytes(gzip.compress(pickle.dumps(models), mtime=0))
    meta = _meta(models, site_file, site, wins, history, period_days)
    meta["model_bytes"] = (vdir / "model.pkl").stat().st_size
    (vdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (vdir / "MODEL_CARD.md").write_text(model_card(meta))
    return models, vdir


def _meta(
    models: PlantModels,
    site_file: Path,
    site: Any,
    wins: list[tuple[datetime, datetime]],
    history: pl.DataFrame,
    period_days: float,
) -> dict[str, Any]:
    from twin.failure.registry import code_version

    return {
        "version": models.version,
        "trained_at": models.trained_at,
        "code_version": code_version(),
        "site_id": site.site.id,
        "site_file": site_file.name,
        "site_fingerprint": site_fingerprint(site),
        "exploration": {
            "periods": [[b.isoformat(), e.isoformat()] for b, e in wins],
            "period_days": period_days,
            "seeds": [DEFAULT_SEED + i for i in range(len(wins))],
            "climate": DEFAULT_CLIMATE,
            "step_s": DEFAULT_STEP_S,
        },
        "members": DEFAULT_MEMBERS,
        "rows_settled": history.height,
        "rows_train": models.n_train,
        "rows_holdout": models.n_holdout,
        "holdout_fraction": HOLDOUT_FRACTION,
        "data_window": list(models.data_window or ()),
        "holdout_error": models.holdout_error,
        "calibration": None,
    }


def model_card(meta: dict[str, Any]) -> str:
    err = meta["holdout_error"]
    rows = "\n".join(
        f"| {t} | {e['mean']:.2f} | {e['mae']:.3f} | {e['rmse']:.3f} |" for t, e in err.items()
    )
    g = err.get("gpu_temp_max_c", {})
    periods = ", ".join(f"{b[:10]}" for b, _ in meta["exploration"]["periods"])
    return f"""# Optimizer default model {meta["version"]}

Made by `dctwin optimize train-default` (`make optimizer-model`,
experiments/optimizer/default_model.py); code {meta["code_version"]}, trained
{meta["trained_at"]}. Served by `dctwin serve` / `dctwin demo` when the site has no model
of its own, and only to the site it was trained on (fingerprint
`{meta["site_fingerprint"]}` of {meta["site_file"]}, site `{meta["site_id"]}`).

## Data

Stored telemetry of exploration runs of the simulator on {meta["site_file"]}, through
the store path (`explore_to_store` -> `samples`; rows by `twin/optimizer/history.py`):
{len(meta["exploration"]["periods"])} periods of {meta["exploration"]["period_days"]:g} days
starting {periods} (seeds {meta["exploration"]["seeds"][0]}–{meta["exploration"]["seeds"][-1]},
climate {meta["exploration"]["climate"]}, read interval {meta["exploration"]["step_s"]:g} s).
Data window {meta["data_window"][0]} … {meta["data_window"][1]}.

## Split

Time ordered: the last {meta["holdout_fraction"]:.0%} of the {meta["rows_settled"]} settled
rows (in time: the November period) are held out ({meta["rows_holdout"]} rows); the models
train on the first {meta["rows_train"]}. Fixed before training; no tuning on the held-out rows.

## Features and models

As docs/optimizer.md "Models": setpoints (chw, condenser, CDU supply, CDU dp, CRAH supply,
economizer) and state (GPU utilization mean and p95, outdoor dry and wet bulb), plus the four
physics differences; one HistGradientBoostingRegressor per outcome, {meta["members"]}-member
bootstrap ensembles for the power terms, monotonic constraints, split-conformal GPU bound.

## Held-out error

| outcome | mean | MAE | RMSE |
|---|---|---|---|
{rows}

GPU upper bound offset +{g.get("upper_bound_offset_k", float("nan")):.2f} K, coverage
{100 * g.get("upper_bound_coverage", float("nan")):.1f} % on the second held-out half.

## Known limits

* Simulator data only, one site: a real site gets no shipped model (fingerprint mismatch)
  and should train its own from its history.
* Predicted savings are **not calibrated** (factor 1). On the 256-GPU evaluation site
  (docs/optimizer.md "Results") the calibration week gave no usable shrinkage and the
  median realised/predicted per recommendation predicted >= 1 kW was 0.008 (summer) and
  -0.003 (shoulder) against the 0.8–1.2 target: single predicted savings run high. The
  shoulder-week cooling target (>= 25 %) was missed there (11.8 %), and the shoulder day's
  share of the true optimum was 88.6 % (target 90 %). This model was not put through the
  closed-loop evaluation.
* Short exploration ({len(meta["exploration"]["periods"])} x {meta["exploration"]["period_days"]:g}
  days for cost): states outside the trained domain (weather or load not seen) give no
  recommendation (out of distribution), by design.
"""
