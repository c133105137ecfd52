"""What the simulated devices report: the (device, metric) pairs, their values per read,
quantization, sensor faults, and devices whose telemetry has stopped.

Shared by the real-time source and batch mode so that both emit the same samples. The
flat order is block by block (GPUs, PSUs, CDUs, PDUs, CRAHs, meters, plant, UPS), metric-major
within a block. Readings come from the model's measured arrays (truth plus sensor
noise, see model.SENSOR_NOISE) and its exact ones (GPU, power, meters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from domain.contract import Kind
from domain.site import MeterRole

if TYPE_CHECKING:
    from simulator.model import SiteSimulator

CLASS_METRICS: dict[str, list[str]] = {
    "gpu": [
        "gpu_temp_c",
        "mem_temp_c",
        "power_w",
        "energy_mj",
        "util_gpu_pct",
        "sm_clock_mhz",
        "throttle_reasons",
        "ecc_uncorrected_total",
        "ecc_corrected_total",
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
    ],
    "psu": ["input_power_w", "output_power_w", "temp_c", "energy_kwh"],
    "cdu": [
        "supply_temp_c",
        "return_temp_c",
        "flow_lpm",
        "pump_speed_pct",
        "pump_power_w",
        "diff_pressure_kpa",
        "primary_supply_temp_c",
        "primary_return_temp_c",
        "primary_flow_lpm",
        "reservoir_level_pct",
        "leak_detected",
        # issue 19 (opt-live): the active (ramped) setpoints
        "supply_setpoint_c",
        "dp_setpoint_kpa",
    ],
    "pdu": ["power_w", "energy_kwh", "input_power_w"],
    "crah": [
        "supply_air_temp_c",
        "return_air_temp_c",
        "fan_speed_pct",
        "fan_power_w",
        "airflow_m3h",
        "supply_air_setpoint_c",
    ],
    "meter": ["power_kw", "energy_kwh"],
    "plant": [
        "chw_supply_temp_c",
        "chw_return_temp_c",
        "cw_supply_temp_c",
        "chiller_power_kw",
        "tower_power_kw",
        "pump_power_kw",
        "cooling_load_kw",
        "outdoor_drybulb_c",
        "outdoor_wetbulb_c",
        "chw_supply_setpoint_c",
        "cw_supply_setpoint_c",
        # issue 19 (opt-live): plant mode and state
        "economizer_enabled",
        "chillers_running",
        "chw_pump_speed_pct",
        "cw_pump_speed_pct",
        "tower_fan_speed_pct",
    ],
    # an SNMP UPS-MIB agent (RFC 1628), see simulator/ups.py
    "ups": [
        "on_battery",
        "battery_status",
        "battery_charge_pct",
        "battery_runtime_s",
        "battery_time_on_battery_s",
        "battery_voltage_v",
        "battery_current_a",
        "battery_temp_c",
        "battery_test_result",
        "output_load_pct",
        "input_line_bads_total",
        "alarms_present",
        "output_power_w",
        "input_voltage_v",
        "frequency_hz",
    ],
}
# metrics a random sensor fault may hit (measured, not computed or counted)
SENSOR_METRICS: dict[str, list[str]] = {
    "cdu": [
        "supply_temp_c",
        "return_temp_c",
        "flow_lpm",
        "diff_pressure_kpa",
        "primary_supply_temp_c",
        "primary_return_temp_c",
        "primary_flow_lpm",
    ],
    "crah": ["supply_air_temp_c", "return_air_temp_c"],
    "psu": ["temp_c", "input_power_w"],
    "gpu": ["gpu_temp_c", "power_w"],
}
# Resolution of each register as the device reports it (sensor noise and offsets are
# applied by the model). NVML: temperatures in whole degC (nvmlDeviceGetTemperature is an
# unsigned int), power in mW (nvmlDeviceGetPowerUsage), energy in mJ
# (nvmlDeviceGetTotalEnergyConsumption), utilization in whole %, clocks in MHz.
# Redfish PSUs/PDUs (PMBus behind the BMC): whole watts and degC, energy in Wh steps.
# Modbus CDUs: int16 registers, temperatures x100, flow and dp x10, speed x10.
# Modbus CRAHs: air temperatures x10. Modbus meters (32-bit registers): kW x10, kWh x100.
# Plant controller (BACnet/Modbus): temperatures x10, kW x10.
QUANTUM: dict[tuple[str, str], float] = {
    ("gpu", "gpu_temp_c"): 1.0,
    ("gpu", "mem_temp_c"): 1.0,
    ("gpu", "power_w"): 0.001,
    ("gpu", "energy_mj"): 1.0,
    ("gpu", "util_gpu_pct"): 1.0,
    ("gpu", "sm_clock_mhz"): 1.0,
    ("psu", "input_power_w"): 1.0,
    ("psu", "output_power_w"): 1.0,
    ("psu", "temp_c"): 1.0,
    ("psu", "energy_kwh"): 0.001,
    ("cdu", "supply_temp_c"): 0.01,
    ("cdu", "return_temp_c"): 0.01,
    ("cdu", "primary_supply_temp_c"): 0.01,
    ("cdu", "primary_return_temp_c"): 0.01,
    ("cdu", "flow_lpm"): 0.1,
    ("cdu", "primary_flow_lpm"): 0.1,
    ("cdu", "diff_pressure_kpa"): 0.1,
    ("cdu", "pump_speed_pct"): 0.1,
    ("cdu", "pump_power_w"): 1.0,
    ("cdu", "reservoir_level_pct"): 0.1,
    ("pdu", "power_w"): 1.0,
    ("pdu", "input_power_w"): 1.0,
    ("pdu", "energy_kwh"): 0.001,
    ("crah", "supply_air_temp_c"): 0.1,
    ("crah", "return_air_temp_c"): 0.1,
    ("crah", "fan_speed_pct"): 0.1,
    ("crah", "fan_power_w"): 1.0,
    ("crah", "airflow_m3h"): 1.0,
    ("meter", "power_kw"): 0.1,
    ("meter", "energy_kwh"): 0.01,
    ("plant", "chw_supply_temp_c"): 0.1,
    ("plant", "chw_return_temp_c"): 0.1,
    ("plant", "cw_supply_temp_c"): 0.1,
    ("plant", "chiller_power_kw"): 0.1,
    ("plant", "tower_power_kw"): 0.1,
    ("plant", "pump_power_kw"): 0.1,
    ("plant", "cooling_load_kw"): 0.1,
    ("plant", "outdoor_drybulb_c"): 0.1,
    ("plant", "outdoor_wetbulb_c"): 0.1,
    # UPS-MIB: whole %, minutes (upsEstimatedMinutesRemaining), seconds, 0.1 V, 0.1 A,
    # whole degC, whole RMS volts, 0.1 Hz, whole watts
    # issue 19 (opt-live): CDU setpoints as its registers hold them; plant speeds x10
    ("cdu", "supply_setpoint_c"): 0.01,
    ("cdu", "dp_setpoint_kpa"): 0.1,
    ("plant", "chw_pump_speed_pct"): 0.1,
    ("plant", "cw_pump_speed_pct"): 0.1,
    ("plant", "tower_fan_speed_pct"): 0.1,
    ("ups", "battery_charge_pct"): 1.0,
    ("ups", "battery_runtime_s"): 60.0,
    ("ups", "battery_time_on_battery_s"): 1.0,
    ("ups", "battery_voltage_v"): 0.1,
    ("ups", "battery_current_a"): 0.1,
    ("ups", "battery_temp_c"): 1.0,
    ("ups", "output_load_pct"): 1.0,
    ("ups", "output_power_w"): 1.0,
    ("ups", "input_voltage_v"): 1.0,
    ("ups", "frequency_hz"): 0.1,
}
H = 3600.0


@dataclass
class Block:
    kind: Kind
    device_class: str
    devices: list[str]
    racks: list[str]  # partition key per device
    metrics: list[str]
    values: Callable[[SiteSimulator], Sequence[ArrayLike]]  # one array (or scalar) per metric
    start: int = 0  # offset in the flat order

    @property
    def size(self) -> int:
        return len(self.devices) * len(self.metrics)


def _blocks(sim: SiteSimulator) -> list[Block]:
    lay, site = sim.layout, sim.site
    hall_of = lambda ids: [i.split("/")[1] for i in ids]  # noqa: E731
    blocks = [
        Block(
            Kind.gpu,
            "gpu",
            lay.gpu_ids,
            [lay.rack_keys[i] for i in lay.gpu_rack],
            CLASS_METRICS["gpu"],
            lambda s: [
                s.gpu_temp_read_c,
                s.gpu_mem_temp_read_c,
                s.gpu_power_read_w,
                s.gpu_energy_mj,
                s.gpu_util * 100.0,
                s.gpu_sm_clock_mhz,
                s.gpu_throttle_reasons,
                s.gpu_ecc_uncorrected,
                s.gpu_ecc_corrected,
                s.gpu_remapped_correctable,
                s.gpu_remapped_uncorrectable,
            ],
        ),
        Block(
            Kind.power,
            "psu",
            lay.psu_ids,
            [lay.rack_keys[i] for i in lay.psu_rack],
            CLASS_METRICS["psu"],
            lambda s: [s.psu_in_w, s.psu_out_w, s.psu_temp_c, s.psu_energy_kwh],
        ),
        Block(
            Kind.cooling,
            "cdu",
            lay.cdu_ids,
            hall_of(lay.cdu_ids),
            CLASS_METRICS["cdu"],
            lambda s: [
                s.cdu_supply_c,
                s.cdu_return_c,
                s.cdu_flow_lpm,
                s.cdu_pump_speed * 100.0,
                s.cdu_pump_w,
                s.cdu_dp_kpa,
                s.cdu_primary_supply_c,
                s.cdu_primary_return_c,
                s.cdu_primary_flow_lpm,
                s.cdu_reservoir_pct,
                s.cdu_leak_detected,
                s.controls.active["cdu_supply_setpoint_c"],
                s.controls.active["cdu_dp_setpoint_kpa"],
            ],
        ),
        Block(
            Kind.power,
            "pdu",
            lay.pdu_ids,
            hall_of(lay.pdu_ids),
            CLASS_METRICS["pdu"],
            lambda s: [s.pdu_out_w, s.pdu_energy_kwh, s.pdu_in_w],
        ),
        Block(
            Kind.air,
            "crah",
            lay.crah_ids,
            hall_of(lay.crah_ids),
            CLASS_METRICS["crah"],
            lambda s: [
                s.crah_supply_c,
                s.crah_return_c,
                s.crah_fan_speed * 100.0,
                s.crah_fan_w,
                s.crah_airflow_m3h,
                s.controls.active["crah_supply_setpoint_c"],
            ],
        ),
    ]
    meter_values: dict[MeterRole, Callable[[SiteSimulator], Sequence[ArrayLike]]] = {
        MeterRole.facility_input: lambda s: (s.plant.facility_kw, s.meter_energy_kwh["facility"]),
        MeterRole.ups_output: lambda s: (s.plant.ups_output_kw, s.meter_energy_kwh["ups_output"]),
        MeterRole.pdu_output: lambda s: (s.plant.pdu_output_kw, s.meter_energy_kwh["pdu_output"]),
        MeterRole.it_input: lambda s: (s.plant.it_kw, s.meter_energy_kwh["it_input"]),
        MeterRole.cooling_plant: lambda s: (s.plant.plant_kw, s.meter_energy_kwh["cooling"]),
    }
    for meter in site.meters:
        blocks.append(
            Block(
                Kind.facility,
                "meter",
                [site.meter_id(meter)],
                ["facility"],
                CLASS_METRICS["meter"],
                meter_values[meter.role],
            )
        )
    blocks.append(
        Block(
            Kind.facility,
            "plant",
            [site.plant_id()],
            ["facility"],
            CLASS_METRICS["plant"],
            lambda s: [
                s.plant.chw_supply_c,
                s.plant.chw_return_c,
                s.plant.cw_supply_c,
                s.plant.chiller_kw,
                s.plant.tower_kw,
                s.plant.chw_pump_kw + s.plant.cw_pump_kw,
                s.plant.cooling_load_kw,
                s.plant.outdoor_drybulb_c,
                s.plant.outdoor_wetbulb_c,
                s.controls.get("chw_supply_setpoint_c", active=True),
                s.controls.get("cw_supply_setpoint_c", active=True),
                s.controls.get("economizer_enabled", active=True),
                s.plant_model.out.chillers_on,
                100.0 * s.plant_model.out.chw_pump_speed,
                100.0 * s.plant_model.out.cw_pump_speed,
                100.0 * s.plant_model.out.tower_speed,
            ],
        )
    )
    blocks.append(
        Block(
            Kind.power,
            "ups",
            [lay.ups_id],
            ["facility"],
            CLASS_METRICS["ups"],
            lambda s: [
                s.ups.on_battery,
                s.ups.status,
                100.0 * s.ups.charge,
                # upsEstimatedMinutesRemaining is whole minutes, rounded down
                np.floor(s.ups.runtime_s / 60.0) * 60.0,
                s.ups.seconds_on_battery,
                s.ups.battery_v,
                s.ups.battery_a,
                s.ups.temp_c,
                s.ups.test_result,
                s.ups.load_pct,
                s.ups.line_bads,
                s.ups.alarms,
                s.ups.out_kw * 1000.0,
                s.ups.input_v,
                s.ups.frequency_hz,
            ],
        )
    )
    return [b for b in blocks if b.devices]


class TelemetryPlan:
    """Flat (device, metric) layout plus per-read state (noise, stuck values)."""

    def __init__(self, sim: SiteSimulator) -> None:
        self.blocks = _blocks(sim)
        pos = 0
        for b in self.blocks:
            b.start = pos
            pos += b.size
        self.size = pos
        # dictionary codes, for columnar writers
        self.device_dict: list[str] = []
        self.metric_dict: list[str] = sorted({m for b in self.blocks for m in b.metrics})
        self.kind_dict: list[str] = [k.value for k in Kind]
        self.rack_dict: list[str] = sorted({r for b in self.blocks for r in b.racks})
        m_code = {m: i for i, m in enumerate(self.metric_dict)}
        r_code = {r: i for i, r in enumerate(self.rack_dict)}
        dev_code, met, kind, rack = [], [], [], []
        quantum = np.zeros(self.size)
        for b in self.blocks:
            first = len(self.device_dict)
            self.device_dict += b.devices
            n = len(b.devices)
            codes = np.arange(first, first + n, dtype=np.int32)
            racks = np.array([r_code[r] for r in b.racks], dtype=np.int32)
            for j, m in enumerate(b.metrics):
                dev_code.append(codes)
                met.append(np.full(n, m_code[m], dtype=np.int32))
                kind.append(np.full(n, self.kind_dict.index(b.kind.value), dtype=np.int32))
                rack.append(racks)
                sl = slice(b.start + j * n, b.start + (j + 1) * n)
                quantum[sl] = QUANTUM.get((b.device_class, m), 0.0)
        self.device_code = np.concatenate(dev_code)
        self.metric_code = np.concatenate(met)
        self.kind_code = np.concatenate(kind)
        self.rack_code = np.concatenate(rack)
        self.quantized = np.flatnonzero(quantum)
        self.quantum = quantum[self.quantized]
        self.gpu_block = next((b for b in self.blocks if b.device_class == "gpu"), None)
        self._stuck: dict[str, float] = {}
        self._drift_base: dict[str, float] = {}

    def position(self, device_class: str, index: int, metric: str) -> int:
        b = next(b for b in self.blocks if b.device_class == device_class)
        return b.start + b.metrics.index(metric) * len(b.devices) + index

    def true_values(self, sim: SiteSimulator) -> NDArray[np.float64]:
        parts = []
        for b in self.blocks:
            n = len(b.devices)
            for v in b.values(sim):
                parts.append(np.broadcast_to(np.asarray(v, dtype=float), (n,)))
        return np.concatenate(parts)

    def read(self, sim: SiteSimulator) -> tuple[NDArray[np.float64], NDArray[np.bool_] | None]:
        """(values, present mask or None when everything reports) for the current state."""
        values = self.true_values(sim)
        t = sim.time_s
        for f in sim.faults.sensor_faults:
            if t < f.onset_s:
                continue
            assert f.metric is not None  # parse_faults gives every sensor fault a metric
            p = self.position(f.device_class, f.index, f.metric)
            if f.type == "sensor_stuck":
                values[p] = self._stuck.setdefault(f.fault_id, values[p])
            else:
                base = self._drift_base.setdefault(f.fault_id, values[p])
                rate = f.params["rate"] or abs(base) * f.params["rate_pct"] / 100.0
                values[p] += rate * (t - f.onset_s) / H
        if len(self.quantized):  # what the register holds, sensor faults included
            q = self.quantum
            values[self.quantized] = np.floor(values[self.quantized] / q + 0.5) * q
        present = None
        lost = sim.gpu_lost
        if self.gpu_block is not None and lost.any():
            present = np.ones(self.size, dtype=bool)
            n = len(self.gpu_block.devices)
            idx = np.flatnonzero(lost)
            for j in range(len(self.gpu_block.metrics)):
                present[self.gpu_block.start + j * n + idx] = False
        return values, present
