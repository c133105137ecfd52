"""Open-loop HTTP load at a fixed rate with latency percentiles (wrk2-style).

wrk (Debian) is closed-loop and cannot hold a fixed rate, and wrk2 is not packaged, so
this generator does what wrk2 does: request i is *scheduled* at t0 + i / rate whatever
happened before, and its latency is measured from that scheduled time, so a stalled
server shows up in the tail instead of silently lowering the offered load (coordinated
omission). Keep-alive HTTP/1.1 over a pool of asyncio connections; a minimal parser
(status line, Content-Length) keeps the client's own cost far below the server's.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    rate_target: float
    rate_achieved: float
    requests: int
    errors: int  # non-2xx or connection failures
    latencies_ms: np.ndarray
    error_kinds: Counter[str] = field(default_factory=Counter)  # "HTTP 503", "ConnectionResetError"

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else 0.0


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status


async def _run(
    host: str,
    port: int,
    paths: Callable[[int], str],
    headers: dict[str, str],
    rate: float,
    duration_s: float,
    max_conns: int,
) -> LoadResult:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    idle: list[_Conn] = []
    n_conns = 0
    total = int(rate * duration_s)
    lat = np.zeros(total)
    errors = 0
    error_kinds: Counter[str] = Counter()
    done = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal n_conns, errors, done
        conn = idle.pop() if idle else None
        reused = conn is not None
        if conn is None:
            if n_conns >= max_conns:  # all busy: wait for one (counts against latency)
                while not idle:
                    await asyncio.sleep(0.0005)
                conn = idle.pop()
                reused = True
            else:
                n_conns += 1
                conn = _Conn(*await asyncio.open_connection(host, port))
        raw = (f"GET {paths(i)} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").encode()
        try:
            try:
                status = await conn.request(raw)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                # the server closed an idle keep-alive connection (uvicorn: after 5 s);
                # like any HTTP client, retry a GET once on a fresh one (latency still
                # counts from the scheduled time)
                if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
                conn.writer.close()
                conn = _Conn(*await asyncio.open_connection(host, port))
                status = await conn.request(raw)
            if not 200 <= status < 300:
                errors += 1
                error_kinds[f"HTTP {status}"] += 1
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            errors += 1
            error_kinds[type(e).__name__] += 1
            n_conns -= 1
        lat[i] = (time.perf_counter() - scheduled) * 1000
        done += 1

    # Only the requests in flight are kept (a list of every task made the client's own
    # garbage collection walk tens of thousands of finished tasks: 150-ms pauses that
    # showed up as server latency); the collector is off while the load runs, for the
    # same reason: this client measures the server, not itself.
    in_flight: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter() + 0.05
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(total):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        while in_flight:
            await asyncio.gather(*in_flight)
    finally:
        if gc_was_enabled:
            gc.enable()
    elapsed = time.perf_counter() - t0
    for c in idle:
        c.writer.close()
    return LoadResult(rate, total / elapsed, total, errors, lat, error_kinds)


def run_load(
    host: str,
    port: int,
    paths: Callable[[int], str],
    headers: dict[str, str],
    rate: float = 500.0,
    duration_s: float = 10.0,
    max_conns: int = 128,
) -> LoadResult:
    return asyncio.run(_run(host, port, paths, headers, rate, duration_s, max_conns))
