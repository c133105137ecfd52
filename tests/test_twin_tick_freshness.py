"""How API requests get the twin's tick (issue 24's p99): the last tick while it is fresh,
the last one while another caller is making the next (up to twice the tick interval),
and a wait only past that."""

from __future__ import annotations

import dataclasses
import threading
import time

from domain.site import Site
from ingest.store import Store
from twin.state import Twin, now_ms
from twin.twin_config import TwinConfig


def _aged(twin: Twin, age_s: float) -> None:
    """Make the last tick look `age_s` old."""
    assert twin.last is not None
    twin.last = dataclasses.replace(twin.last, time_ms=now_ms() - int(age_s * 1000))


def test_tick_without_waiting_serves_the_last_tick_up_to_twice_the_interval(
    tmp_path, site: Site
) -> None:
    store = Store(tmp_path / "t.duckdb")
    try:
        twin = Twin(site, store, config=TwinConfig(tick_interval_s=10.0))
        assert twin.tick_without_waiting() == (None, True)  # no tick yet: the caller waits
        first = twin.tick()
        tick, due = twin.tick_without_waiting()
        assert tick is first and not due
        _aged(twin, 15.0)
        tick, due = twin.tick_without_waiting()
        assert tick is twin.last and due  # served, and the next one is due
        twin._ticking = True  # ... unless a caller is making it already
        assert twin.tick_without_waiting()[1] is False
        twin._ticking = False
        _aged(twin, 25.0)
        assert twin.tick_without_waiting() == (None, True)  # too old to serve
    finally:
        store.close()


def test_current_serves_the_last_tick_while_another_caller_ticks(tmp_path, site: Site) -> None:
    store = Store(tmp_path / "t.duckdb")
    try:
        twin = Twin(site, store, config=TwinConfig(tick_interval_s=10.0))
        twin.tick()
        held, release = threading.Event(), threading.Event()

        def ticking() -> None:  # holds the tick lock as a tick in progress does
            with twin._lock:
                held.set()
                release.wait(10)

        t = threading.Thread(target=ticking)
        t.start()
        held.wait(5)
        try:
            _aged(twin, 15.0)
            stale = twin.last
            t0 = time.perf_counter()
            assert twin.current() is stale  # no wait behind the tick in progress
            assert time.perf_counter() - t0 < 0.5
            _aged(twin, 25.0)
            threading.Timer(0.3, release.set).start()
            t0 = time.perf_counter()
            fresh = twin.current()  # too old: waits for the lock, then ticks
            assert time.perf_counter() - t0 >= 0.25
            assert fresh is not stale and now_ms() - fresh.time_ms < 5_000
        finally:
            release.set()
            t.join()
    finally:
        store.close()
