"""A small trained optimizer for tests: a short exploration run on a small site."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

from experiments.optimizer.dataset import explore, load_history, save_history
from simulator.sitegen import synthetic_site
from twin.optimizer.models import PlantModels, train

START = datetime(2025, 7, 1, tzinfo=UTC)


def small_site():
    return synthetic_site(64, racks_per_row=2)


def trained(db_path) -> tuple[PlantModels, duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(db_path))
    df = explore(
        small_site(), seed=11, start_s=START.timestamp(), hours=40, step_s=120.0, hold_s=720.0
    )
    save_history(con, df)
    return train(load_history(con), members=2), con
