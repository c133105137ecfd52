"""pymodbus's own Modbus TCP server on a free loopback port, in a background thread.

Loaded with coils, discrete inputs and register values per unit id; the tests read them
back through the source. `faults` make it misbehave the way field devices do, through
pymodbus's own hooks (a device `action`, the `trace_pdu` callback): answer an exception
for an address range, answer too few registers, never answer, or vanish mid-read.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Registers = dict[int, int]  # address -> 16-bit value
Bits = dict[int, bool]  # address -> coil / discrete input
FUNCTION_CODES = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}


@dataclass(frozen=True)
class Fault:
    """Misbehave on requests of `function` touching `first`...`last` (inclusive)."""

    function: Literal["coil", "discrete_input", "holding", "input"]
    first: int
    last: int
    # an exception code, "short" (one register fewer than asked), "silent" (no answer),
    # "slow" (the right answer, `delay_s` late), "vanish" (the server shuts down,
    # dropping every connection)
    answer: ExcCodes | Literal["short", "silent", "slow", "vanish"]
    delay_s: float = 0.6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _block(regs: Registers) -> list[SimData]:
    size = max(regs, default=0) + 1
    dense = [regs.get(a, 0) for a in range(size)]
    return [SimData(address=0, values=dense, datatype=DataType.REGISTERS)]


def _bits(bits: Bits) -> list[SimData]:
    size = max(bits, default=15) + 1
    return [
        SimData(address=0, values=[bits.get(a, False) for a in range(size)], datatype=DataType.BITS)
    ]


class ModbusTestServer:
    def __init__(
        self,
        units: dict[int, tuple[Registers, Registers] | tuple[Registers, Registers, Bits, Bits]],
        faults: list[Fault] | None = None,
    ) -> None:
        """units: unit id -> (holding registers, input registers[, coils, discrete inputs])."""
        self.faults = faults or []
        self.devices = []
        for uid, tables in units.items():
            hr, ir = tables[0], tables[1]
            coils, discrete = (tables[2], tables[3]) if len(tables) == 4 else ({}, {})
            self.devices.append(
                SimDevice(
                    id=uid,
                    simdata=(_bits(coils), _bits(discrete), _block(hr), _block(ir)),
                    action=self._action,
                )
            )
        self.port = free_port()
        self.requests: list[tuple[int, int, int]] = []  # (function code, address, count)
        self._last_request: tuple[int, int, int] | None = None
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _fault(self, fc: int, address: int, count: int) -> Fault | None:
        for f in self.faults:
            if FUNCTION_CODES[f.function] == fc and address <= f.last and f.first < address + count:
                return f
        return None

    async def _action(
        self,
        fc: int,
        _start: int,
        address: int,
        count: int,
        _registers: list[int],
        _values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        f = self._fault(fc, address, count)
        if f is None or f.answer == "short":
            return None
        if isinstance(f.answer, ExcCodes):
            return f.answer
        if f.answer == "slow":
            await asyncio.sleep(f.delay_s)
            return None
        if f.answer == "vanish":
            self.stop_soon()
        await asyncio.sleep(3600)  # silent: the client's timeout has to catch this
        return None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """Record each request; cut a register response short where a fault says so."""
        if not sending:
            req = (pdu.function_code, pdu.address, pdu.count)
            self.requests.append(req)
            self._last_request = req
        elif self._last_request is not None and pdu.registers:
            f = self._fault(*self._last_request)
            if f is not None and f.answer == "short":
                pdu.registers = pdu.registers[:-1]
        return pdu

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = ModbusTcpServer(
                self.devices, address=("127.0.0.1", self.port), trace_pdu=self._trace_pdu
            )
            await self._server.serve_forever()

        self._loop.run_until_complete(main())
        # requests still held by a "silent" fault: end them so the loop closes cleanly
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def stop_soon(self) -> None:
        """From the server's own loop: shut down (the device vanishes)."""
        assert self._server is not None
        self._stopping = True
        self._loop.create_task(self._server.shutdown())

    def stop(self) -> None:
        if self._server is not None and not self._stopping:
            self._stopping = True
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)

    def __enter__(self) -> ModbusTestServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while True:  # ready when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop()
