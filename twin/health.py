"""Health of a process's background components, for `/healthz` and `/readyz`.

One `HealthRegistry` per process, built and owned by `dctwin.server.Server` and handed to
the API through `api/deps.py` `Services` (no module-level registry). The server registers
a probe for each background job when it starts it and drops it when it stops it; a probe
reads the component's own heartbeat (a thread alive, the time of its last successful
round) and never blocks: `/healthz` must answer while everything else is stuck.

A component is `ok`, `starting` (started, no successful round yet, within its threshold),
`stale` (no successful round for longer than its threshold), `down` (its thread died) or
`not_running` (this process does not run it). Stale and down fail liveness; the others
do not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "starting", "stale", "down", "not_running"]
FAILING: frozenset[str] = frozenset({"stale", "down"})


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    status: Status
    last_success: float | None = None  # wall-clock seconds (time.time())
    detail: str | None = None
    stale_after_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. ingest's lag_records

    @property
    def failing(self) -> bool:
        return self.status in FAILING


Probe = Callable[[], ComponentHealth]
ReadyCheck = Callable[[], str | None]  # None: ready; else why not


def heartbeat(
    started_at: float,
    last_success: float | None,
    stale_after_s: float,
    last_error: str | None = None,
    now: float | None = None,
) -> ComponentHealth:
    """The status of a running job from its start time and its last successful round."""
    now = time.time() if now is None else now
    since = last_success if last_success is not None else started_at
    if now - since > stale_after_s:
        what = "no successful round" if last_success is not None else "no round finished"
        detail = f"{what} for {now - since:.0f} s (threshold {stale_after_s:g} s)"
        if last_error:
            detail += f"; last error: {last_error}"
        return ComponentHealth("stale", last_success, detail, stale_after_s)
    status: Status = "ok" if last_success is not None else "starting"
    return ComponentHealth(status, last_success, last_error, stale_after_s)


class HealthRegistry:
    """Probes of the components this process runs, and readiness checks."""

    def __init__(self, components: Iterable[str] = ()) -> None:
        # every component the product has, in report order: those without a probe are
        # reported as not_running, so a reader sees what this process does not run
        self.components = list(components)
        self._probes: dict[str, Probe] = {}
        self._ready: dict[str, ReadyCheck] = {}
        self._lock = threading.Lock()

    def register(self, name: str, probe: Probe) -> None:
        with self._lock:
            self._probes[name] = probe
            if name not in self.components:
                self.components.append(name)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._probes.pop(name, None)

    def add_ready_check(self, name: str, check: ReadyCheck) -> None:
        with self._lock:
            self._ready[name] = check

    def check(self) -> dict[str, ComponentHealth]:
        """Every component's health now (a probe that raises reports the component down)."""
        with self._lock:
            probes = dict(self._probes)
            names = list(self.components)
        out: dict[str, ComponentHealth] = {}
        for name in names:
            probe = probes.get(name)
            if probe is None:
                out[name] = ComponentHealth("not_running")
                continue
            try:
                out[name] = probe()
            except Exception as exc:  # a broken probe must not hide the others
                out[name] = ComponentHealth("down", detail=f"probe failed: {exc!r}")
        return out

    def readiness(self) -> dict[str, str | None]:
        """Each readiness check's verdict: None when ready, else the reason."""
        with self._lock:
            checks = dict(self._ready)
        out: dict[str, str | None] = {}
        for name, check in checks.items():
            try:
                out[name] = check()
            except Exception as exc:
                out[name] = f"check failed: {exc!r}"
        return out
