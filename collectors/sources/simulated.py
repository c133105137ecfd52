"""Simulated source: reads a `SiteSimulator` as if it were real devices.

Lets the daemon, the demo and the tests run anywhere. In real-time mode each `read`
advances the simulation by the wall-clock time since the previous read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from collectors.base import Readings, now_ms
from collectors.simulator.model import SiteSimulator
from ingest.contract import Kind
from ingest.site import EXAMPLE_SITE, MeterRole, Site, load_site


class SimulatedSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["simulated"] = "simulated"
    name: str = "simulated"
    site_file: Path = EXAMPLE_SITE
    seed: int = 0
    racks: list[str] | None = Field(
        None, description="rack ids to emit (default: the whole site, facility included)"
    )


class _Block:
    """A fixed set of (device, metric) pairs whose values come from one array function."""

    def __init__(self, kind: Kind, racks: list[str], devices: list[str], metrics: list[str],
                 values) -> None:  # values: Callable[[SiteSimulator], np.ndarray] (metric-major)
        n_dev = len(devices)
        self.kind = kind
        self.device_id = devices * len(metrics)
        self.metric = [m for m in metrics for _ in range(n_dev)]
        self.rack = racks * len(metrics)
        self.values = values
        self.mask: np.ndarray | None = None

    def select(self, keep_racks: set[str] | None) -> None:
        if keep_racks is not None:
            self.mask = np.array([r in keep_racks for r in self.rack])
            self.device_id = [d for d, k in zip(self.device_id, self.mask, strict=True) if k]
            self.metric = [m for m, k in zip(self.metric, self.mask, strict=True) if k]
            self.rack = [r for r, k in zip(self.rack, self.mask, strict=True) if k]


def _blocks(site: Site, sim: SiteSimulator) -> list[_Block]:
    lay = sim.layout
    gpu_racks = [lay.rack_keys[i] for i in lay.gpu_rack]
    psu_racks = [lay.rack_keys[i] for i in lay.psu_rack]
    hall_of = [cid.split("/")[1] for cid in lay.cdu_ids]
    pdu_hall = [pid.split("/")[1] for pid in lay.pdu_ids]
    crah_hall = [cid.split("/")[1] for cid in lay.crah_ids]
    blocks = [
        _Block(Kind.gpu, gpu_racks, lay.gpu_ids,
               ["gpu_temp_c", "mem_temp_c", "power_w", "energy_mj", "util_gpu_pct",
                "sm_clock_mhz", "throttle_reasons", "ecc_uncorrected_total"],
               lambda s: np.concatenate([
                   s.gpu_temp_c, s.gpu_temp_c - 4.0, s.gpu_power_w, np.floor(s.gpu_energy_mj),
                   s.gpu_util * 100.0, np.where(s.gpu_util > 0.05, 1980.0, 345.0),
                   np.zeros_like(s.gpu_util), np.zeros_like(s.gpu_util)])),
        _Block(Kind.power, psu_racks, lay.psu_ids,
               ["input_power_w", "output_power_w", "temp_c", "energy_kwh"],
               lambda s: np.concatenate([s.psu_in_w, s.psu_out_w, s.psu_temp_c,
                                         s.psu_energy_kwh])),
        _Block(Kind.cooling, hall_of, lay.cdu_ids,
               ["supply_temp_c", "return_temp_c", "flow_lpm", "pump_speed_pct",
                "pump_power_w", "diff_pressure_kpa"],
               lambda s: np.concatenate([s.cdu_supply_c, s.cdu_return_c, s.cdu_flow_lpm,
                                         s.cdu_pump_speed * 100.0, s.cdu_pump_w, s.cdu_dp_kpa])),
        _Block(Kind.power, pdu_hall, lay.pdu_ids, ["power_w", "energy_kwh"],
               lambda s: np.concatenate([s.pdu_out_w, s.pdu_energy_kwh])),
        _Block(Kind.air, crah_hall, lay.crah_ids,
               ["supply_air_temp_c", "return_air_temp_c", "fan_speed_pct", "fan_power_w"],
               lambda s: np.concatenate([s.crah_supply_c, s.crah_return_c,
                                         s.crah_fan_speed * 100.0, s.crah_fan_w])),
    ]
    meter_values = {
        MeterRole.facility_input: lambda s: (s.plant.facility_kw, s.meter_energy_kwh["facility"]),
        MeterRole.ups_output: lambda s: (s.plant.ups_output_kw, s.meter_energy_kwh["ups_output"]),
        MeterRole.pdu_output: lambda s: (s.plant.pdu_output_kw, s.meter_energy_kwh["pdu_output"]),
        MeterRole.it_input: lambda s: (s.plant.it_kw, s.meter_energy_kwh["it_input"]),
        MeterRole.cooling_plant: lambda s: (
            s.plant.chiller_kw + s.plant.tower_kw + s.plant.chw_pump_kw,
            s.meter_energy_kwh["cooling"]),
    }
    for meter in site.meters:
        fn = meter_values[meter.role]
        blocks.append(_Block(Kind.facility, ["facility"], [site.meter_id(meter)],
                             ["power_kw", "energy_kwh"],
                             lambda s, fn=fn: np.array(fn(s), dtype=float)))
    blocks.append(_Block(
        Kind.facility, ["facility"], [site.plant_id()],
        ["chw_supply_temp_c", "chw_return_temp_c", "cw_supply_temp_c", "chiller_power_kw",
         "tower_power_kw", "pump_power_kw", "cooling_load_kw", "outdoor_drybulb_c",
         "outdoor_wetbulb_c"],
        lambda s: np.array([s.plant.chw_supply_c, s.plant.chw_return_c, s.plant.cw_supply_c,
                            s.plant.chiller_kw, s.plant.tower_kw, s.plant.chw_pump_kw,
                            s.plant.cooling_load_kw, s.plant.outdoor_drybulb_c,
                            s.plant.outdoor_wetbulb_c], dtype=float)))
    return blocks


class SimulatedSource:
    """Source protocol implementation over the simulator."""

    def __init__(self, config: SimulatedSourceConfig, simulator: SiteSimulator | None = None):
        self.config = config
        self.name = config.name
        self.site = load_site(config.site_file)
        self.sim = simulator or SiteSimulator(self.site, seed=config.seed,
                                              start_time_s=time.time())
        keep = None
        if config.racks is not None:
            unknown = set(config.racks) - set(self.sim.layout.rack_keys)
            if unknown:
                raise ValueError(f"racks: not in site {self.site.site.id}: {sorted(unknown)}")
            keep = set(config.racks)
        self.blocks = _blocks(self.site, self.sim)
        for b in self.blocks:
            b.select(keep)
        self.blocks = [b for b in self.blocks if b.device_id]
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
        for b in self.blocks:
            values = b.values(self.sim)
            if b.mask is not None:
                values = values[b.mask]
            out.add_columns(b.kind, b.rack, b.device_id, b.metric, values.tolist(), read_time_ms)
        return out

    def read(self) -> Readings:
        self.advance()
        return self.snapshot(now_ms())

    def close(self) -> None:
        pass
