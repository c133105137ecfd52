"""Builders for raw wire-contract messages, as a collector would put them on Kafka."""

from __future__ import annotations

import json
import time
import uuid
from collections import namedtuple
from typing import Any

import orjson

# The attributes ingest reads from kafka-python's ConsumerRecord.
Raw = namedtuple("Raw", "topic partition offset key value headers")

GPU_METRICS = ("gpu_temp_c", "power_w", "energy_mj")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def gpu_ids(rack: str, n: int = 4, site: str = "sv1") -> list[str]:
    return [f"{site}/h1/row1/{rack}/n01/gpu{k}" for k in range(n)]


def batch_doc(
    rack: str,
    t_ms: int,
    devices: list[str] | None = None,
    metrics: tuple[str, ...] = GPU_METRICS,
    collector: str = "test",
    value: float = 1.0,
    **overrides: Any,
) -> dict:
    devices = devices if devices is not None else gpu_ids(rack)
    ids = [d for d in devices for _ in metrics]
    doc = {
        "version": 1,
        "type": "telemetry",
        "batch_id": uuid.uuid4().hex,
        "collector": collector,
        "kind": "gpu",
        "site": "sv1",
        "rack": rack,
        "seq": 1,
        "interval_s": 1.0,
        "sent_time_ms": t_ms,
        "samples": {
            "device_id": ids,
            "metric": [m for _ in devices for m in metrics],
            "value": [value + k for k in range(len(ids))],
            "read_time_ms": [t_ms] * len(ids),
        },
    }
    doc.update(overrides)
    return doc


def encode(doc: dict) -> bytes:
    return orjson.dumps(doc)


class Records:
    """Hands out ConsumerRecord-like tuples with increasing offsets."""

    def __init__(self, topic: str = "telemetry.gpu", partition: int = 0) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = 0

    def __call__(self, value: bytes | dict, key: bytes | None = None, headers=None) -> Raw:
        """`key` defaults to the message's rack, as collectors key it."""
        if key is None:
            key = _rack_of(value)
        if isinstance(value, dict):
            value = encode(value)
        rec = Raw(self.topic, self.partition, self.offset, key, value, headers or [])
        self.offset += 1
        return rec

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(self.topic, self.partition): self.offset}


def _rack_of(value: bytes | dict) -> bytes:
    if isinstance(value, bytes):
        try:  # the standard library also reads NaN literals
            value = json.loads(value)
        except (ValueError, RecursionError):
            return b"rk"
    rack = value.get("rack") if isinstance(value, dict) else None
    return rack.encode() if isinstance(rack, str) else b"rk"
