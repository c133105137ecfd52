"""Test harness: the v0 simulator read through the real simulated source, batched with the
real Batcher and written into a real Store, with simulated time (no Kafka, no sleeping).

It plays the collectors of a site, so it may add what the v0 source does not emit (a
CRAH's coil duty, `cooling_kw`) and inject sensor faults by rewriting readings before
they are stored (e.g. a CDU flow sensor stuck at one value).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from collectors.base import Readings
from collectors.batching import Batcher
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import EventBatch, Kind, TelemetryBatch
from domain.site import load_site
from ingest.store import Store
from simulator.model import SiteSimulator

SMALL_SITE = Path(__file__).resolve().parent / "data" / "twin-small.toml"
# 2025-06-01 03:00 UTC: the simulator's diurnal inference load is near its low.
START_S = 1_748_746_800.0

Transform = Callable[[Readings], Readings]


class SimHarness:
    def __init__(
        self,
        store: Store,
        site_file: Path = SMALL_SITE,
        seed: int = 0,
        start_time_s: float = START_S,
        crah_duty: bool = True,
        faults: str | None = None,
    ) -> None:
        self.site = load_site(site_file)
        self.sim = SiteSimulator(self.site, seed=seed, start_time_s=start_time_s, faults=faults)
        self.source = SimulatedSource(
            SimulatedSourceConfig(site_file=site_file, seed=seed), simulator=self.sim
        )
        self.batcher = Batcher("twin-harness", self.site.site.id, 10.0)
        self.store = store
        self.crah_duty = crah_duty
        self.transforms: list[Transform] = []

    @property
    def time_ms(self) -> int:
        return int(round(self.sim.time_s * 1000))

    def step(self, dt_s: float = 10.0) -> int:
        """Advance the simulator, read every device, store the readings; the read time."""
        self.sim.step(dt_s)
        return self.write()

    def write(self) -> int:
        t = self.time_ms
        readings = self.source.snapshot(t)
        if self.crah_duty:  # a CRAH reports its coil duty: hall air heat plus fan heat
            lay = self.sim.layout
            duty = self.sim.crah.load_kw
            racks = [cid.split("/")[1] for cid in lay.crah_ids]
            readings.add_columns(
                Kind.air, racks, lay.crah_ids, ["cooling_kw"] * len(duty), duty.tolist(), t
            )
        for fn in self.transforms:
            readings = fn(readings)
        batches = self.batcher.batches(readings)
        self.store.write(
            [b for b in batches if isinstance(b, TelemetryBatch)],
            [b for b in batches if isinstance(b, EventBatch)],
            {},
        )
        return t


def keep(readings: Readings, mask: list[bool]) -> Readings:
    out = Readings()
    for i, k in enumerate(mask):
        if k:
            out.add(
                readings.kind[i],
                readings.rack[i],
                readings.device_id[i],
                readings.metric[i],
                readings.value[i],
                readings.read_time_ms[i],
            )
    return out


def drop_metric(device_prefix: str, metric: str) -> Transform:
    """Drop a metric of matching devices (e.g. meters without energy registers)."""

    def fn(r: Readings) -> Readings:
        return keep(
            r,
            [
                not (d.startswith(device_prefix) and m == metric)
                for d, m in zip(r.device_id, r.metric, strict=True)
            ],
        )

    return fn


def override(device_id: str, metric: str, value: Callable[[float], float]) -> Transform:
    """Replace one device's reading: a faulty sensor between the physics and the wire."""

    def fn(r: Readings) -> Readings:
        for i, (d, m) in enumerate(zip(r.device_id, r.metric, strict=True)):
            if d == device_id and m == metric:
                r.value[i] = float(value(r.value[i]))
        return r

    return fn


def loop_racks(sim: SiteSimulator, cdu_index: int) -> np.ndarray:
    return np.flatnonzero(sim.layout.rack_cdu == cdu_index)
