"""A job run every few seconds in a daemon thread: the twin tick, the live view, the
anomaly scorer and the failure-risk table all keep themselves current this way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from twin.health import ComponentHealth, heartbeat

log = logging.getLogger(__name__)


class Periodic:
    """Calls `fn` every `every_s` seconds until `stop()`. A round that raises is logged (or
    ignored, for the `expected` exception types) and the next round retries; a round that
    overruns skips the missed slots instead of bursting to catch up."""

    def __init__(
        self,
        fn: Callable[[], object],
        every_s: float,
        name: str,
        wait_first: bool = False,
        expected: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.fn, self.every_s, self.name = fn, every_s, name
        self.wait_first, self.expected = wait_first, expected
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # heartbeat for /healthz (wall-clock seconds): when started, when the last round
        # finished without an unexpected error, and that error
        self.started_at: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Periodic:
        if not self.running:  # idempotent: every caller may start it
            self._stop.clear()
            self.started_at = time.time()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self.started_at = None

    def health(self, stale_after_s: float) -> ComponentHealth:
        """Down if its thread died, stale if no round succeeded for `stale_after_s`
        (counted from the start until the first success), else ok."""
        if self.started_at is None:
            return ComponentHealth("not_running")
        if not self.running:
            return ComponentHealth("down", self.last_success, detail=f"{self.name} thread died")
        return heartbeat(self.started_at, self.last_success, stale_after_s, self.last_error)

    def _run(self) -> None:
        next_t = time.monotonic() + (self.every_s if self.wait_first else 0.0)
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            try:
                self.fn()
                self.last_success, self.last_error = time.time(), None
            except self.expected:  # nothing to do this round (no model yet): still alive
                self.last_success, self.last_error = time.time(), None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed; the next round retries", self.name)
            next_t += self.every_s
            if next_t < time.monotonic():  # fell behind: skip missed rounds
                next_t = time.monotonic()
