"""Test helpers that drive real components (broker, DuckDB) until a condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable

from ingest.consumer import Ingestor


def ingest_until(ingestor: Ingestor, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; "
                                 f"stats={ingestor.stats}")
        ingestor.poll_once(timeout_ms=300)
