"""Simulated source: reads a `SiteSimulator` as if it were real devices.

Lets the daemon, the demo and the tests run anywhere. In real-time mode each `read`
advances the simulation by the wall-clock time since the previous read. Readings are what
sensors report (noise, quantization, sensor faults); a GPU fallen off the bus stops
reporting; device events (XIDs, leaks, failed pumps/PSUs/fans) come with the readings.
"""

from __future__ import annotations

import json
import logging
import time
from itertools import compress
from pathlib import Path
from typing import Literal

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from collectors.base import Readings, now_ms
from collectors.sources.simulated.bms import SimulatedBms
from domain.contract import Event, EventKind
from domain.site import EXAMPLE_SITE, load_site
from domain.topics import ensure_topics
from simulator.batch import ReadSchedule, catch_up
from simulator.model import SiteSimulator
from simulator.weather import CLIMATES

log = logging.getLogger(__name__)


class PartSwap(BaseModel):
    """A scheduled maintenance action: a new part in a slot (simulator/parts.py)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="a GPU or PSU id of the site, e.g. sv1/h1/row1/rk101/psu0")
    after_s: float = Field(ge=0, description="seconds after the simulation start")


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
    # issue 19 (opt-live): the site's BMS over Modbus TCP, bound to this simulator (bms.py)
    bms_port: int | None = Field(
        None, ge=1, le=65535, description="serve the simulated BMS (Modbus TCP) on this port"
    )
    bms_host: str = Field("127.0.0.1", description="address the simulated BMS binds")
    # issue 26 (demo-story): scenarios played into the running simulation
    control_topic: str | None = Field(
        None, description="Kafka topic of scenario fault specs (sim.control); none: off"
    )
    control_bootstrap: str | None = Field(
        None, description="Kafka bootstrap of control_topic (the daemon's cluster)"
    )
    catch_up_from_s: float | None = Field(
        None,
        description="Unix seconds: start the simulation here and step it to now without "
        "emitting, so the live site continues a history simulated elsewhere with the same "
        "seed and step (dctwin demo); none: start now",
    )
    catch_up_step_s: float = Field(300.0, gt=0, description="step of the catch-up")
    catch_up_fine_burst_s: float = Field(
        0.0,
        ge=0,
        description="the history also read the last this many seconds of every "
        "catch_up_fine_every_s every catch_up_fine_step_s (simulator.batch.ReadSchedule; "
        "the demo's 10-s bursts): the catch-up steps the same way; 0: none",
    )
    catch_up_fine_every_s: float = Field(1800.0, gt=0, description="period of the bursts")
    catch_up_fine_step_s: float = Field(10.0, gt=0, description="step within a burst")
    part_swaps: list[PartSwap] = Field(
        default_factory=list,
        description="maintenance: replace the part in a GPU/PSU slot (new UUID and serial) "
        "this long after the start",
    )


class SimulatedSource:
    """Source protocol implementation over the simulator."""

    def __init__(self, config: SimulatedSourceConfig, simulator: SiteSimulator | None = None):
        self.config = config
        self.name = config.name
        self.site = load_site(config.site_file)
        self.sim = simulator or SiteSimulator(
            self.site,
            seed=config.seed,
            start_time_s=config.catch_up_from_s or time.time(),
            faults=config.faults,
            climate=config.climate,
        )
        if simulator is None and config.catch_up_from_s is not None:
            # the same steps as the batch history (a read every step, experiments'
            # BatchRun), so the state at its last read is the history's exactly; then on
            # to now in one step
            schedule = ReadSchedule(
                config.catch_up_step_s,
                config.catch_up_fine_burst_s,
                config.catch_up_fine_every_s,
                config.catch_up_fine_step_s,
            )
            catch_up(self.sim, config.catch_up_from_s, time.time(), schedule)
            self.sim.step(max(0.0, time.time() - self.sim.time_s))
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
        for swap in config.part_swaps:  # fail at start, not at the swap time
            if swap.device_id not in (*self.sim.parts.gpu_index, *self.sim.parts.psu_index):
                raise ValueError(f"part_swaps: {swap.device_id!r} is not a GPU or PSU of the site")
        self._swaps = sorted(config.part_swaps, key=lambda s: s.after_s)
        self.bms: SimulatedBms | None = None
        if config.bms_port is not None:  # writes command this simulator's setpoints
            self.bms = SimulatedBms(self.sim, self.site, config.bms_host, config.bms_port).start()
        self._control: KafkaConsumer | None = None
        if config.control_topic:
            self._control = _control_consumer(
                config.control_bootstrap or "127.0.0.1:9092", config.control_topic
            )

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

    def _kept(self, device_id: str) -> bool:
        parts = device_id.split("/")
        return self._keep is None or (len(parts) >= 5 and parts[3] in self._keep)

    def _events(self) -> list[Event]:
        elapsed_s = self.sim.time_s - self.sim.start_time_s
        while self._swaps and self._swaps[0].after_s <= elapsed_s:
            self.sim.swap_part(self._swaps.pop(0).device_id)
        events = []
        for e in self.sim.drain_events():
            if not self._kept(e.device_id):
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
        # identity like the NVML and Redfish sources send it: at start and on change
        t_ms = int(round(self.sim.time_s * 1000))
        for device_id, ident in self.sim.parts.drain_changes():
            if self._kept(device_id):
                events.append(
                    Event(
                        device_id=device_id,
                        kind=EventKind.inventory,
                        severity="info",
                        read_time_ms=t_ms,
                        message=f"serial {ident['serial']}"
                        + (f" uuid {ident['uuid']}" if "uuid" in ident else ""),
                        attrs={"source": self.name, **ident},
                    )
                )
        return events

    def read(self) -> Readings:
        self._apply_control()
        self.advance()
        return self.snapshot(now_ms())

    def _apply_control(self) -> None:
        """Scenarios sent since the last read join the simulation, onsets from now."""
        if self._control is None:
            return
        for records in self._control.poll(timeout_ms=0).values():
            for rec in records:
                try:
                    msg = json.loads(rec.value)
                    added = self.sim.inject(str(msg["faults"]))
                except (ValueError, KeyError, TypeError) as exc:  # FaultSpecError included
                    log.warning("scenario message at offset %d ignored: %s", rec.offset, exc)
                    continue
                log.info(
                    "scenario %s: %d faults injected (%s)",
                    msg.get("scenario"),
                    len(added),
                    ", ".join(f"{f.type}@{f.device_id}" for f in added),
                )
                if self.config.labels_file is not None:
                    self.sim.write_labels(self.config.labels_file)

    def close(self) -> None:
        if self.bms is not None:
            self.bms.stop()
            self.bms = None
        if self._control is not None:
            self._control.close()


def _control_consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    """A group-less reader of the control topic positioned at its end: only scenarios sent
    after the collector started play (an old one must not replay on restart)."""
    ensure_topics(bootstrap, 1, (topic,))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolve the end offset now, before any scenario is sent
    return consumer


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = SimulatedSourceConfig
SOURCE_CLASS = SimulatedSource
