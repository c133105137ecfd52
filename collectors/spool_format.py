"""Spool record format: one Kafka message as the spool stores it. The layout is described
in collectors/spool.py and docs/collector-daemon.md."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import zstandard

MAGIC = b"DS"
VERSION = 1
FLAG_ZSTD = 1
HEADER = struct.Struct(">2sBBIII")


@dataclass(slots=True)
class Record:
    """One Kafka message as it will be produced: the spool keeps exactly this."""

    topic: str
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes
    n_samples: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode()
        return None


def _encode_payload(r: Record, compress: zstandard.ZstdCompressor | None) -> tuple[int, bytes]:
    value, flags = r.value, 0
    if compress is not None:
        value, flags = compress.compress(r.value), FLAG_ZSTD
    topic = r.topic.encode()
    parts = [struct.pack(">H", len(topic)), topic]
    if r.key is None:
        parts.append(struct.pack(">i", -1))
    else:
        parts += [struct.pack(">i", len(r.key)), r.key]
    parts.append(struct.pack(">H", len(r.headers)))
    for name, v in r.headers:
        nb = name.encode()
        parts += [struct.pack(">H", len(nb)), nb, struct.pack(">I", len(v)), v]
    parts += [struct.pack(">I", len(value)), value]
    return flags, b"".join(parts)


def encode_record(r: Record, compress: zstandard.ZstdCompressor | None = None) -> bytes:
    flags, payload = _encode_payload(r, compress)
    tail = struct.pack(">BI", flags, r.n_samples) + payload
    return HEADER.pack(MAGIC, VERSION, flags, len(payload), zlib.crc32(tail), r.n_samples) + payload


def decode_payload(flags: int, n_samples: int, p: bytes) -> Record:
    i = 0

    def take(fmt: str) -> int:
        nonlocal i
        (v,) = struct.unpack_from(fmt, p, i)
        i += struct.calcsize(fmt)
        return v

    def raw(n: int) -> bytes:
        nonlocal i
        out = p[i : i + n]
        i += n
        return out

    topic = raw(take(">H")).decode()
    key_len = take(">i")
    key = None if key_len < 0 else raw(key_len)
    headers = []
    for _ in range(take(">H")):
        name = raw(take(">H")).decode()
        headers.append((name, raw(take(">I"))))
    value = raw(take(">I"))
    if flags & FLAG_ZSTD:
        value = zstandard.ZstdDecompressor().decompress(value)
    return Record(topic, key, headers, value, n_samples)


def crc_ok(flags: int, n_samples: int, payload: bytes, crc: int) -> bool:
    return zlib.crc32(struct.pack(">BI", flags, n_samples) + payload) == crc
