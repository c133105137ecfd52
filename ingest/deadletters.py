"""Dead letters that cannot stop ingest: produce, truncate, quarantine, and remember.

The policy (docs/ingest.md, "Poison messages"), per failed message:
1. it is produced to the dead-letter topic with its original bytes and headers, plus
   where it came from, why, its size and sha256;
2. an original larger than `max_value_bytes` (what the DLQ producer and broker can take)
   is sent as a bounded prefix instead, marked `dctwin-dlq-truncated`;
3. a send that fails (the broker refuses the size, times out, is gone) is tried once
   more as the prefix;
4. if that fails too, the whole message is appended to the local quarantine file (JSON
   lines, fsynced) and ingest moves on.
Whatever happened is returned as one `DeadLetterRow` per message, which the store writes
to `dead_letters` in the same transaction as the offsets that move past the message.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from domain.contract import DEAD_LETTER_TOPIC
from domain.topics import MAX_MESSAGE_BYTES
from ingest.staging import DeadLetter

log = logging.getLogger(__name__)

# room for the headers and the record framing next to the value, under the request limit
HEADROOM_BYTES = 64 * 1024
DEFAULT_MAX_VALUE_BYTES = MAX_MESSAGE_BYTES - HEADROOM_BYTES
DEFAULT_TRUNCATED_BYTES = 64 * 1024  # prefix kept of a too-large original
EXCERPT_BYTES = 256  # what the dead_letters table keeps of the value

# outcomes, the `outcome` column of dead_letters
SENT = "dlq"
TRUNCATED = "dlq_truncated"
QUARANTINED = "quarantined"

# reason of a message whose handling raised (staging, decoding, ...): docs/ingest.md
INGEST_ERROR = "ingest_error"

SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    time TIMESTAMP NOT NULL,
    reason VARCHAR NOT NULL,
    detail VARCHAR,
    topic VARCHAR NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL,
    excerpt VARCHAR,
    outcome VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_data_loss (
    time TIMESTAMP NOT NULL,
    topic VARCHAR NOT NULL,
    partition INTEGER NOT NULL,
    from_offset BIGINT,
    to_offset BIGINT,
    lost_records BIGINT,
    reason VARCHAR NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead-lettered message as the operator sees it (table dead_letters)."""

    time: datetime
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    size_bytes: int
    sha256: str
    excerpt: str
    outcome: str  # SENT, TRUNCATED or QUARANTINED


@dataclass(frozen=True, slots=True)
class DataLossEvent:
    """Offsets ingest will never store (table ingest_data_loss)."""

    time: datetime
    topic: str
    partition: int
    from_offset: int | None  # first offset not stored
    to_offset: int | None  # where ingest resumed
    lost_records: int | None  # None: unknown (the records went with a deleted topic)
    reason: str  # "retention" or "topic_recreated"


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class DeadLetterSink:
    """Sends dead letters; never raises for one message (see the module docstring)."""

    def __init__(
        self,
        producer: KafkaProducer,
        quarantine_path: Path,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        truncated_bytes: int = DEFAULT_TRUNCATED_BYTES,
        flush_timeout_s: float = 30.0,
        producer_factory: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        self.producer = producer
        self.producer_factory = producer_factory
        self.quarantine_path = quarantine_path
        self.max_value_bytes = max_value_bytes
        self.truncated_bytes = truncated_bytes
        self.flush_timeout_s = flush_timeout_s
        self._file_lock = threading.Lock()
        self._broker_gone = False

    def send(self, dead: Sequence[DeadLetter]) -> list[DeadLetterRow]:
        """Dead-letter every message; returns one row per message, in order."""
        now = utc_now()
        facts = [_Facts.of(d) for d in dead]
        # a send that timed out waiting for the broker (max_block_ms) makes the rest of
        # this call skip the topic: 2,000 bad messages must not wait 10 s each
        self._broker_gone = False
        first = [
            self._send(d, f, truncate=f.size > self.max_value_bytes)
            for d, f in zip(dead, facts, strict=True)
        ]
        self._flush()
        # a producer the broker no longer knows (restarted or re-created broker: its
        # idempotent session is gone, every send fails with OutOfOrderSequenceNumber or
        # an InitProducerId error) stays failed: a new producer, then the same sends again
        broken = [
            i
            for i, (fut, _) in enumerate(first)
            if not _delivered(fut) and not _too_large(fut) and not self._broker_gone
        ]
        if broken and self._renew_producer(_error_of(first[broken[0]][0])):
            for i in broken:
                first[i] = self._send(dead[i], facts[i], truncate=first[i][1])
            self._flush()
        rows: list[DeadLetterRow] = []
        for d, f, (fut, truncated) in zip(dead, facts, first, strict=True):
            outcome: str | None = TRUNCATED if truncated else SENT
            if not _delivered(fut):
                outcome = None
                if not truncated:  # perhaps only the size: the prefix may still go
                    retry, _ = self._send(d, f, truncate=True)
                    self._flush()
                    if _delivered(retry):
                        outcome = TRUNCATED
            if outcome is None:
                error = _error_of(fut)
                self._quarantine(d, f, now, error)
                outcome = QUARANTINED
            m = d.record
            log.warning(
                "dead-lettered %s[%d]@%d (%s, %d bytes): %s: %s",
                m.topic,
                m.partition,
                m.offset,
                outcome,
                f.size,
                d.reason,
                d.detail[:200],
            )
            rows.append(
                DeadLetterRow(
                    now,
                    d.reason,
                    d.detail[:2000],
                    m.topic,
                    m.partition,
                    m.offset,
                    f.size,
                    f.sha256,
                    f.excerpt,
                    outcome,
                )
            )
        return rows

    def _send(self, d: DeadLetter, f: _Facts, truncate: bool) -> tuple[Any, bool]:
        """(future or the exception `send` raised, whether the value was truncated)."""
        m = d.record
        value = (m.value or b"")[: self.truncated_bytes] if truncate else m.value
        headers = list(m.headers or []) + [
            ("dctwin-dlq-reason", d.reason.encode()),
            ("dctwin-dlq-detail", d.detail[:2000].encode()),
            ("dctwin-source-topic", m.topic.encode()),
            ("dctwin-source-partition", str(m.partition).encode()),
            ("dctwin-source-offset", str(m.offset).encode()),
            ("dctwin-original-size", str(f.size).encode()),
            ("dctwin-original-sha256", f.sha256.encode()),
        ]
        if truncate:
            headers.append(("dctwin-dlq-truncated", str(len(value or b"")).encode()))
        if d.samples_rejected:
            headers += [
                ("dctwin-dlq-samples-rejected", str(d.samples_rejected).encode()),
                ("dctwin-dlq-samples-kept", str(d.samples_kept).encode()),
            ]
        if self._broker_gone:
            return KafkaTimeoutError("skipped: the broker did not answer an earlier send"), truncate
        try:
            fut = self.producer.send(DEAD_LETTER_TOPIC, key=m.key, value=value, headers=headers)
        except KafkaTimeoutError as exc:  # no metadata within max_block_ms: broker gone
            self._broker_gone = True
            return exc, truncate
        except Exception as exc:  # too large for the producer, closed, ...
            return exc, truncate
        return fut, truncate

    def _renew_producer(self, error: str) -> bool:
        if self.producer_factory is None:
            return False
        with contextlib.suppress(Exception):
            self.producer.close(timeout=0)
        try:
            self.producer = self.producer_factory()
        except Exception as exc:  # broker unreachable: the quarantine path takes over
            log.warning("dead-letter producer could not be renewed: %r", exc)
            return False
        log.warning("dead-letter producer renewed after a failed send: %s", error)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self.producer.close(timeout=timeout_s)

    def _flush(self) -> None:
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaTimeoutError as exc:  # undelivered sends count as failed (below)
            log.warning("dead-letter flush timed out: %s", exc)

    def _quarantine(self, d: DeadLetter, f: _Facts, now: datetime, error: str) -> None:
        """Append the whole message as one JSON line and fsync: the offset moves past it
        right after, so this file is then its only copy."""
        m = d.record
        line = orjson.dumps(
            {
                "time": now.isoformat() + "Z",
                "reason": d.reason,
                "detail": d.detail[:2000],
                "dlq_error": error,
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "size_bytes": f.size,
                "sha256": f.sha256,
                "key_b64": base64.b64encode(m.key).decode() if m.key is not None else None,
                "headers": [[k, base64.b64encode(v or b"").decode()] for k, v in (m.headers or [])],
                "value_b64": base64.b64encode(m.value or b"").decode(),
            }
        )
        with self._file_lock:
            self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.quarantine_path, "ab") as fh:
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        log.error(
            "quarantined %s[%d]@%d (%d bytes) in %s: the dead-letter topic refused it (%s)",
            m.topic,
            m.partition,
            m.offset,
            f.size,
            self.quarantine_path,
            error,
        )


