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
    events: list[SimEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.value)


class BatchRun:
    """Reads at start, start + step, ... (`n_reads` of them), stepping the physics between."""

    def __init__(
        self,
        sim: SiteSimulator,
        hours: float,
        step_s: float = 10.0,
        chunk_rows: int = 4_000_000,
        before_step: Callable[[int, SiteSimulator], None] | None = None,
    ) -> None:
        """`before_step(i, sim)` runs before the physics steps to read i (issue 19: an
        exploration policy commands setpoints there)."""
        if hours <= 0 or step_s <= 0:
            raise ValueError(f"hours and step_s must be > 0 (got {hours}, {step_s})")
        self.sim = sim
        self.step_s = float(step_s)
        self.n_reads = max(1, int(round(hours * 3600.0 / step_s)))
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
        for i in range(self.n_reads):
            if i:
                if self.before_step is not None:
                    self.before_step(i, sim)
                sim.step(self.step_s)
            values[k], mask = plan.read(sim)
            times[k] = int(round(sim.time_s * 1000.0))
            if mask is not None:
                present[k], masked = mask, True
            elif masked:
                present[k] = True
            k += 1
            if k == k_max or i == self.n_reads - 1:
                yield self._chunk(values[:k], present[:k] if masked else None, times[:k], k)
                k, masked = 0, False

    def _chunk(
        self, values: np.ndarray, present: np.ndarray | None, times: np.ndarray, k: int
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
            events=self.sim.drain_events(),
        )
        self.samples += len(chunk)
        self.events += len(chunk.events)
        return chunk
