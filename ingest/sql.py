"""DuckDB helpers shared by the store and the twin."""

from __future__ import annotations

from typing import Any

import duckdb


def one_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (an aggregate without GROUP BY,
    an INSERT ... RETURNING): `fetchone()` without the None of an exhausted result."""
    row = result.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return row
