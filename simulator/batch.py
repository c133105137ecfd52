"""Batch mode: run the simulator as fast as it goes and hand out columnar sample chunks.

Numpy only (writers live in experiments/simulate.py). A chunk holds several consecutive reads;
its identity columns are integer codes into the plan's dictionaries (device, metric, kind,
rack) built by tiling the per-read layout, so no per-sample Python object is ever made.
Memory is bounded by `chunk_rows` whatever the site size or run length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from simulator.injector import SimEvent
from simulator.model import SiteSimulator
from simulator.telemetry import TelemetryPlan


@dataclass
class SampleChunk:
    read_time_ms: np.ndarray  # int64
    device_code: np.ndarray  # int32 into plan.device_dict
    metric_code: np.ndarray
    kind_code: np.ndarray
    rack_code: np.ndarray
    value: np.ndarray  # float64
    reads: int  # simulator reads in this chunk
    step_s: float  # seconds between its reads (the wire batches' interval_s)
    events: list[SimEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.value)


@dataclass(frozen=True)
class ReadSchedule:
    """When a run reads: every `step_s` from its start, and, when `fine_burst_s` > 0, the
    last `fine_burst_s` of every `fine_every_s` period every `fine_step_s` as well.

    The demo's history (issue 26): hours at 5 minutes are cheap, but the anomaly models
    score live 10-s intervals, and a 5-minute step has settled every transient (a job
    starting: 120 -> 700 W in a second, the coolant loop following over minutes). Short
    10-s bursts spread over the hours show the models transients in every load state;
    one 10-s tail at the end would calibrate them on whatever the site did in its last
    minutes (docs/anomaly.md). The schedule is endless and the same from any start, so a
    live source replays a run's reads exactly (`catch_up`)."""

    step_s: float
    fine_burst_s: float = 0.0
    fine_every_s: float = 1800.0
    fine_step_s: float = 10.0

    def __post_init__(self) -> None:
        if self.step_s <= 0 or self.fine_step_s <= 0 or self.fine_every_s <= 0:
            raise ValueError(f"read schedule: steps and period must be > 0 ({self})")
        if not 0 <= self.fine_burst_s <= self.fine_every_s:
            raise ValueError(f"read schedule: fine_burst_s must be in [0, fine_every_s] ({self})")

    def offsets(self, span_s: float) -> np.ndarray:
        """Read times (seconds after the start) before `span_s`, ascending, no repeats."""
        coarse = np.arange(0.0, span_s, self.step_s)
        if self.fine_burst_s <= 0:
            return coarse
        per_burst = int(round(self.fine_burst_s / self.fine_step_s))
        ends = np.arange(self.fine_every_s, span_s + self.fine_every_s, self.fine_every_s)
        fine = (ends[:, None] - self.fine_step_s * np.arange(per_burst)[None, :]).ravel()
        return np.union1d(coarse, fine[(fine >= 0) & (fine < span_s)])

    def steps(self, hours: float) -> np.ndarray:
        """The physics step before each read of a run of `hours` (the first read is at its
        start: 0): as many coarse reads as a plain run of `step_s` has, and the bursts
        within that span."""
        if hours <= 0:
            raise ValueError(f"hours must be > 0 (got {hours})")
        n = max(1, int(round(hours * 3600.0 / self.step_s)))
        if self.fine_burst_s <= 0:  # exactly step_s every time (seeded runs stay the same)
            return np.concatenate([[0.0], np.full(n - 1, float(self.step_s))])
        return np.diff(self.offsets(n * self.step_s), prepend=0.0)


def catch_up(sim: SiteSimulator, start_s: float, until_s: float, schedule: ReadSchedule) -> None:
    """Step `sim` (started at `start_s`, where a batch run of `schedule` started) through
    that run's read times up to `until_s`, without reads: the same steps, so at each of
    the run's reads the state is the run's exactly (reads draw no simulator randomness;
    tests/test_demo_story)."""
    if schedule.fine_burst_s <= 0:
        while sim.time_s + schedule.step_s <= until_s:
            sim.step(schedule.step_s)
        return
    offsets = schedule.offsets(until_s - start_s + 1e-6)
    done = offsets <= sim.time_s - start_s + 1e-3  # a sim already part of the way on
    for dt in np.diff(offsets[max(0, int(done.sum()) - 1) :]):
        sim.step(float(dt))


class BatchRun:
    """Reads at start, start + step, ... (`n_reads` of them), stepping the physics between;
    with a `ReadSchedule`, its bursts of finer reads as well."""

    def __init__(
        self,
        sim: SiteSimulator,
        hours: float,
        step_s: float = 10.0,
        chunk_rows: int = 4_000_000,
        before_step: Callable[[int, SiteSimulator], None] | None = None,
        schedule: ReadSchedule | None = None,
    ) -> None:
        """`before_step(i, sim)` runs before the physics steps to read i (issue 19: an
        exploration policy commands setpoints there). `schedule`: reads other than every
        `step_s` (its own step_s wins)."""
        if hours <= 0 or step_s <= 0:
            raise ValueError(f"hours and step_s must be > 0 (got {hours}, {step_s})")
        self.sim = sim
        schedule = schedule or ReadSchedule(step_s)
        self.step_s = float(schedule.step_s)
        self.steps = schedule.steps(hours)
        self.n_reads = len(self.steps)
        self.plan: TelemetryPlan = sim.telemetry
        self.reads_per_chunk = max(1, min(self.n_reads, chunk_rows // max(self.plan.size, 1)))
        self.samples = 0
        self.events = 0
        self.before_step = before_step

    def chunks(self) -> Iterator[SampleChunk]:
        plan, sim = self.plan, self.sim
        size, k_max = plan.size, self.reads_per_chunk
        values = np.empty((k_max, size))
        present = np.ones((k_max, size), dtype=bool)
        times = np.empty(k_max, dtype=np.int64)
        k, masked = 0, False
        steps = self.steps
        for i in range(self.n_reads):
            if i:
                if self.before_step is not None:
                    self.before_step(i, sim)
                sim.step(float(steps[i]))
            values[k], mask = plan.read(sim)
            times[k] = int(round(sim.time_s * 1000.0))
            if mask is not None:
                present[k], masked = mask, True
            elif masked:
                present[k] = True
            k += 1
            # a chunk never spans a change of step: its reads share one interval_s
            last = i == self.n_reads - 1 or steps[i + 1] != steps[max(i, 1)]
            if k == k_max or last:
                step = float(steps[max(i, 1)]) if self.n_reads > 1 else self.step_s
                yield self._chunk(values[:k], present[:k] if masked else None, times[:k], k, step)
                k, masked = 0, False

    def _chunk(
        self,
        values: np.ndarray,
        present: np.ndarray | None,
        times: np.ndarray,
        k: int,
        step_s: float,
    ) -> SampleChunk:
        plan = self.plan
        size = plan.size
        cols = [
            np.repeat(times, size),
            np.tile(plan.device_code, k),
            np.tile(plan.metric_code, k),
            np.tile(plan.kind_code, k),
            np.tile(plan.rack_code, k),
            values.reshape(-1).copy(),
        ]
        if present is not None:
            keep = present.reshape(-1)
            cols = [c[keep] for c in cols]
        read_time_ms, device_code, metric_code, kind_code, rack_code, value = cols
        chunk = SampleChunk(
            read_time_ms,
            device_code,
            metric_code,
            kind_code,
            rack_code,
            value,
            reads=k,
            step_s=step_s,
            events=self.sim.drain_events(),
        )
        self.samples += len(chunk)
        self.events += len(chunk.events)
        return chunk