@dataclass(frozen=True, slots=True)
class _Facts:
    size: int
    sha256: str
    excerpt: str

    @staticmethod
    def of(d: DeadLetter) -> _Facts:
        value = d.record.value or b""
        return _Facts(
            len(value),
            hashlib.sha256(value).hexdigest(),
            value[:EXCERPT_BYTES].decode("utf-8", "backslashreplace"),
        )


def _delivered(fut: Any) -> bool:
    return not isinstance(fut, BaseException) and fut.is_done and fut.succeeded()


def _too_large(fut: Any) -> bool:
    exc = fut if isinstance(fut, BaseException) else getattr(fut, "exception", None)
    return isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError)


def _error_of(fut: Any) -> str:
    if isinstance(fut, BaseException):
        return repr(fut)
    if not fut.is_done:
        return "not acknowledged within the flush timeout"
    exc = fut.exception
    return repr(exc) if isinstance(exc, KafkaError | Exception) else str(exc)


def dead_letter_summary(
    cur: Any, since: datetime | None = None, examples: int = 20
) -> dict[str, Any]:
    """Counts per reason and outcome, and the newest examples, from `dead_letters`
    (`cur`: a DuckDB cursor). Within the table's retention (Store.dead_letter_retention_s)."""
    exists = cur.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'dead_letters'"
    ).fetchone()
    if not exists or not exists[0]:  # a read-only database from before the table existed
        return {"total": 0, "by_reason": [], "recent": []}
    where, params = ("WHERE time >= ?", [since]) if since is not None else ("", [])
    counts = cur.execute(
        f"""SELECT reason, count(*), count(*) FILTER (outcome = '{QUARANTINED}'),
                   count(*) FILTER (outcome = '{TRUNCATED}'), max(time)
            FROM dead_letters {where} GROUP BY reason ORDER BY count(*) DESC, reason""",
        params,
    ).fetchall()
    cur.execute(
        f"""SELECT time, reason, detail, topic, partition, "offset", size_bytes, sha256,
                   excerpt, outcome
            FROM dead_letters {where} ORDER BY time DESC, "offset" DESC LIMIT ?""",
        [*params, examples],
    )
    cols = [c[0] for c in cur.description]
    return {
        "total": sum(int(r[1]) for r in counts),
        "by_reason": [
            {"reason": r, "count": n, "quarantined": q, "truncated": t, "last": last}
            for r, n, q, t, last in counts
        ],
        "recent": [dict(zip(cols, row, strict=True)) for row in cur.fetchall()],
    }
