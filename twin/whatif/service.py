"""What-if runs as background jobs: validated on submit, run on a bounded executor the
server owns, progress and cancellation per run, every run stored in DuckDB (`whatif_runs`)
so runs survive a restart and compare side by side.

The physics comes in as `runner` (the server passes `simulator.whatif.run`): the twin
layer does not import the simulator (import contract `runtime-without-lab`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import polars as pl

from domain.site import Site
from domain.whatif import LiveState, Scenario, WhatIfResult, validate_scenario
from ingest.store import Store
from twin.capacity.headroom import headroom
from twin.health import ComponentHealth
from twin.whatif.live_state import live_state

log = logging.getLogger(__name__)

Runner = Callable[
    [Site, Scenario, LiveState, Callable[[float], None], Callable[[], bool]], WhatIfResult
]
TERMINAL = ("done", "failed", "cancelled", "interrupted")

DDL = """
CREATE TABLE IF NOT EXISTS whatif_runs (
    id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    progress DOUBLE NOT NULL,
    submitted TIMESTAMP NOT NULL,
    started TIMESTAMP,
    finished TIMESTAMP,
    scenario JSON NOT NULL,
    live JSON,
    result JSON,
    error VARCHAR
)
"""


class RunCancelledError(Exception):
    """Raised by the progress hook when a run is cancelled (the runner stops there)."""


def _finite(x: Any) -> Any:
    """JSON has no NaN: a figure that could not be computed (no IT energy) is null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.replace(tzinfo=UTC).isoformat()


def live_summary(st: LiveState) -> dict[str, Any]:
    """What of the live state a run started from, in a few numbers (stored with the run)."""
    util = list(st.gpu_util.values())
    temps = list(st.gpu_temp_c.values())
    return {
        "time": datetime.fromtimestamp(st.time_s, UTC).isoformat(),
        "gpus_reporting": len(util),
        "gpu_util_mean": round(sum(util) / len(util), 4) if util else None,
        "gpu_temp_max_c": max(temps) if temps else None,
        "outdoor_drybulb_c": st.outdoor_drybulb_c,
        "outdoor_wetbulb_c": st.outdoor_wetbulb_c,
        "setpoints": st.setpoints,
        "pue": st.pue,
    }


