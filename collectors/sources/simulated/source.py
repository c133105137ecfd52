"""Simulated source: reads a `SiteSimulator` as if it were real devices.

Lets the daemon, the demo and the tests run anywhere. In real-time mode each `read`
advances the simulation by the wall-clock time since the previous read. Readings are what
sensors report (noise, quantization, sensor faults); a GPU fallen off the bus stops
reporting; device events (XIDs, leaks, failed pumps/PSUs/fans) come with the readings.
"""

from __future__ import annotations

import time
from itertools import compress
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from collectors.base import Readings, now_ms
from domain.contract import Event, EventKind
from domain.site import EXAMPLE_SITE, load_site
from simulator.model import SiteSimulator
from simulator.weather import CLIMATES


class SimulatedSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["simulated"] = "simulated"
    name: str = "simulated"
    site_file: Path = EXAMPLE_SITE
    seed: int = 0
    racks: list[str] | None = Field(
        None, description="rack ids to emit (default: the whole site, facility included)"
    )
    faults: str | None = Field(
        None,
        description="fault spec (docs/simulator.md), e.g. "
        "'gpu_off_bus@any:onset=10m; coolant_leak@any:onset=1h'",
    )
    labels_file: Path | None = Field(
        None, description="where to write the ground-truth labels (JSON lines)"
    )
    climate: Literal[tuple(CLIMATES)] = "temperate"  # type: ignore[valid-type]


class SimulatedSource:
    """Source protocol implementation over the simulator."""

    def __init__(self, config: SimulatedSourceConfig, simulator: SiteSimulator | None = None):
        self.config = config
        self.name = config.name
        self.site = load_site(config.site_file)
        self.sim = simulator or SiteSimulator(
            self.site,
            seed=config.seed,
            start_time_s=time.time(),
            faults=config.faults,
            climate=config.climate,
        )
        if config.labels_file is not None:
            self.sim.write_labels(config.labels_file)
        plan = self.sim.telemetry
        keep = None
        if config.racks is not None:
            unknown = set(config.racks) - set(self.sim.layout.rack_keys)
            if unknown:
                raise ValueError(f"racks: not in site {self.site.site.id}: {sorted(unknown)}")
            keep = set(config.racks)
        # per block: the slice of the flat readings it owns, and the rows this source emits
        self.blocks = []
        for b in plan.blocks:
            n = len(b.devices)
            rows = (
                np.ones(b.size, dtype=bool)
                if keep is None
                else np.tile(np.array([r in keep for r in b.racks]), len(b.metrics))
            )
            if not rows.any():
                continue
            device_id = [d for _ in b.metrics for d in b.devices]
            metric = [m for m in b.metrics for _ in range(n)]
            rack = b.racks * len(b.metrics)
            if not rows.all():
                device_id, metric, rack = (
                    list(compress(x, rows)) for x in (device_id, metric, rack)
                )
            self.blocks.append((b, slice(b.start, b.start + b.size), rows, device_id, metric, rack))
        self._keep = keep
        self._last_monotonic = time.monotonic()

    def advance(self) -> None:
        now = time.monotonic()
        dt = now - self._last_monotonic
        self._last_monotonic = now
        if dt > 0:
            self.sim.step(dt)

    def snapshot(self, read_time_ms: int) -> Readings:
        """Readings of the current simulator state, without advancing it."""
        out = Readings()
        values, present = self.sim.telemetry.read(self.sim)
        for b, sl, rows, device_id, metric, rack in self.blocks:
            v = values[sl]
            if present is not None and not present[sl].all():
                keep = present[sl][rows]
                out.add_columns(
                    b.kind,
                    list(compress(rack, keep)),
                    list(compress(device_id, keep)),
                    list(compress(metric, keep)),
                    v[rows][keep].tolist(),
                    read_time_ms,
                )
            else:
                out.add_columns(
                    b.kind,
                    rack,
                    device_id,
                    metric,
                    (v if rows.all() else v[rows]).tolist(),
                    read_time_ms,
                )
        out.events = self._events()
        return out

    def _events(self) -> list[Event]:
        events = []
        for e in self.sim.drain_events():
            parts = e.device_id.split("/")
            if self._keep is not None and (len(parts) < 5 or parts[3] not in self._keep):
                continue
            events.append(
                Event(
                    device_id=e.device_id,
                    kind=EventKind(e.kind),
                    severity=e.severity,
                    read_time_ms=e.time_ms,
                    message=e.message,
                    attrs=e.attrs,
                )
            )
        return events

    def read(self) -> Readings:
        self.advance()
        return self.snapshot(now_ms())

    def close(self) -> None:
        pass


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = SimulatedSourceConfig
SOURCE_CLASS = SimulatedSource
