"""Helpers for the simulator tests: small sites, stepping, reading telemetry series."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from simulator.injector import SimEvent
from simulator.model import SiteSimulator
from simulator.sitegen import synthetic_site

JAN = datetime(2025, 1, 15, tzinfo=UTC).timestamp()
JUL = datetime(2025, 7, 15, 12, tzinfo=UTC).timestamp()
H = 3600.0


def small_site(n_gpus: int = 128, **kw):
    return synthetic_site(n_gpus, **kw)


class Recorder:
    """Steps a simulator and keeps what its telemetry reported, read by read."""

    def __init__(self, sim: SiteSimulator) -> None:
        self.sim = sim
        self.plan = sim.telemetry
        self.times: list[float] = []
        self.values: list[np.ndarray] = []
        self.present: list[np.ndarray | None] = []
        self.events: list[SimEvent] = []
        self.truth: list[dict[str, float]] = []

    def run(self, hours: float, dt_s: float, probe=None) -> Recorder:
        for _ in range(int(round(hours * H / dt_s))):
            self.sim.step(dt_s)
            v, p = self.plan.read(self.sim)
            self.times.append(self.sim.time_s)
            self.values.append(v)
            self.present.append(p)
            self.events += self.sim.drain_events()
            if probe is not None:
                self.truth.append(probe(self.sim))
        return self

    def series(self, device_id: str, metric: str) -> np.ndarray:
        """Reported values of one (device, metric); NaN where the device did not report."""
        pos = next(
            b.start + b.metrics.index(metric) * len(b.devices) + b.devices.index(device_id)
            for b in self.plan.blocks
            if device_id in b.devices and metric in b.metrics
        )
        out = np.array([v[pos] for v in self.values])
        missing = np.array([p is not None and not p[pos] for p in self.present])
        out[missing] = np.nan
        return out

    def t_h(self) -> np.ndarray:
        return (np.array(self.times) - self.sim.start_time_s) / H

    def events_of(self, device_id: str) -> list[SimEvent]:
        return [e for e in self.events if e.device_id == device_id]
