"""The simulated site's BMS: a pymodbus TCP server bound to a running simulator (issue 19).

It serves the shipped register maps, one Modbus unit per device: unit 1 the chilled-water
plant controller (`chiller-plant`), then one unit per CDU (`cdu`) and per CRAH (`crah`) in
site order (`bms_units`). A holding-register write of a setpoint commands the simulator
(`Controls.set`: the active setpoint then ramps to it at the envelope's rate); a value
outside the envelope is answered with exception 3 (illegal data value) and changes
nothing. Holding registers read back the command; input registers report what the
simulator's telemetry would (the active setpoints travel as telemetry metrics). So
`dctwin demo` closes the optimizer's loop over a real protocol.

`bms_writer_config(site, host, port)` is the matching write-path configuration
(`collectors/sources/modbus/writer.py`): every optimizer control to every unit that
holds it. The simulator is reached only through the simulated source (import contract),
so this module takes it as an object with `controls` and `telemetry`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from collectors.sources.modbus.source import Register, RegisterMapFile, decode, load_register_map
from collectors.sources.modbus.writer import ModbusWriterConfig, WritePoint, encode
from domain.plant import CONTROL_METRICS
from domain.site import Site

log = logging.getLogger(__name__)

MAPS = {"plant": "chiller-plant", "cdu": "cdu", "crah": "crah"}
FC_READ_HOLDING, FC_READ_INPUT = 3, 4
FC_WRITE = (6, 16)
ILLEGAL_ADDRESS, ILLEGAL_VALUE = 2, 3
# (device class, metric) -> optimizer control
CONTROL_OF = {v: k for k, v in CONTROL_METRICS.items()}


class SimLike(Protocol):
    """What the BMS needs of `simulator.model.SiteSimulator`."""

    @property
    def controls(self) -> Any: ...  # simulator.controls.Controls

    @property
    def telemetry(self) -> Any: ...  # simulator.telemetry.TelemetryPlan


@dataclass(frozen=True)
class BmsUnit:
    unit_id: int
    device_class: str  # plant, cdu, crah
    index: int  # among the site's devices of that class
    device_id: str
    register_map: str


def bms_units(site: Site) -> list[BmsUnit]:
    sid = site.site.id
    units = [BmsUnit(1, "plant", 0, site.plant_id(), MAPS["plant"])]
    cdus = [f"{sid}/{h.id}/{c.id}" for h in site.halls for c in h.cdus]
    crahs = [f"{sid}/{h.id}/{a.id}" for h in site.halls for a in h.crahs]
    for cls, ids in (("cdu", cdus), ("crah", crahs)):
        for i, dev in enumerate(ids):
            units.append(BmsUnit(len(units) + 1, cls, i, dev, MAPS[cls]))
    if len(units) > 247:  # Modbus unit ids 1..247
        raise ValueError(
            f"the simulated BMS serves at most 247 units; this site needs {len(units)}"
        )
    return units


def bms_writer_config(site: Site, host: str, port: int) -> ModbusWriterConfig:
    """The write path to the simulated BMS: each optimizer control to every unit holding it."""
    points = [
        WritePoint(
            control=CONTROL_OF[(u.device_class, r.metric)],
            unit_id=u.unit_id,
            register_map=Path(u.register_map),
            metric=r.metric,
            device_id=u.device_id,
        )
        for u in bms_units(site)
        for r in load_register_map(Path(u.register_map)).registers
        if r.function == "holding" and (u.device_class, r.metric) in CONTROL_OF
    ]
    return ModbusWriterConfig(name="simulated-bms", host=host, port=port, points=points)


def _size(regs: list[Register]) -> int:
    return max((r.address + r.width for r in regs), default=1)


class SimulatedBms:
    """The BMS server in a background thread; `start()`, `stop()`."""

    def __init__(self, sim: SimLike, site: Site, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim, self.host = sim, host
        self.port = port or _free_port(host)
        self.units = bms_units(site)
        self.maps: dict[int, RegisterMapFile] = {
            u.unit_id: load_register_map(Path(u.register_map)) for u in self.units
        }
        self.writes: list[tuple[str, str, float]] = []  # (device, control, value) accepted
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, name="simulated-bms", daemon=True)

    # -- register values ------------------------------------------------------------------

    def _telemetry(self, unit: BmsUnit, metric: str) -> float | None:
        plan = self.sim.telemetry
        cls = unit.device_class
        block = next((b for b in plan.blocks if b.device_class == cls), None)
        if block is None or metric not in block.metrics:
            return None  # a register the simulator has no value for reads 0
        v = block.values(self.sim)[block.metrics.index(metric)]
        try:
            return float(v[unit.index])
        except (TypeError, IndexError):
            return float(v)  # a site-wide scalar (the plant)

    def _value(self, unit: BmsUnit, r: Register) -> float | None:
        control = CONTROL_OF.get((unit.device_class, r.metric))
        if r.function == "holding" and control is not None:
            return float(self.sim.controls.commanded[control][unit.index])  # the command
        return self._telemetry(unit, r.metric)

    def _fill(self, unit: BmsUnit, function: str, registers: list[int], start: int) -> None:
        for r in self.maps[unit.unit_id].registers:
            if r.function != function:
                continue
            v = self._value(unit, r)
            try:
                words = encode(v, r) if v is not None else [0] * r.width
            except ValueError:  # beyond what the register can hold: the device saturates
                words = [0] * r.width
            off = r.address - start
            registers[off : off + r.width] = words

    def _write(self, unit: BmsUnit, address: int, values: Sequence[int]) -> int | None:
        """Command the simulator; an exception code, or None when every value was taken."""
        end = address + len(values)
        todo = []
        for r in self.maps[unit.unit_id].registers:
            if r.function != "holding" or r.address + r.width <= address or r.address >= end:
                continue
            control = CONTROL_OF.get((unit.device_class, r.metric))
            if control is None or r.address < address or r.address + r.width > end:
                return ILLEGAL_ADDRESS  # read-only, or half a multi-register value
            assert r.data_type is not None
            words = list(values[r.address - address : r.address - address + r.width])
            v = decode(words, r.data_type, r.word_order or "big", r.byte_order or "big")
            todo.append((control, v * r.scale + r.offset))
        if not todo:
            return ILLEGAL_ADDRESS
        dev = None if unit.device_class == "plant" else unit.device_id
        for control, v in todo:  # check all before commanding any
            env = self.sim.controls.envelopes()[control]
            if not env.min <= v <= env.max:
                log.warning(
                    "simulated BMS: %s %s = %g refused (envelope)", unit.device_id, control, v
                )
                return ILLEGAL_VALUE
        for control, v in todo:
            self.sim.controls.set(control, v, dev)
            self.writes.append((unit.device_id, control, v))
        return None

    async def _action(
        self,
        unit: BmsUnit,
        fc: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> Any:
        from pymodbus.constants import ExcCodes

        if fc in FC_WRITE and values is not None:
            code = self._write(unit, address, [int(v) for v in values])
            return None if code is None else ExcCodes(code)
        if fc == FC_READ_HOLDING:
            self._fill(unit, "holding", registers, start)
        elif fc == FC_READ_INPUT:
            self._fill(unit, "input", registers, start)
        return None

    # -- server ---------------------------------------------------------------------------

    def _devices(self) -> list[Any]:
        from pymodbus.simulator import DataType, SimData, SimDevice

        devices = []
        for u in self.units:
            regs = self.maps[u.unit_id].registers
            hold = [r for r in regs if r.function == "holding"]
            inp = [r for r in regs if r.function == "input"]

            async def action(*args: Any, unit: BmsUnit = u) -> Any:
                return await self._action(unit, *args)

            blocks = [
                [SimData(address=0, values=[0] * _size(rs), datatype=DataType.REGISTERS)]
                for rs in (hold, inp)
            ]
            bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
            devices.append(
                SimDevice(id=u.unit_id, simdata=(bits, bits, blocks[0], blocks[1]), action=action)
            )
        return devices

    def _run(self) -> None:
        from pymodbus.server import ModbusTcpServer

        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = ModbusTcpServer(self._devices(), address=(self.host, self.port))
            await self._server.serve_forever()

        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def start(self, timeout_s: float = 10.0) -> SimulatedBms:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while True:  # ready when it accepts a connection
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("simulated BMS (Modbus TCP) on %s:%d", self.host, self.port)
                return self
            except OSError:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise RuntimeError(
                        f"simulated BMS did not start on {self.host}:{self.port}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            try:
                fut.result(10)
            except Exception:  # already stopping
                log.debug("simulated BMS shutdown", exc_info=True)
        self._thread.join(10)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
