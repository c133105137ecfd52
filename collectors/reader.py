"""Reads every source concurrently, each under its own deadline.

One worker thread per source (daemon threads: a source stuck in a system call must not
keep the process from exiting). A source whose previous read is still running is not
started again: it is skipped and reported as `busy`, so a dead device costs at most one
thread, never a pile of them. A read that finishes after its deadline is reported as a
`timeout`; its readings still go out with the next tick, with their own read times.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass

from collectors.base import Readings, Source, source_error_event
from collectors.stats import DaemonStats, SourceStats

log = logging.getLogger(__name__)


class _Worker:
    """One thread that runs one source's `read` on request."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._wake = threading.Event()
        self._future: Future[Readings] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"read-{source.name}", daemon=True)
        self._thread.start()

    def submit(self) -> Future[Readings]:
        fut: Future[Readings] = Future()
        self._future = fut
        self._wake.set()
        return fut

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            fut = self._future
            if fut is None or not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self.source.read())
            except BaseException as exc:  # reported by the reader, never swallowed
                fut.set_exception(exc)

    def stop(self) -> None:
        self._closed = True
        self._wake.set()


@dataclass
class _Pending:
    future: Future[Readings]
    started_mono: float
    deadline_mono: float
    reported: bool = False  # a timeout was already reported for this read


class SourceReader:
    def __init__(
        self,
        sources: list[Source],
        deadlines_s: list[float],
        stats: DaemonStats,
        error_device_id: str,
        error_event_interval_s: float = 60.0,
        every_ticks: list[int] | None = None,
    ) -> None:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: duplicate source names {dupes}; give each a `name`")
        self.sources = sources
        self.deadlines_s = deadlines_s
        # source i is read on ticks 0, n, 2n, ... (its own interval_s / the daemon's)
        self.every_ticks = every_ticks or [1] * len(sources)
        self._tick = 0
        self.stats = stats
        self.error_device_id = error_device_id
        self.error_event_interval_s = error_event_interval_s
        self._workers = [_Worker(s) for s in sources]
        self._pending: list[_Pending | None] = [None] * len(sources)
        self._last_event_mono: dict[str, float] = {}
        self._errors_since_event: dict[str, int] = {}
        for s in sources:
            stats.sources[s.name] = SourceStats()

    def read_tick(self) -> Readings:
        """Start every idle source, wait until each is done or past its deadline."""
        out = Readings()
        now = time.monotonic()
        for i, worker in enumerate(self._workers):
            p = self._pending[i]
            if p is not None and p.future.done():
                self._finish(i, p, out)  # a late read that finished since the last tick
                p = None
            if self._tick % self.every_ticks[i]:
                continue  # not due on this tick
            if p is not None:
                self._error(
                    i,
                    "busy",
                    f"previous read still running after {now - p.started_mono:.1f} s; skipped",
                    out,
                )
                continue
            self._pending[i] = _Pending(worker.submit(), now, now + self.deadlines_s[i])
        while True:
            waiting = [
                (i, p)
                for i, p in enumerate(self._pending)
                if p is not None and not p.future.done() and not p.reported
            ]
            if not waiting:
                break
            i, p = min(waiting, key=lambda ip: ip[1].deadline_mono)
            remaining = p.deadline_mono - time.monotonic()
            if remaining > 0:
                wait([p.future], timeout=remaining)
                continue
            p.reported = True
            self._error(i, "timeout", f"no answer within {self.deadlines_s[i]:g} s", out)
        for i, p in enumerate(self._pending):
            if p is not None and p.future.done():
                self._finish(i, p, out)
        self._tick += 1
        return out

    def _finish(self, i: int, p: _Pending, out: Readings) -> None:
        self._pending[i] = None
        name = self.sources[i].name
        st = self.stats.sources[name]
        st.last_duration_s = time.monotonic() - p.started_mono
        try:
            readings = p.future.result()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # bacpypes3's Error/Reject/Abort are BaseExceptions
            self._error(i, "exception", f"{type(exc).__name__}: {exc}", out)
            return
        out.extend(readings)
        st.readings += len(readings)
        if readings.failed_parts:
            st.errors["partial"] += readings.failed_parts
        st.reads_ok += 1
        st.last_success_unix_s = time.time()
        if p.reported:
            st.late_reads += 1
        if st.failing and not p.reported:
            st.failing = False
            log.info("source %s recovered", name)

    def _error(self, i: int, reason: str, detail: str, out: Readings) -> None:
        name = self.sources[i].name
        st = self.stats.sources[name]
        st.errors[reason] += 1
        self._errors_since_event[name] = self._errors_since_event.get(name, 0) + 1
        now = time.monotonic()
        last = self._last_event_mono.get(name)
        first = not st.failing
        st.failing = True
        if not first and last is not None and now - last < self.error_event_interval_s:
            log.debug("source %s: %s: %s", name, reason, detail)
            return
        log.warning("source %s failed (%s): %s", name, reason, detail)
        self._last_event_mono[name] = now
        out.events.append(
            source_error_event(
                self.error_device_id,
                f"source {name}: {reason}: {detail}",
                {
                    "source": name,
                    "reason": reason,
                    "errors_since_last_event": self._errors_since_event.pop(name),
                },
            )
        )

    def finish_pending(self, timeout_s: float) -> Readings:
        """At shutdown: give running reads up to `timeout_s` to finish; keep what they read."""
        out = Readings()
        deadline = time.monotonic() + timeout_s
        for i, p in enumerate(self._pending):
            if p is None:
                continue
            wait([p.future], timeout=max(0.0, deadline - time.monotonic()))
            if p.future.done():
                self._finish(i, p, out)
            else:
                log.warning(
                    "source %s still reading at shutdown; its read is abandoned",
                    self.sources[i].name,
                )
        return out

    def close(self) -> None:
        for i, worker in enumerate(self._workers):
            worker.stop()
            p = self._pending[i]
            if p is not None and not p.future.done():
                continue  # closing under a running read is unsafe; the process exit ends it
            try:
                worker.source.close()
            except Exception as exc:
                log.warning("source %s: close failed: %s", worker.source.name, exc)
