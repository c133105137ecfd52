"""Modbus TCP source: CRAC/CRAH units, power meters, chiller plant controllers (pymodbus).

A register map (inline `[[sources.registers]]` or a `register_map`: a shipped map's
name such as `crah` in registers/, or a TOML file) says where each metric lives: function
(coils, discrete inputs, holding or input registers), address, data type, word and byte
order, scale/offset. Points are read in as few requests as the protocol allows
(contiguous blocks of at most 125 registers or 2000 bits) and decoded here.

A block that fails (exception response, timeout, short response) is counted in
`errors`, logged, and reported as a `source_error` event when it starts failing; the
other blocks' readings still go out. Only when every block fails, or the device cannot
be reached at all, does `read` raise, so the daemon counts and reports the source as down.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collectors.base import Readings, now_ms, source_error_event
from collectors.point_tables import check_metric, load_table
from domain.contract import Kind

log = logging.getLogger(__name__)

Function = Literal["coil", "discrete_input", "holding", "input"]
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"
]
Order = Literal["big", "little"]
# registers a value spans (bool: one bit of a coil or discrete input)
WIDTH: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
STRUCT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "int64": ">q",
    "uint64": ">Q",
    "float64": ">d",
}
BIT_FUNCTIONS = ("coil", "discrete_input")
# Modbus application protocol limits per read request: FC 3/4 registers, FC 1/2 bits
MAX_COUNT = {"holding": 125, "input": 125, "coil": 2000, "discrete_input": 2000}
FC = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}
WHAT = {
    "coil": "coils",
    "discrete_input": "discrete inputs",
    "holding": "holding registers",
    "input": "input registers",
}
# Modbus exception codes (application protocol spec, section 7)
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class Register(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, description="contract metric name, e.g. supply_air_temp_c")
    address: int = Field(ge=0, le=65535, description="0-based protocol address (PDU address)")
    function: Function = Field(
        "holding",
        description="coil (FC 1), discrete_input (FC 2), holding (FC 3), input (FC 4)",
    )
    data_type: DataType | None = Field(
        None, description="default: bool for coils/discrete inputs, uint16 for registers"
    )
    count: int | None = Field(
        None, ge=1, le=4, description="registers the value spans; checked against data_type"
    )
    word_order: Order | None = Field(
        None,
        description="32/64-bit values: big = high word first (Modbus default); "
        "default: the map's (or source's) word_order",
    )
    byte_order: Order | None = Field(
        None,
        description="bytes within a register: big = high byte first (Modbus default); "
        "default: the map's (or source's) byte_order",
    )
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = Field(None, description="checked against the metric's contract unit")
    device_id: str | None = Field(None, description="absolute device id (default: source's)")
    device_suffix: str | None = Field(
        None, description="appended to the source's device_id, e.g. L1 for a meter phase"
    )
    kind: Kind | None = Field(None, description="default: the source's kind")

    @model_validator(mode="after")
    def _type_fits_function(self) -> Register:
        name = f"{self.metric} at {self.function} {self.address}"
        bits = self.function in BIT_FUNCTIONS
        if self.data_type is None:
            self.data_type = "bool" if bits else "uint16"
        if bits and self.data_type != "bool":
            raise ValueError(
                f"{name}: data_type {self.data_type!r} on a single bit; "
                f"coils and discrete inputs are bool (0/1)"
            )
        if not bits and self.data_type == "bool":
            raise ValueError(
                f"{name}: data_type 'bool' is for coils and discrete inputs; "
                "a register holds int16/uint16/.../float64"
            )
        width = WIDTH[self.data_type]
        if bits and (self.word_order or self.byte_order):
            raise ValueError(f"{name}: word_order/byte_order given for a single bit")
        if width == 1 and self.word_order is not None:
            raise ValueError(
                f"{name}: word_order given for 16-bit type {self.data_type}; "
                "it orders the registers of 32/64-bit values (use byte_order for a "
                "register's bytes)"
            )
        if self.count is not None and self.count != width:
            raise ValueError(
                f"{name}: count = {self.count} but {self.data_type} spans {width} "
                f"register{'s' if width > 1 else ''}"
            )
        if self.address + width > 65536:
            raise ValueError(f"{name}: {self.data_type} runs past address 65535")
        return self

    @property
    def width(self) -> int:
        assert self.data_type is not None  # set by the validator
        return WIDTH[self.data_type]


class RegisterMapFile(BaseModel):
    """A shipped register map: collectors/sources/modbus/registers/*.toml."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    kind: Kind | None = None
    word_order: Order = Field("big", description="default for the map's 32/64-bit values")
    byte_order: Order = Field("big", description="default for the map's registers")
    registers: list[Register] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlaps(self) -> RegisterMapFile:
        check_overlaps([(f"registers[{i}]", r) for i, r in enumerate(self.registers)])
        return self


def check_overlaps(labelled: list[tuple[str, Register]]) -> None:
    """Two points on one register (or one bit) are a map mistake: a wrong address or width."""
    by_function: dict[str, list[tuple[int, int, str, Register]]] = {}
    for label, r in labelled:
        by_function.setdefault(r.function, []).append(
            (r.address, r.address + r.width - 1, label, r)
        )
    for function, spans in by_function.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        for (a0, a1, la, ra), (b0, b1, lb, rb) in zip(spans, spans[1:], strict=False):
            if b0 <= a1:
                raise ValueError(
                    f"{lb} ({rb.metric}, {function} {b0}...{b1}) overlaps "
                    f"{la} ({ra.metric}, {function} {a0}...{a1})"
                )


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
    word_order: Order = Field("big", description="default for inline 32/64-bit registers")
    byte_order: Order = Field("big", description="default for inline registers")
    max_gap: int = Field(8, ge=0, le=100, description="unused registers read to join blocks")

    @model_validator(mode="after")
    def _load_map_and_check_metrics(self) -> ModbusSourceConfig:
        inline = [self._with_defaults(r, self.word_order, self.byte_order) for r in self.registers]
        labelled = [(f"registers[{i}]", r) for i, r in enumerate(inline)]
        if self.register_map is not None:
            mapped = load_register_map(self.register_map)
            self.kind = self.kind or mapped.kind
            labelled = [
                (
                    f"register_map {self.register_map} registers[{i}]",
                    self._with_defaults(r, mapped.word_order, mapped.byte_order),
                )
                for i, r in enumerate(mapped.registers)
            ] + labelled
        if not labelled:
            raise ValueError("registers: none configured (inline or via register_map)")
        check_overlaps(labelled)
        for label, reg in labelled:
            check_metric(
                label, reg.kind or self.kind, reg.metric, reg.unit, "register",
                "in the map or the source",
            )  # fmt: skip
        self.registers = [r for _, r in labelled]
        return self

    @staticmethod
    def _with_defaults(reg: Register, word_order: Order, byte_order: Order) -> Register:
        """Resolve the map-level orders into the register (plain data from here on)."""
        if reg.function in BIT_FUNCTIONS:
            return reg
        return reg.model_copy(
            update={
                "word_order": reg.word_order or word_order,
                "byte_order": reg.byte_order or byte_order,
            }
        )


SHIPPED_MAPS = Path(__file__).resolve().parent / "registers"


def load_register_map(path: Path) -> RegisterMapFile:
    """Load a register map: a path, or the bare name of a map shipped in `registers/`."""
    return load_table(path, SHIPPED_MAPS, RegisterMapFile, "register_map")


def decode(words: Sequence[int], data_type: str, word_order: str, byte_order: str = "big") -> float:
    """Registers -> number. `word_order` orders the registers of a 32/64-bit value (big =
    high word first); `byte_order` the two bytes within each register (big = Modbus)."""
    if word_order == "little":
        words = words[::-1]
    order: Literal["big", "little"] = "little" if byte_order == "little" else "big"
    raw = b"".join(w.to_bytes(2, order) for w in words)
    return float(struct.unpack(STRUCT[data_type], raw)[0])


@dataclass(frozen=True, slots=True)
class Point:
    """One register map entry, resolved: what the read loop needs and nothing else."""

    metric: str
    kind: Kind
    device_id: str
    function: str
    address: int
    width: int
    data_type: str
    word_order: str
    byte_order: str
    scale: float
    offset: float
    divisor: float | None  # scale 0.001 as "/ 1000": one rounding, not two

    def value(self, raw: Sequence[int]) -> float:  # registers, or bits (bool is an int)
        if self.data_type == "bool":
            v = 1.0 if raw[0] else 0.0
        else:
            v = decode(raw, self.data_type, self.word_order, self.byte_order)
        v = v / self.divisor if self.divisor is not None else v * self.scale
        return v + self.offset


def divisor_of(scale: float) -> float | None:
    """1/scale when that is a whole number (0.1, 0.001): dividing an integer count by it
    is correctly rounded, so a Wh count read as kWh is as exact as a float64 can be."""
    if scale == 0 or abs(scale) >= 1:
        return None
    d = round(1 / scale)
    return float(d) if abs(d * scale - 1) < 1e-12 else None


@dataclass
class Block:
    function: str
    start: int
    count: int
    points: list[tuple[int, Point]]  # (offset in block, point)

    @property
    def label(self) -> str:
        return f"{WHAT[self.function]} {self.start}...{self.start + self.count - 1}"


def plan_blocks(points: list[Point], max_gap: int) -> list[Block]:
    """Group points into as few contiguous read requests as the protocol allows."""
    blocks: list[Block] = []
    for function in FC:
        limit = MAX_COUNT[function]
        pts = sorted((p for p in points if p.function == function), key=lambda p: p.address)
        for p in pts:
            end = p.address + p.width
            b = blocks[-1] if blocks and blocks[-1].function == function else None
            if b and p.address <= b.start + b.count + max_gap and end - b.start <= limit:
                b.count = max(b.count, end - b.start)
                b.points.append((p.address - b.start, p))
            else:
                blocks.append(Block(function, p.address, p.width, [(0, p)]))
    return blocks


class ModbusError(RuntimeError):
    pass


class BlockError(ModbusError):
    """One block's read failed. `reason` is the counter key; `transport` means the
    connection is no longer usable (timeout, connection lost)."""

    def __init__(self, reason: str, message: str, transport: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.transport = transport


class ModbusSource:
    def __init__(self, config: ModbusSourceConfig) -> None:
        from pymodbus.client import ModbusTcpClient  # lazy: only racks with Modbus devices

        self.config = config
        self.name = config.name
        self.where = f"{config.host}:{config.port} unit {config.unit_id}"
        points = []
        for r in config.registers:
            kind = r.kind or config.kind
            assert kind is not None and r.data_type is not None  # the validators ensure it
            device = r.device_id or (
                f"{config.device_id}/{r.device_suffix}" if r.device_suffix else config.device_id
            )
            points.append(
                Point(
                    r.metric,
                    kind,
                    device,
                    r.function,
                    r.address,
                    r.width,
                    r.data_type,
                    r.word_order or "big",
                    r.byte_order or "big",
                    r.scale,
                    r.offset,
                    divisor_of(r.scale),
                )
            )
        self.blocks = plan_blocks(points, config.max_gap)
        self.client = ModbusTcpClient(
            config.host,
            port=config.port,
            timeout=config.timeout_s,
            retries=config.retries,
            reconnect_delay=0,
        )
        self.skipped_nonfinite = 0
        # failed block reads per reason: exception, timeout, connection, short, protocol
        self.errors: Counter[str] = Counter()
        self._failing: dict[tuple[str, int], str] = {}  # block -> its last failure message

    def _read_block(self, b: Block) -> Sequence[int]:
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        c = self.client
        fn = {
            "coil": c.read_coils,
            "discrete_input": c.read_discrete_inputs,
            "holding": c.read_holding_registers,
            "input": c.read_input_registers,
        }[b.function]
        where = f"{self.where}: {b.label}"
        try:
            resp = fn(b.start, count=b.count, device_id=self.config.unit_id)
        except ConnectionException as exc:
            raise BlockError("connection", f"{where}: connection lost: {exc}", True) from exc
        except ModbusIOException as exc:
            if "No response" in str(exc):  # how pymodbus reports a missing answer
                raise BlockError(
                    "timeout", f"{where}: no answer within {self.config.timeout_s:g} s", True
                ) from exc
            # an answer for another unit or transaction: resynchronise on a new connection
            raise BlockError("protocol", f"{where}: bad response: {exc}", True) from exc
        except ModbusException as exc:  # a garbled frame: as above
            raise BlockError("protocol", f"{where}: bad response: {exc}", True) from exc
        except OSError as exc:
            raise BlockError("connection", f"{where}: connection lost: {exc!r}", True) from exc
        if resp.isError():
            code = getattr(resp, "exception_code", None)
            name = EXCEPTION_NAMES.get(code, "unknown exception") if code is not None else resp
            raise BlockError("exception", f"{where}: device answered exception {code} ({name})")
        values: Sequence[int] = resp.bits if b.function in BIT_FUNCTIONS else resp.registers
        # bits come padded to whole bytes; fewer values than asked is a broken answer
        if len(values) < b.count:
            raise BlockError(
                "short",
                f"{where}: short response: {len(values)} of {b.count} "
                f"{'bits' if b.function in BIT_FUNCTIONS else 'registers'}",
            )
        return values

    def read(self) -> Readings:
        cfg = self.config
        if not self.client.connected and not self.client.connect():
            raise ModbusError(f"{self.where}: cannot connect (timeout {cfg.timeout_s} s)")
        out = Readings()
        failed: list[tuple[Block, BlockError]] = []
        ok = 0
        transport_failures = 0  # in a row
        for i, b in enumerate(self.blocks):
            if transport_failures:
                reason = ""
                if transport_failures >= 2:  # a second block unanswered: the device is gone
                    reason = "two blocks in a row unanswered"
                elif not self.client.connect():
                    reason = "cannot reconnect"
                if reason:
                    rest = ", ".join(x.label for x in self.blocks[i:])
                    failed.append(
                        (b, BlockError("skipped", f"{self.where}: {reason}; skipped {rest}"))
                    )
                    break
            try:
                values = self._read_block(b)
            except BlockError as exc:
                self.errors[exc.reason] += 1
                failed.append((b, exc))
                if exc.transport:
                    self.client.close()  # start the next block on a fresh connection
                    transport_failures += 1
                continue
            transport_failures = 0
            ok += 1
            self._recovered(b)
            t = now_ms()
            for off, p in b.points:
                value = p.value(values[off : off + p.width])
                if not math.isfinite(value):  # e.g. a float32 NaN "no sensor" marker
                    self.skipped_nonfinite += 1
                    continue
                out.add(p.kind, cfg.rack, p.device_id, p.metric, value, t)
        if failed and not ok:
            for b, _ in failed:  # the daemon reports the whole source down instead
                self._failing.pop((b.function, b.start), None)
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise ModbusError(f"{failed[0][1]}{more}")
        out.failed_parts = len(self.blocks) - ok  # the daemon counts them (reason `partial`)
        self._report(failed, out)
        return out

    def _recovered(self, b: Block) -> None:
        if self._failing.pop((b.function, b.start), None) is not None:
            log.info("source %s: %s: %s read again", self.name, self.where, b.label)

    def _report(self, failed: list[tuple[Block, BlockError]], out: Readings) -> None:
        """A source_error event and a warning when a block starts failing or fails
        differently; the same failure again is only counted (and logged at debug)."""
        new = []
        for b, exc in failed:
            key = (b.function, b.start)
            msg = str(exc)
            if self._failing.get(key) != msg:
                self._failing[key] = msg
                new.append((exc.reason, msg))
            else:
                log.debug("source %s: still failing: %s", self.name, msg)
        if not new:
            return
        for _, msg in new:
            log.warning("source %s: register block failed, others read: %s", self.name, msg)
        out.events.append(
            source_error_event(
                self.config.device_id,
                (
                    f"source {self.name}: {len(failed)} of {len(self.blocks)} register "
                    f"block(s) failed: {'; '.join(m for _, m in new[:3])}"
                )[:1000],
                {
                    "source": self.name,
                    "reason": new[0][0],
                    "failed": len(failed),
                    "blocks": len(self.blocks),
                },
            )
        )

    def close(self) -> None:
        self.client.close()


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = ModbusSourceConfig
SOURCE_CLASS = ModbusSource
