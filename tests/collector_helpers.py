"""Shared by the collector daemon tests: a recording source, misbehaving sources, a small
config, and DuckDB checks."""

from __future__ import annotations

import threading

from collectors.base import Readings
from collectors.daemon_config import CollectorConfig
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from ingest.store import Store
from tests.helpers import wait_for  # noqa: F401 (re-exported for the collector tests)

RACKS = ["rk101", "rk102"]
FAST_KAFKA = {"max_block_ms": 500, "request_timeout_ms": 1000, "delivery_timeout_ms": 1500}


class RecordingSource:
    """A simulated source that keeps a copy of everything it hands to the daemon.
    While `quiet` is set it reads nothing (so the test can pick a moment with no send
    in flight without stopping the daemon)."""

    def __init__(self, racks: list[str] = RACKS, name: str = "sim") -> None:
        self.inner = SimulatedSource(SimulatedSourceConfig(name=name, racks=racks, seed=5))
        self.name = name
        self.taken: list[Readings] = []
        self.quiet = threading.Event()
        self.reads = 0

    def read(self) -> Readings:
        if self.quiet.is_set():
            return Readings()
        r = self.inner.read()
        self.taken.append(r)
        self.reads += 1
        return r

    def rows(self) -> list[tuple[str, str, int, float]]:
        return sorted(
            (d, m, t, v)
            for r in self.taken
            for d, m, t, v in zip(r.device_id, r.metric, r.read_time_ms, r.value, strict=True)
        )

    def close(self) -> None:
        pass


class StuckSource:
    """A device that never answers (until released)."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()

    def read(self) -> Readings:
        self.release.wait(60)
        return Readings()

    def close(self) -> None:
        pass


class BrokenSource:
    name = "broken"

    def read(self) -> Readings:
        raise ConnectionRefusedError("device at 10.0.0.9:502 refused the connection")

    def close(self) -> None:
        pass


def config(name: str, bootstrap: str, spool_dir, **extra) -> CollectorConfig:
    raw = {
        "name": name,
        "site": "sv1",
        "interval_s": 0.3,
        "kafka": {"bootstrap": bootstrap, "compression": "zstd", **FAST_KAFKA},
        "spool": {
            "dir": str(spool_dir),
            "replay_backoff_initial_s": 0.2,
            "replay_backoff_max_s": 0.5,
        },
        "sources": [{"type": "simulated", "racks": RACKS}],
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return CollectorConfig.model_validate(raw)


def stored_rows(store: Store, racks: list[str]) -> list[tuple[str, str, int, float]]:
    return sorted(
        store.cursor()
        .execute(
            "SELECT device_id, metric, epoch_ms(read_time), value FROM samples "
            "WHERE rack IN (SELECT unnest(?)) ORDER BY ALL",
            [racks],
        )
        .fetchall()
    )


def assert_in_read_order(store: Store, racks: list[str]) -> None:
    """Rows are appended in the order ingest stored them (rowid), so per device and metric
    the read times must increase along rowid."""
    bad = (
        store.cursor()
        .execute(
            """
        SELECT count(*) FROM (
            SELECT read_time - lag(read_time) OVER (PARTITION BY device_id, metric
                                                    ORDER BY rowid) AS step
            FROM samples WHERE rack IN (SELECT unnest(?)))
        WHERE step <= INTERVAL 0 SECOND""",
            [racks],
        )
        .fetchone()[0]
    )
    assert bad == 0, f"{bad} samples stored out of read order"
