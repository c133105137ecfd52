"""On-disk spool: where batches wait while Kafka is unreachable. See docs/collector-daemon.md.

A directory of append-only segment files `<id:020d>.seg` plus a `cursor` file naming the
first record not yet acknowledged by Kafka, and a `lock` file (one daemon per spool).
Each record is a 16-byte header and a payload:

    header  = magic b"DS", version u8, flags u8, payload length u32, crc32 u32, samples u32
    payload = topic (u16 len + utf-8), key (i32 len, -1 = none), headers (u16 count, each
              u16 len + name, u32 len + value), value (u32 len + bytes; zstd if flags & 1)

All integers are big-endian; the CRC covers flags, samples and payload. Only one thread
(the daemon's shipper) uses a Spool, so there is no locking inside.

Durability: with `fsync` on, every `append` call (one interval's batches) is fsynced before
it returns, and so is every cursor move; a crash then loses nothing that `append`
returned from. A torn record at the tail of the last segment (crash mid-append) is
truncated away on open. Records acknowledged but not yet past the cursor when the process
dies are re-sent on restart; ingest recognises them by batch id.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from collectors.spool_format import (
    HEADER,
    MAGIC,
    VERSION,
    Record,
    crc_ok,
    decode_payload,
    encode_record,
)

__all__ = ["Dropped", "Position", "Record", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"


class SpoolError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Position:
    segment: int
    offset: int


@dataclass
class Dropped:
    """What the spool discarded to stay within its bound (or because it was unreadable)."""

    records: int = 0
    samples: int = 0
    bytes: int = 0
    reasons: set[str] = field(default_factory=set)

    def add(self, other: Dropped) -> None:
        self.records += other.records
        self.samples += other.samples
        self.bytes += other.bytes
        self.reasons |= other.reasons

    def __bool__(self) -> bool:
        return self.records > 0 or self.bytes > 0


@dataclass
class _Segment:
    id: int
    path: Path
    size: int = 0
    records: int = 0  # records in the file
    samples: int = 0


class Spool:
    """Bounded FIFO of Records on disk. Oldest data is dropped (and reported) when full."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        segment_bytes: int = 8 << 20,
        fsync: bool = True,
        compress: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        # several segments fit in the bound, so dropping the oldest loses a small part of it
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 8))
        self.fsync = fsync
        self._zstd = zstandard.ZstdCompressor(level=3) if compress else None
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self.dir} is in use by another process") from exc
        self._segments: list[_Segment] = []
        self._cursor = Position(1, 0)
        self._head_consumed = (0, 0)  # (records, samples) of the head segment before cursor
        self._writer: io.BufferedWriter | None = None
        self._reader: tuple[int, io.BufferedReader] | None = None  # (segment id, file)
        self.open_dropped = Dropped()  # torn or corrupt data found on open
        self._load()

    # -- state -----------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes on disk in segment files (what the bound applies to)."""
        return sum(s.size for s in self._segments)

    @property
    def records(self) -> int:
        return sum(s.records for s in self._segments) - self._head_consumed[0]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self._segments) - self._head_consumed[1]

    def __len__(self) -> int:
        return self.records

    @property
    def empty(self) -> bool:
        return self.records == 0

    # -- open ------------------------------------------------------------------------------
    def _load(self) -> None:
        ids = sorted(int(p.stem) for p in self.dir.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())
        cursor = self._read_cursor()
        if cursor is not None:
            self._cursor = cursor  # also keeps segment ids increasing across restarts
        for sid in ids:
            seg = _Segment(sid, self._path(sid))
            if cursor is not None and sid < cursor.segment:  # fully acknowledged earlier
                seg.path.unlink(missing_ok=True)
                continue
            self._scan(seg, last=sid == ids[-1])
            self._segments.append(seg)
        if self._segments:
            head = self._segments[0]
            offset = cursor.offset if cursor is not None and cursor.segment == head.id else 0
            self._cursor = Position(head.id, min(offset, head.size))
            self._head_consumed = self._count_until(head, self._cursor.offset)
        if self.records:
            log.info(
                "spool %s: resuming with %d batches (%d samples, %d bytes)",
                self.dir,
                self.records,
                self.samples,
                self.bytes,
            )

    def _scan(self, seg: _Segment, last: bool) -> None:
        """Count records; cut a torn tail (crash mid-append) off the last segment."""
        size = seg.path.stat().st_size
        good = 0
        with open(seg.path, "rb") as f:
            while True:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    break
                magic, version, _flags, length, _crc, n = HEADER.unpack(head)
                if magic != MAGIC or version != VERSION or good + HEADER.size + length > size:
                    break
                f.seek(length, os.SEEK_CUR)
                good += HEADER.size + length
                seg.records += 1
                seg.samples += n
        if good < size:
            lost = size - good
            self.open_dropped.add(Dropped(bytes=lost, reasons={"torn_tail" if last else "corrupt"}))
            log.error(
                "spool segment %s: %d unreadable bytes at offset %d discarded", seg.path, lost, good
            )
            with open(seg.path, "r+b") as f:
                f.truncate(good)
        seg.size = good

    def _count_until(self, seg: _Segment, offset: int) -> tuple[int, int]:
        records = samples = pos = 0
        with open(seg.path, "rb") as f:
            while pos < offset:
                magic, _v, _fl, length, _crc, n = HEADER.unpack(f.read(HEADER.size))
                f.seek(length, os.SEEK_CUR)
                pos += HEADER.size + length
                records += 1
                samples += n
        return records, samples

    def _path(self, sid: int) -> Path:
        return self.dir / f"{sid:020d}{SEGMENT_SUFFIX}"

    def _read_cursor(self) -> Position | None:
        try:
            seg, off = (self.dir / "cursor").read_text().split()
            return Position(int(seg), int(off))
        except FileNotFoundError:
            return None
        except ValueError:
            log.error(
                "spool %s: unreadable cursor file; replaying from the oldest segment", self.dir
            )
            return None

    # -- append ----------------------------------------------------------------------------
    def append(self, records: list[Record]) -> Dropped:
        """Add records behind everything spooled; durable on return if fsync is on.
        Returns what had to be dropped to stay within max_bytes (oldest first)."""
        dropped = Dropped()
        for r in records:
            data = encode_record(r, self._zstd)
            if self.bytes + len(data) > self.max_bytes:
                self._roll()
                while self._segments and self.bytes + len(data) > self.max_bytes:
                    dropped.add(self._drop_head())
                if len(data) > self.max_bytes:  # larger than the whole spool: cannot keep it
                    dropped.add(Dropped(1, r.n_samples, len(data), {"record_too_large"}))
                    continue
            w = self._active_writer()
            w.write(data)
            seg = self._segments[-1]
            seg.size += len(data)
            seg.records += 1
            seg.samples += r.n_samples
            if seg.size >= self.segment_bytes:
                self._roll()
        if self._writer is not None:
            self._writer.flush()
            if self.fsync:
                os.fsync(self._writer.fileno())
        return dropped

    def _active_writer(self) -> io.BufferedWriter:
        if self._writer is None:
            sid = self._segments[-1].id + 1 if self._segments else max(self._cursor.segment, 1)
            seg = _Segment(sid, self._path(sid))
            self._writer = open(seg.path, "ab")  # noqa: SIM115 - closed in _roll/close
            if not self._segments:
                self._cursor = Position(sid, 0)
                self._head_consumed = (0, 0)
            self._segments.append(seg)
            self._sync_dir()
        return self._writer

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self.fsync:
                os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None

    def _drop_head(self) -> Dropped:
        head = self._segments.pop(0)
        n_rec = head.records - self._head_consumed[0]
        n_samp = head.samples - self._head_consumed[1]
        self._close_reader()
        head.path.unlink(missing_ok=True)
        nxt = self._segments[0].id if self._segments else head.id + 1
        self._set_cursor(Position(nxt, 0))
        self._head_consumed = (0, 0)
        log.warning(
            "spool full (%d bytes max): dropped %d oldest batches (%d samples)",
            self.max_bytes,
            n_rec,
            n_samp,
        )
        return Dropped(n_rec, n_samp, head.size, {"spool_full"})

    # -- replay ----------------------------------------------------------------------------
    def peek(
        self, max_records: int, distinct_keys: bool = True
    ) -> tuple[list[Record], Position, Dropped]:
        """Records from the cursor on, oldest first, within one segment, and the position
        after the last. With `distinct_keys` it stops before a (topic, key) repeats, so one
        send never holds two batches of one device and a partial failure cannot reorder
        a device. Unreadable records met on the way are stepped over (the cursor moves past
        them) and returned as dropped."""
        bad = Dropped()
        while self._segments:
            head = self._segments[0]
            offset = self._cursor.offset
            if offset >= head.size:
                if self._writer is not None and head is self._segments[-1]:
                    break  # caught up with the writer
                self.commit(Position(head.id, head.size), 0, 0)
                continue
            f = self._open_reader(head)
            f.seek(offset)
            out: list[Record] = []
            seen: set[tuple[str, bytes | None]] = set()
            while offset < head.size and len(out) < max_records:
                magic, version, flags, length, crc, n = HEADER.unpack(f.read(HEADER.size))
                payload = f.read(length)
                nxt = offset + HEADER.size + length
                if magic != MAGIC or version != VERSION or len(payload) != length:
                    if out:
                        break
                    # no way to find the next record boundary: the rest of the segment is lost
                    lost = Dropped(
                        head.records - self._head_consumed[0],
                        head.samples - self._head_consumed[1],
                        head.size - offset,
                        {"corrupt"},
                    )
                    log.error(
                        "spool %s@%d: unreadable record header; %d bytes discarded",
                        head.path,
                        offset,
                        lost.bytes,
                    )
                    bad.add(lost)
                    self.commit(Position(head.id, head.size), lost.records, lost.samples)
                    break
                if not crc_ok(flags, n, payload, crc):
                    if out:
                        break
                    log.error("spool %s@%d: checksum mismatch, record discarded", head.path, offset)
                    bad.add(Dropped(1, n, nxt - offset, {"corrupt"}))
                    self.commit(Position(head.id, nxt), 1, n)
                    offset = nxt
                    continue
                rec = decode_payload(flags, n, payload)
                if distinct_keys and (rec.topic, rec.key) in seen:
                    break
                seen.add((rec.topic, rec.key))
                out.append(rec)
                offset = nxt
            if out:
                return out, Position(head.id, offset), bad
        return [], self._cursor, bad

    def commit(self, pos: Position, records: int, samples: int) -> None:
        """The `records` (holding `samples`) from the cursor up to `pos`, in the head
        segment, are acknowledged: move the cursor; delete the segment once done."""
        head = self._segments[0]
        if pos.segment != head.id:
            raise SpoolError(f"commit to segment {pos.segment}, head is {head.id}")
        consumed = (self._head_consumed[0] + records, self._head_consumed[1] + samples)
        if pos.offset >= head.size:  # the whole segment is done
            if head is self._segments[-1]:
                self._roll()  # everything is sent: the active segment goes too
            self._segments.pop(0)
            self._close_reader()
            head.path.unlink(missing_ok=True)
            consumed = (0, 0)
            pos = Position(self._segments[0].id if self._segments else head.id + 1, 0)
        self._head_consumed = consumed
        self._set_cursor(pos)

    def _set_cursor(self, pos: Position) -> None:
        self._cursor = pos
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(f"{pos.segment} {pos.offset}\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "cursor")
        self._sync_dir()

    def _open_reader(self, seg: _Segment) -> io.BufferedReader:
        if self._reader is None or self._reader[0] != seg.id:
            self._close_reader()
            self._reader = (seg.id, open(seg.path, "rb"))  # noqa: SIM115 - see _close_reader
        if self._writer is not None and seg is self._segments[-1]:
            self._writer.flush()
        return self._reader[1]

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None

    def _sync_dir(self) -> None:
        if self.fsync:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        self._roll()
        self._close_reader()
        if self.empty and not self._segments:
            # nothing waiting: leave no files behind (segment ids restart, which is fine)
            for name in ("cursor", "lock"):
                (self.dir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: someone else's files stay
                self.dir.rmdir()
        os.close(self._lock_fd)
