"""Modbus TCP source: CRAC/CRAH units, power meters, chiller plant controllers (pymodbus).

A register map (inline `[[sources.registers]]` or a `register_map`: a shipped map's
name such as `crah` in registers/, or a TOML file) says where each metric lives: address,
function (holding/input registers), data type, word order, scale/offset. Registers are
read in as few requests as possible (contiguous blocks of at most 125 registers) and
decoded here; a device that does not answer within `timeout_s` raises, so the daemon
reports it and reads the others.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collectors.base import Readings, now_ms
from domain.contract import METRICS, Kind
from domain.site import load_toml_model

log = logging.getLogger(__name__)

DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
MAX_BLOCK = 125  # registers per read request (Modbus application protocol limit)


class Register(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, description="contract metric name, e.g. supply_air_temp_c")
    address: int = Field(ge=0, le=65535, description="0-based register address (PDU address)")
    function: Literal["holding", "input"] = "holding"
    data_type: DataType = "uint16"
    word_order: Literal["big", "little"] = Field(
        "big", description="32-bit values: big = high word first (Modbus default)"
    )
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = Field(None, description="checked against the metric's contract unit")
    device_id: str | None = Field(None, description="absolute device id (default: source's)")
    device_suffix: str | None = Field(
        None, description="appended to the source's device_id, e.g. L1 for a meter phase"
    )
    kind: Kind | None = Field(None, description="default: the source's kind")


class RegisterMapFile(BaseModel):
    """A shipped register map: collectors/sources/modbus/registers/*.toml."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    kind: Kind | None = None
    registers: list[Register] = Field(min_length=1)


class ModbusSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["modbus"] = "modbus"
    name: str = "modbus"
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave) id")
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(0, ge=0, le=5)
    device_id: str = Field(min_length=1, description="e.g. sv1/h1/crah1")
    kind: Kind | None = Field(None, description="default kind of the map's registers")
    rack: str = Field(min_length=1, description="partition key: hall id, rack id or facility")
    register_map: Path | None = Field(
        None,
        description="TOML register map: a shipped map's name (registers/<name>.toml) or a path",
    )
    registers: list[Register] = Field(default_factory=list)
    max_gap: int = Field(8, ge=0, le=100, description="unused registers read to join blocks")

    @model_validator(mode="after")
    def _load_map_and_check_metrics(self) -> ModbusSourceConfig:
        if self.register_map is not None:
            mapped = load_register_map(self.register_map)
            self.kind = self.kind or mapped.kind
            self.registers = [*mapped.registers, *self.registers]
        if not self.registers:
            raise ValueError("registers: none configured (inline or via register_map)")
        for i, reg in enumerate(self.registers):
            kind = reg.kind or self.kind
            if kind is None:
                raise ValueError(f"registers[{i}].kind: not set here, in the map or the source")
            unit = METRICS[kind].get(reg.metric)
            if unit is None:
                raise ValueError(
                    f"registers[{i}].metric: {reg.metric!r} is not a {kind.value} "
                    f"metric (known: {sorted(METRICS[kind])})"
                )
            if reg.unit is not None and reg.unit != unit:
                raise ValueError(
                    f"registers[{i}].unit: {reg.unit!r} but {reg.metric} is "
                    f"in {unit!r}; scale the register to {unit!r}"
                )
        return self


SHIPPED_MAPS = Path(__file__).resolve().parent / "registers"


def load_register_map(path: Path) -> RegisterMapFile:
    """Load a register map: a path, or the bare name of a map shipped in `registers/`."""
    shipped = SHIPPED_MAPS / f"{path}.toml"
    if path.suffix == "" and path.parent == Path(".") and shipped.is_file():
        path = shipped
    return load_toml_model(path, RegisterMapFile, prefix="register_map: ")


def decode(words: list[int], data_type: DataType, word_order: str) -> float:
    """Registers -> number. Bytes within a register are big-endian (Modbus); `word_order`
    orders the registers of a 32-bit value."""
    if word_order == "little":
        words = words[::-1]
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return float(struct.unpack(STRUCT[data_type], raw)[0])


@dataclass
class Block:
    function: str
    start: int
    count: int
    registers: list[tuple[int, Register]]  # (offset in block, register)


def plan_blocks(registers: list[Register], max_gap: int) -> list[Block]:
    """Group registers into as few contiguous read requests as the protocol allows."""
    blocks: list[Block] = []
    for function in ("holding", "input"):
        regs = sorted((r for r in registers if r.function == function), key=lambda r: r.address)
        for reg in regs:
            end = reg.address + WIDTH[reg.data_type]
            b = blocks[-1] if blocks and blocks[-1].function == function else None
            if b and reg.address <= b.start + b.count + max_gap and end - b.start <= MAX_BLOCK:
                b.count = max(b.count, end - b.start)
                b.registers.append((reg.address - b.start, reg))
            else:
                blocks.append(Block(function, reg.address, WIDTH[reg.data_type], [(0, reg)]))
    return blocks


class ModbusError(RuntimeError):
    pass


class ModbusSource:
    def __init__(self, config: ModbusSourceConfig) -> None:
        from pymodbus.client import ModbusTcpClient  # lazy: only racks with Modbus devices

        self.config = config
        self.name = config.name
        self.blocks = plan_blocks(config.registers, config.max_gap)
        self.client = ModbusTcpClient(
            config.host,
            port=config.port,
            timeout=config.timeout_s,
            retries=config.retries,
            reconnect_delay=0,
        )
        self.skipped_nonfinite = 0
        self.device_of = {
            id(r): r.device_id
            or (f"{config.device_id}/{r.device_suffix}" if r.device_suffix else config.device_id)
            for r in config.registers
        }

    def _read_block(self, b: Block) -> list[int]:
        from pymodbus.exceptions import ModbusException

        fn = (
            self.client.read_holding_registers
            if b.function == "holding"
            else self.client.read_input_registers
        )
        where = f"{self.config.host}:{self.config.port} unit {self.config.unit_id}"
        try:
            resp = fn(b.start, count=b.count, device_id=self.config.unit_id)
        except ModbusException as exc:
            self.client.close()  # reconnect on the next read
            raise ModbusError(
                f"{where}: {b.function} registers {b.start}...{b.start + b.count - 1}: {exc}"
            ) from exc
        if resp.isError():
            raise ModbusError(
                f"{where}: {b.function} registers {b.start}..."
                f"{b.start + b.count - 1}: device answered {resp}"
            )
        return list(resp.registers)

    def read(self) -> Readings:
        cfg = self.config
        if not self.client.connected and not self.client.connect():
            raise ModbusError(f"{cfg.host}:{cfg.port}: cannot connect (timeout {cfg.timeout_s} s)")
        out = Readings()
        for b in self.blocks:
            words = self._read_block(b)
            t = now_ms()
            for off, reg in b.registers:
                value = (
                    decode(words[off : off + WIDTH[reg.data_type]], reg.data_type, reg.word_order)
                    * reg.scale
                    + reg.offset
                )
                if not math.isfinite(value):  # e.g. a float32 NaN "no sensor" marker
                    self.skipped_nonfinite += 1
                    continue
                kind = reg.kind or cfg.kind
                assert kind is not None  # the config's validator requires one
                out.add(kind, cfg.rack, self.device_of[id(reg)], reg.metric, value, t)
        return out

    def close(self) -> None:
        self.client.close()


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = ModbusSourceConfig
SOURCE_CLASS = ModbusSource
