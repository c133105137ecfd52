"""pymodbus's own Modbus TCP server on a free loopback port, in a background thread.

Loaded with register values per unit id; the tests read them back through the source.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Registers = dict[int, int]  # address -> 16-bit value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _block(regs: Registers) -> list[SimData]:
    size = max(regs, default=0) + 1
    dense = [regs.get(a, 0) for a in range(size)]
    return [SimData(address=0, values=dense, datatype=DataType.REGISTERS)]


class ModbusTestServer:
    def __init__(self, units: dict[int, tuple[Registers, Registers]]) -> None:
        """units: unit id -> (holding registers, input registers)."""
        no_bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        self.devices = [
            SimDevice(id=uid, simdata=(no_bits, no_bits, _block(hr), _block(ir)))
            for uid, (hr, ir) in units.items()
        ]
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = ModbusTcpServer(self.devices, address=("127.0.0.1", self.port))
            await self._server.serve_forever()

        self._loop.run_until_complete(main())

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
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)
