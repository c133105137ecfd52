"""A small trained optimizer for tests: a short exploration run on a small site, its
telemetry stored in a real Store, the models learned from the stored telemetry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from experiments.optimizer.dataset import explore_to_store
from ingest.store import Store
from simulator.sitegen import synthetic_site
from twin.optimizer.history import training_rows
from twin.optimizer.models import PlantModels, train

START = datetime(2025, 7, 1, tzinfo=UTC)
HOURS = 40.0


def small_site():
    return synthetic_site(64, racks_per_row=2)


def trained(db_path) -> tuple[PlantModels, pl.DataFrame]:
    """(models, the settled training rows they learned from)."""
    store = Store(db_path)
    try:
        explore_to_store(
            store.con,
            small_site(),
            seed=11,
            start_s=START.timestamp(),
            hours=HOURS,
            step_s=120.0,
            hold_s=720.0,
        )
        rows = training_rows(
            store.cursor(), small_site(), START, START + timedelta(hours=HOURS + 1), 120.0
        )
    finally:
        store.close()
    return train(rows, members=2), rows
