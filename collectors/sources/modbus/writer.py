"""Setpoint write-back over Modbus TCP: write holding registers, read them back (issue 19).

The optimizer's closed loop writes through this (`domain.control.SetpointWriter`). Each
point names an optimizer control, the Modbus unit and the metric of a register map
(`registers/*.toml`) whose holding register takes it; a control may have several points
(every CDU gets the site-wide CDU setpoint). A value is encoded with the register's data
type, scale/offset and word/byte order (FC 16), then read back (FC 3) and compared at the
register's resolution: a refused write (exception response, timeout, value outside the
type's range) or a read-back that differs raises `SetpointWriteError` naming control,
unit, register and values. Points already written in that call are first put back to what
they held, so a failed write changes nothing.

    writer = ModbusSetpointWriter(ModbusWriterConfig(host="10.1.0.5", points=[...]))
    writer.write({"chw_supply_setpoint_c": 19.5})   # {"chw_supply_setpoint_c": 19.5}
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collectors.sources.modbus.source import (
    EXCEPTION_NAMES,
    STRUCT,
    Register,
    decode,
    load_register_map,
)
from domain.control import SetpointWriteError, per_control

log = logging.getLogger(__name__)

INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


class WritePoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control: str = Field(min_length=1, description="optimizer control, e.g. chw_supply_setpoint_c")
    unit_id: int = Field(1, ge=0, le=255)
    register_map: Path = Field(
        description="a shipped map's name (chiller-plant, cdu, crah) or path"
    )
    metric: str = Field(min_length=1, description="the map's metric whose holding register it is")
    device_id: str | None = Field(None, description="the device, for messages and the audit")


class ModbusWriterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["modbus"] = "modbus"
    name: str = "modbus-writer"
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(0, ge=0, le=5)
    points: list[WritePoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _holding_registers(self) -> ModbusWriterConfig:
        for i, p in enumerate(self.points):
            resolve(p, f"points[{i}]")  # raises naming the point
        return self


def resolve(p: WritePoint, label: str) -> Register:
    regs = [r for r in load_register_map(p.register_map).registers if r.metric == p.metric]
    if not regs:
        raise ValueError(f"{label}: register map {p.register_map} has no metric {p.metric!r}")
    r = regs[0]
    if r.function != "holding":
        raise ValueError(
            f"{label}: {p.metric} is a {r.function} point in {p.register_map}; only holding "
            "registers are writable"
        )
    return r


def load_writer_config(path: Path) -> ModbusWriterConfig:
    """A writer file: TOML with the writer's keys (docs/optimizer.md, "Live operation")."""
    with open(path, "rb") as f:
        return ModbusWriterConfig.model_validate(tomllib.load(f))


def encode(value: float, r: Register) -> list[int]:
    """A value in the metric's unit -> the register words (inverse of source.decode)."""
    assert r.data_type is not None
    raw = (value - r.offset) / r.scale
    if r.data_type.startswith("float"):
        packed = struct.pack(STRUCT[r.data_type], raw)
    else:
        n = round(raw)
        lo, hi = INT_RANGE[r.data_type]
        if not lo <= n <= hi:
            raise ValueError(f"{value:g} is {n} raw, outside {r.data_type} [{lo}, {hi}]")
        packed = struct.pack(STRUCT[r.data_type], n)
    order: Literal["big", "little"] = "little" if r.byte_order == "little" else "big"
    words = [int.from_bytes(packed[i : i + 2], order) for i in range(0, len(packed), 2)]
    return words[::-1] if r.word_order == "little" else words


@dataclass(frozen=True)
class _Target:
    point: WritePoint
    register: Register

    @property
    def key(self) -> str:
        """The point's key in `read_points` / `write_points`."""
        p = self.point
        return f"{p.control}@{p.device_id or f'unit {p.unit_id}'}"

    @property
    def label(self) -> str:
        p, r = self.point, self.register
        dev = f" ({p.device_id})" if p.device_id else ""
        return f"{p.control}: unit {p.unit_id}{dev} holding {r.address} ({p.metric})"

    def value(self, words: Sequence[int]) -> float:
        r = self.register
        assert r.data_type is not None
        return (
            decode(words, r.data_type, r.word_order or "big", r.byte_order or "big") * (r.scale)
            + r.offset
        )