class WhatIfService:
    def __init__(
        self,
        site: Site,
        store: Store,
        runner: Runner,
        stale_after_s: float = 30.0,
        max_workers: int = 1,
        max_queued: int = 8,
        pue_now: Callable[[], float | None] | None = None,
    ) -> None:
        self.site, self.store, self.runner = site, store, runner
        self.stale_after_s = stale_after_s
        self.max_workers, self.max_queued = max_workers, max_queued
        self.pue_now = pue_now
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._progress: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None
        self.last_finished: float | None = None
        self._known = {d.id for d in site.devices()}
        cur = store.cursor()
        cur.execute(DDL)
        # runs a previous process left unfinished cannot resume: say so
        cur.execute(
            "UPDATE whatif_runs SET status = 'interrupted', finished = ? "
            "WHERE status IN ('queued', 'running')",
            [_now()],
        )

    # -- lifecycle (the server's background job) -----------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="whatif")

    def stop(self) -> None:
        with self._lock:
            ex, self._executor = self._executor, None
            for ev in self._cancel.values():
                ev.set()
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def health(self) -> ComponentHealth:
        running = sum(1 for v in self._cancel.values() if not v.is_set())
        status = "ok" if self._executor is not None else "not_running"
        return ComponentHealth(status, self.last_finished, extra={"active_runs": running})  # type: ignore[arg-type]

    # -- runs -----------------------------------------------------------------------------

    def submit(self, sc: Scenario) -> dict[str, Any]:
        """Validate (ScenarioError names the element), take the live state (NoLiveStateError if
        there is none), store the run as queued and start it; the run's record."""
        changed = validate_scenario(self.site, sc)
        pue = self.pue_now() if self.pue_now is not None else None
        st = live_state(self.store, self.stale_after_s, pue, self._known)
        with self._lock:
            if self._executor is None:
                raise RuntimeError("the what-if executor is not running")
            if len(self._cancel) >= self.max_queued + self.max_workers:
                raise OverflowError(
                    f"{len(self._cancel)} what-if runs are queued or running; retry later"
                )
            run_id = uuid.uuid4().hex[:12]
            self._cancel[run_id] = threading.Event()
            self._progress[run_id] = 0.0
            self.store.cursor().execute(
                "INSERT INTO whatif_runs (id, name, status, progress, submitted, scenario, live) "
                "VALUES (?, ?, 'queued', 0, ?, ?, ?)",
                [run_id, sc.name, _now(), sc.model_dump_json(), json.dumps(live_summary(st))],
            )
            self._executor.submit(self._run, run_id, changed, sc, st)
        rec = self.get(run_id)
        assert rec is not None
        return rec

    def _run(self, run_id: str, site: Site, sc: Scenario, st: LiveState) -> None:
        ev = self._cancel[run_id]
        cur = self.store.cursor()
        try:
            if ev.is_set():
                raise RunCancelledError()
            cur.execute(
                "UPDATE whatif_runs SET status = 'running', started = ? WHERE id = ?",
                [_now(), run_id],
            )

            def progress(done: float) -> None:
                self._progress[run_id] = done

            result = self.runner(site, sc, st, progress, ev.is_set)
            if result.peak_state:  # capacity headroom (N, N-1) of the changed site at peak
                result.headroom = headroom(site, pl.DataFrame(result.peak_state)).to_dicts()
            cur.execute(
                "UPDATE whatif_runs SET status = 'done', progress = 1, finished = ?, result = ? "
                "WHERE id = ?",
                [_now(), json.dumps(_finite(asdict(result)), default=float), run_id],
            )
        except Exception as exc:
            cancelled = ev.is_set() or type(exc).__name__ in (
                "RunCancelledError",
                "RunCancelledError",
            )
            if not cancelled:
                log.exception("what-if run %s failed", run_id)
            cur.execute(
                "UPDATE whatif_runs SET status = ?, progress = ?, finished = ?, error = ? "
                "WHERE id = ?",
                [
                    "cancelled" if cancelled else "failed",
                    self._progress.get(run_id, 0.0),
                    _now(),
                    None if cancelled else f"{type(exc).__name__}: {exc}",
                    run_id,
                ],
            )
        finally:
            with self._lock:
                self._cancel.pop(run_id, None)
                self._progress.pop(run_id, None)
            self.last_finished = time.time()

    def cancel(self, run_id: str) -> dict[str, Any] | None:
        """Ask a queued or running run to stop (it stops within one simulator step); the
        run's record, None for an unknown id. A finished run stays as it is."""
        with self._lock:
            ev = self._cancel.get(run_id)
            if ev is not None:
                ev.set()
        return self.get(run_id)

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self._rows("WHERE id = ?", [run_id])
        return rows[0] if rows else None

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._rows("ORDER BY submitted DESC LIMIT ?", [limit], full=False)

    def compare(self, run_ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """The runs side by side (in the order asked) and the ids that are unknown."""
        rows = {r["id"]: r for r in self._rows("WHERE list_contains(?, id)", [run_ids])}
        return [rows[i] for i in run_ids if i in rows], [i for i in run_ids if i not in rows]

    def _rows(self, where: str, params: list[Any], full: bool = True) -> list[dict[str, Any]]:
        cols = "id, name, status, progress, submitted, started, finished, scenario, live, error"
        cols += ", result" if full else ""
        rows = self.store.cursor().execute(f"SELECT {cols} FROM whatif_runs {where}", params)
        out = []
        for row in rows.fetchall():
            r = dict(zip([c.strip() for c in cols.split(",")], row, strict=True))
            for k in ("submitted", "started", "finished"):
                r[k] = _iso(r[k])
            for k in ("scenario", "live", "result"):
                if k in r:
                    r[k] = json.loads(r[k]) if r[k] is not None else None
            if r["status"] in ("queued", "running"):
                r["progress"] = self._progress.get(r["id"], r["progress"])
            r["progress"] = round(float(r["progress"]), 4)
            out.append(r)
        return out
