"""Test helpers that drive real components (broker, DuckDB) until a condition holds."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

from kafka import KafkaConsumer

from domain.contract import DEAD_LETTER_TOPIC
from domain.topics import MAX_MESSAGE_BYTES
from ingest.consumer import Ingestor


def ingest_until(ingestor: Ingestor, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; stats={ingestor.stats}")
        ingestor.poll_once(timeout_ms=300)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback TCP port that accepts connections and never answers (a hung device)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for c in held:
            c.close()
        listener.close()


def dead_letter_consumer(bootstrap: str, unique: str) -> KafkaConsumer:
    """A consumer of the dead-letter topic from its start, in a group of its own."""
    return KafkaConsumer(
        DEAD_LETTER_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=f"dlq-reader-{unique}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )


def wait_for(
    predicate: Callable[[], bool], timeout_s: float = 90.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        time.sleep(0.05)