class ModbusSetpointWriter:
    """`domain.control.SetpointWriter` over Modbus TCP; safe to call from any thread."""

    def __init__(self, config: ModbusWriterConfig) -> None:
        from pymodbus.client import ModbusTcpClient  # lazy, as in the source

        self.config = config
        self.name = config.name
        self.where = f"{config.host}:{config.port}"
        self.targets = [_Target(p, resolve(p, p.control)) for p in config.points]
        self.client = ModbusTcpClient(
            config.host,
            port=config.port,
            timeout=config.timeout_s,
            retries=config.retries,
            reconnect_delay=0,
        )
        self._lock = threading.Lock()

    def controls(self) -> list[str]:
        return sorted({t.point.control for t in self.targets})

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from pymodbus.exceptions import ModbusException

        if not self.client.connected and not self.client.connect():
            raise SetpointWriteError(
                f"{self.where}: {what}: cannot connect (timeout {self.config.timeout_s:g} s)"
            )
        try:
            resp = fn(*args, **kw)
        except (ModbusException, OSError) as exc:
            self.client.close()
            raise SetpointWriteError(f"{self.where}: {what}: {exc}") from exc
        if resp.isError():
            code = getattr(resp, "exception_code", None)
            name = EXCEPTION_NAMES.get(code, "unknown exception") if code is not None else resp
            raise SetpointWriteError(
                f"{self.where}: {what}: device answered exception {code} ({name})"
            )
        return resp

    def _read_words(self, t: _Target) -> list[int]:
        r = t.register
        resp = self._call(
            f"read {t.label}",
            self.client.read_holding_registers,
            r.address,
            count=r.width,
            device_id=t.point.unit_id,
        )
        words = list(resp.registers)
        if len(words) < r.width:
            raise SetpointWriteError(
                f"{self.where}: read {t.label}: short response ({len(words)} of {r.width})"
            )
        return words[: r.width]

    def read(self) -> dict[str, float]:
        return per_control(self.read_points())

    def _write_one(self, t: _Target, value: float) -> float:
        r = t.register
        try:
            words = encode(value, r)
        except ValueError as exc:
            raise SetpointWriteError(f"{self.where}: write {t.label}: {exc}") from None
        self._call(
            f"write {t.label} = {value:g} (raw {words})",
            self.client.write_registers,
            r.address,
            words,
            device_id=t.point.unit_id,
        )
        back = self._read_words(t)
        if back != words:
            raise SetpointWriteError(
                f"{self.where}: {t.label}: wrote {value:g} (raw {words}) but read back "
                f"{t.value(back):g} (raw {back})"
            )
        return t.value(back)

    def read_points(self) -> dict[str, float]:
        with self._lock:
            return {t.key: t.value(self._read_words(t)) for t in self.targets}

    def write(self, values: Mapping[str, float]) -> dict[str, float]:
        self._check(values, self.controls(), "write point for")
        todo = [
            (t, float(values[t.point.control])) for t in self.targets if t.point.control in values
        ]
        out: dict[str, list[float]] = {}
        for t, v in self._write_all(todo):
            out.setdefault(t.point.control, []).append(v)
        log.info("modbus writer %s: wrote %s", self.name, dict(values))
        return {c: sum(v) / len(v) for c, v in out.items()}

    def write_points(self, values: Mapping[str, float]) -> dict[str, float]:
        self._check(values, [t.key for t in self.targets], "point")
        todo = [(t, float(values[t.key])) for t in self.targets if t.key in values]
        back = {t.key: v for t, v in self._write_all(todo)}
        log.info("modbus writer %s: wrote points %s", self.name, dict(values))
        return back

    def _check(self, values: Mapping[str, float], known: list[str], what: str) -> None:
        unknown = set(values) - set(known)
        if unknown:
            raise SetpointWriteError(f"{self.name}: no {what} {sorted(unknown)} (known: {known})")
        for c, v in values.items():
            if not math.isfinite(v):
                raise SetpointWriteError(f"{self.name}: {c} = {v} is not a finite number")

    def _write_all(self, todo: list[tuple[_Target, float]]) -> list[tuple[_Target, float]]:
        """Write and read back each (point, value); on a failure put the points already
        written back to what they held and raise."""
        with self._lock:
            before = {id(t): self._read_words(t) for t, _ in todo}  # to undo a partial write
            done: list[_Target] = []
            out = []
            try:
                for t, v in todo:
                    done.append(t)
                    out.append((t, self._write_one(t, v)))
            except SetpointWriteError:
                self._undo(done, before)
                raise
        return out

    def _undo(self, done: list[_Target], before: dict[int, list[int]]) -> None:
        for t in done:
            try:
                self._call(
                    f"restore {t.label}",
                    self.client.write_registers,
                    t.register.address,
                    before[id(t)],
                    device_id=t.point.unit_id,
                )
            except SetpointWriteError as exc:  # the device is gone: say so, keep the first error
                log.error("modbus writer %s: could not restore %s: %s", self.name, t.label, exc)

    def close(self) -> None:
        self.client.close()


def writer_toml(config: ModbusWriterConfig) -> str:
    """A writer file for `config` (what `load_writer_config` reads back)."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"name = {q(config.name)}",
        f"host = {q(config.host)}",
        f"port = {config.port}",
        f"timeout_s = {config.timeout_s}",
        f"retries = {config.retries}",
    ]
    for p in config.points:
        lines += [
            "",
            "[[points]]",
            f"control = {q(p.control)}",
            f"unit_id = {p.unit_id}",
            f"register_map = {q(str(p.register_map))}",
            f"metric = {q(p.metric)}",
        ]
        if p.device_id is not None:
            lines.append(f"device_id = {q(p.device_id)}")
    return "\n".join(lines) + "\n"
