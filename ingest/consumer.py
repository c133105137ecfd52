"""Kafka -> DuckDB ingest loop with dead-lettering, backpressure and scale-out.

Order of effects per poll, which is what makes storage exactly-once:
1. the poll is decoded and validated in bulk (ingest/staging.py);
2. invalid messages are produced to the dead-letter topic and flushed;
3. valid samples and the next offsets are committed to DuckDB in one transaction;
4. offsets are committed to Kafka (for lag monitoring; DuckDB is the source of truth).
A crash between any two steps replays messages that step 3 then recognises or re-stores.

No message can stop ingest: a message whose handling raises is dead-lettered
(`ingest_error`), and a dead letter the topic refuses is truncated or quarantined
(ingest/deadletters.py). Offsets the broker no longer has (a re-created topic, records
deleted by retention before they were read) are detected on assignment and while
polling, and recorded as data-loss events (`_check_resume`, docs/ingest.md).

`poll_once()` does all of that inline. `run()` pipelines it: this thread polls Kafka while
a writer thread runs DuckDB (which releases the GIL), with at most `max_inflight` polls
handed over and not yet committed. When the writer falls behind, the assigned partitions
are paused (KafkaConsumer.pause) until it catches up, so memory stays bounded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from domain.contract import ALL_TELEMETRY_TOPICS, EVENTS_TOPIC
from domain.topics import MAX_MESSAGE_BYTES, make_producer
from ingest.deadletters import (
    INGEST_ERROR,
    QUARANTINED,
    TRUNCATED,
    DataLossEvent,
    DeadLetterRow,
    DeadLetterSink,
    utc_now,
)
from ingest.shards import ShardedStore, SingleStore
from ingest.staging import DeadLetter, Staged
from ingest.stats import IngestStats, PartitionLag
from ingest.store import IngestResult, Store, WriteResult
from ingest.validate import IngestPolicy

log = logging.getLogger(__name__)

INGEST_TOPICS = (*ALL_TELEMETRY_TOPICS, EVENTS_TOPIC)
__all__ = ["INGEST_TOPICS", "IngestConfig", "IngestStats", "Ingestor"]


@dataclass(frozen=True)
class IngestConfig:
    """Consumer tuning; docs/ingest.md explains each choice."""

    max_poll_records: int = 2000  # messages per poll (~1.3M samples at 640 per message)
    fetch_max_bytes: int = 64 * 1024 * 1024
    max_partition_fetch_bytes: int = MAX_MESSAGE_BYTES
    fetch_max_wait_ms: int = 100
    max_inflight: int = 2  # polls handed to the writer and not yet committed
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 60_000
    maintenance_every_s: float | None = 30.0  # rollups + retention; None: never
    # issue 26 (story): one maintenance pass rolls up at most this much data time, and
    # passes follow each write until the backlog is gone: rolling 6 h of demo history in
    # one pass held the writer ~35 s, and every device looked silent to the alert rules
    rollup_span_per_pass_s: float | None = 600.0
    dlq_compression: str = "zstd"
    # where dead letters the topic refused are kept (JSON lines); None: beside the store
    quarantine_path: Path | None = None


QUARANTINE_FILE = "quarantine.jsonl"
OFFSETS_TIMEOUT_MS = 5_000  # one ListOffsets try on assignment; retried on the next poll

# Failures of the machine, not of a message: they stop ingest rather than dead-letter
# every message that happens to be in flight.
INFRASTRUCTURE_ERRORS = (OSError, MemoryError, duckdb.IOException, duckdb.OutOfMemoryException)


def resume_offset(
    topic: str,
    partition: int,
    saved: int,
    log_start: int | None,
    log_end: int | None,
    saved_topic_id: str | None,
    topic_id: str | None,
) -> tuple[int, DataLossEvent | None]:
    """Where to resume a partition whose next offset DuckDB saved, and the data-loss event
    that implies, if any (policy: docs/ingest.md, "Offsets the broker no longer has")."""
    recreated = (
        saved_topic_id is not None and topic_id is not None and saved_topic_id != topic_id
    ) or (log_end is not None and saved > log_end)
    if recreated:
        start = log_start or 0
        return start, DataLossEvent(
            utc_now(), topic, partition, saved, start, None, "topic_recreated"
        )
    if log_start is not None and saved < log_start:
        return log_start, DataLossEvent(
            utc_now(), topic, partition, saved, log_start, log_start - saved, "retention"
        )
    return saved, None


def default_quarantine_path(store: Store | ShardedStore) -> Path:
    if isinstance(store, ShardedStore):
        return store.directory / QUARANTINE_FILE
    if store.path == ":memory:":
        return Path(QUARANTINE_FILE)
    return Path(store.path).parent / QUARANTINE_FILE


@dataclass
class _Poll:
    records: list[Any]
    offsets: dict[tuple[str, int], int]
    n_bytes: int
    topic_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class _Done:
    poll: _Poll
    results: list[IngestResult] = field(default_factory=list)
    error: BaseException | None = None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def on_partitions_revoked(self, revoked):
        self.ingestor._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.ingestor._on_assigned(assigned)


class Ingestor:
    def __init__(
        self,
        store: Store | ShardedStore,
        bootstrap: str,
        group_id: str,
        topics: tuple[str, ...] = INGEST_TOPICS,
        client_id: str = "dctwin-ingest",
        on_stored=None,
        *,
        site=None,
        policy: IngestPolicy | None = None,
        config: IngestConfig | None = None,
    ) -> None:
        self.store = store
        self.router = store if isinstance(store, ShardedStore) else SingleStore(store)
        self.policy = policy or (
            IngestPolicy.for_site(site) if site is not None else IngestPolicy()
        )
        self.config = cfg = config or IngestConfig()
        self.stats = IngestStats()
        self.stop_event = threading.Event()
        self.on_stored = on_stored  # callback(list[IngestResult]) after each stored poll
        extra = (
            {"partition_assignment_strategy": self.router.assignors}
            if self.router.assignors
            else {}
        )
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_max_bytes=cfg.fetch_max_bytes,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            max_poll_records=cfg.max_poll_records,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            **extra,
        )
        self.quarantine_path = cfg.quarantine_path or default_quarantine_path(store)
        self.dead_letters = DeadLetterSink(
            make_producer(bootstrap, cfg.dlq_compression),
            self.quarantine_path,
            producer_factory=lambda: make_producer(bootstrap, cfg.dlq_compression),
        )
        self._next: dict[tuple[str, int], int] = {}  # next offset stored, per partition
        # next offset expected from the broker, per partition: a poll that starts elsewhere
        # means records were skipped (retention) or the topic was re-created
        self._expected: dict[tuple[str, int], int] = {}
        self._known_ids: dict[str, str] = {}  # topic ids seen while assigned
        self._in_rebalance = False  # in a rebalance callback (kafka-python's IO thread)
        # newly assigned partitions, paused at their saved offsets until checked
        self._unchecked: dict[TopicPartition, int] = {}
        # kept by the rebalance callbacks, so other threads can read it (the consumer is
        # not thread-safe)
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        self._pending: queue.Queue[_Poll | None] = queue.Queue()
        self._done: queue.Queue[_Done] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._last_maintenance = time.monotonic()
        self._rollup_backlog = False  # the last pass left minutes to roll: go on soon
        self.consumer.subscribe(topics=list(topics), listener=_Rebalance(self))

    # -- one poll, inline -----------------------------------------------------------------

    def poll_once(self, timeout_ms: int = 500, max_records: int | None = None) -> int:
        """Poll, store and commit synchronously; returns the samples stored."""
        records = self._poll(timeout_ms, max_records)
        self._update_lag()
        if not records:
            self._maybe_maintain()
            return 0
        done = self._write(self._prepare(records))
        self._finish(done)
        self._maybe_maintain()
        return sum(r.write.samples_stored for r in done.results)

    def _prepare(self, records: dict) -> _Poll:
        flat: list[Any] = []
        offsets: dict[tuple[str, int], int] = {}
        n_bytes = 0
        for tp, msgs in records.items():
            key = (tp.topic, tp.partition)
            self._check_continuity(key, msgs[0].offset)
            self._expected[key] = msgs[-1].offset + 1
            flat += msgs
            offsets[key] = msgs[-1].offset + 1
            n_bytes += sum(len(m.value or b"") for m in msgs)
        return _Poll(flat, offsets, n_bytes, self._topic_ids({t for t, _ in offsets}))

    def _topic_ids(self, topics: set[str]) -> dict[str, str]:
        """The broker's topic ids (Metadata v10+), stored beside the offsets so that a
        re-created topic is recognised; absent where the broker gives none."""
        client = getattr(self.consumer, "_client", None)  # kafka-python keeps them only there
        cluster = getattr(client, "cluster", None)
        if cluster is None or not hasattr(cluster, "topic_id"):
            return {}
        ids = {t: cluster.topic_id(t) for t in topics}
        return {t: str(i) for t, i in ids.items() if i is not None}

    def _write(self, poll: _Poll) -> _Done:
        done = _Done(poll)
        for store, records, offsets in self.router.split(poll.records, poll.offsets):
            try:
                done.results.append(
                    store.ingest(
                        records,
                        offsets,
                        self.policy,
                        before_commit=self._dead_letter_all,
                        topic_ids=poll.topic_ids,
                    )
                )
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:  # some message broke the bulk path: find it
                log.warning(
                    "ingest of %d messages failed (%r); retrying one by one", len(records), exc
                )
                done.results += self._write_one_by_one(store, records, offsets, poll.topic_ids)
        return done

    def _write_one_by_one(
        self,
        store: Store,
        records: list[Any],
        offsets: dict[tuple[str, int], int],
        topic_ids: dict[str, str],
    ) -> list[IngestResult]:
        """Each message in its own transaction; one whose handling raises is dead-lettered
        (`ingest_error`) with the offset past it, so it cannot stop ingest."""
        results = []
        for rec in records:
            past = {(rec.topic, rec.partition): rec.offset + 1}
            try:
                results.append(
                    store.ingest(
                        [rec],
                        past,
                        self.policy,
                        before_commit=self._dead_letter_all,
                        topic_ids=topic_ids,
                    )
                )
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                log.exception(
                    "message %s[%d]@%d broke ingest", rec.topic, rec.partition, rec.offset
                )
                staged = Staged(messages=1, dead=[DeadLetter(rec, INGEST_ERROR, repr(exc))])
                rows = self._dead_letter_all(staged)
                store.store_dead_letters(rows, past, topic_ids)
                results.append(IngestResult(WriteResult(0, 0, 0), staged))
        # partitions of the split without records of their own keep their offsets
        rest = {
            k: o for k, o in offsets.items() if k not in {(r.topic, r.partition) for r in records}
        }
        if rest:
            store.store_dead_letters([], rest, topic_ids)
        return results

    def _finish(self, done: _Done) -> None:
        """After DuckDB committed: count, and commit the offsets to Kafka."""
        s = self.stats
        s.polls += 1
        s.messages += len(done.poll.records)
        s.bytes_consumed += done.poll.n_bytes
        for r in done.results:
            w, st = r.write, r.staged
            s.samples_stored += w.samples_stored
            s.events_stored += w.events_stored
            s.batches_skipped += w.batches_skipped
            s.duplicate_samples += w.duplicate_samples
            s.samples_rejected.update(st.samples_rejected)
            s.unknown_device_samples += st.unknown_device_samples
            s.stage_seconds += r.stage_s
            s.commit_seconds += r.commit_s
        s.note_stored()
        self._next.update(done.poll.offsets)
        if self._in_rebalance:
            # kafka-python 3 runs rebalance callbacks on its IO thread, where a blocking
            # commit raises RuntimeError (and stopped ingest): DuckDB holds the offsets
            log.info("Kafka offset commit skipped during a rebalance; DuckDB holds them")
        else:
            self._commit_to_kafka(done.poll.offsets)
        if self.on_stored is not None:
            self.on_stored(done.results)

    def _commit_to_kafka(self, offsets: dict[tuple[str, int], int]) -> None:
        try:
            self.consumer.commit(
                {
                    TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                    for (t, p), o in offsets.items()
                }
            )
        except KafkaError as exc:  # e.g. a rebalance took the partition: DuckDB has it
            log.info("Kafka offset commit skipped (%s); DuckDB holds the offsets", exc)

    def _dead_letter_all(self, staged: Staged) -> list[DeadLetterRow]:
        """Forward each failed message's original bytes and headers, plus where it came
        from and why; flushed before the DuckDB commit. Never raises for a message: what
        the topic refuses is truncated or quarantined (ingest/deadletters.py)."""
        if not staged.dead:
            return []
        rows = self.dead_letters.send(staged.dead)
        s = self.stats
        for row in rows:
            s.dead_letters[row.reason] += 1
            if row.outcome == TRUNCATED:
                s.dead_letters_truncated += 1
            if row.outcome == QUARANTINED:
                s.poison_messages[QUARANTINED] += 1
            elif row.reason == INGEST_ERROR:
                s.poison_messages[INGEST_ERROR] += 1
        return rows

    def _maybe_maintain(self) -> None:
        every = self.config.maintenance_every_s
        if every is None or (
            not self._rollup_backlog and time.monotonic() - self._last_maintenance < every
        ):
            return
        t0 = time.monotonic()
        unknown = self._partitions_without_data_time()
        backlog = False
        for store, partitions in self.router.by_store():
            held = bool(unknown if partitions is None else unknown & partitions)
            done = store.maintain(
                hold_rollups=held, max_rollup_span_s=self.config.rollup_span_per_pass_s
            )
            self.stats.late_rollup_buckets += done.get("dirty", 0)
            backlog = backlog or bool(done.get("backlog"))
        self._rollup_backlog = backlog
        self._last_maintenance = time.monotonic()
        self.stats.maintenance_runs += 1
        self.stats.maintenance_seconds += self._last_maintenance - t0

    def _partitions_without_data_time(self) -> set[int]:
        """Partition numbers holding telemetry that nothing has been stored from yet: while
        there are any, the stored data says nothing about how far their data has got, so
        the rollups wait (a backlog being caught up would otherwise roll minutes up
        before their last samples arrive, and recompute them)."""
        out = set()
        for (topic, p), lag in list(self.stats.lag.items()):
            if (
                topic != EVENTS_TOPIC
                and self._next.get((topic, p)) is None
                and (lag.highwater is None or lag.highwater > 0)
            ):
                out.add(p)
        return out

    # -- pipelined loop -------------------------------------------------------------------

    def run(self) -> None:
        """Poll until `stop_event`, storing in a writer thread; drains before returning."""
        self._writer = threading.Thread(target=self._writer_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        try:
            while not self.stop_event.is_set():
                self._collect(timeout_s=0)
                if self.stats.inflight_polls >= self.config.max_inflight:
                    self._pause()
                    self._collect(timeout_s=0.1)
                    # services rebalances; paused partitions return nothing, but whatever
                    # does come back has advanced the position and must be stored
                    if records := self._poll(timeout_ms=0):
                        self._hand_over(self._prepare(records))
                    continue
                self._resume()
                records = self._poll(timeout_ms=200)
                self._update_lag()
                if records:
                    self._hand_over(self._prepare(records))
        finally:
            self._drain()
            self._pending.put(None)
            self._writer.join()
            self._writer = None
            self._resume()  # nothing is in flight any more (poll_once may follow)

    def _hand_over(self, poll: _Poll) -> None:
        s = self.stats
        s.inflight_polls += 1
        s.inflight_records += len(poll.records)
        s.max_inflight_polls = max(s.max_inflight_polls, s.inflight_polls)
        s.max_inflight_records = max(s.max_inflight_records, s.inflight_records)
        self._pending.put(poll)

    def _writer_loop(self) -> None:
        while (poll := self._pending.get()) is not None:
            try:
                done = self._write(poll)
                self._maybe_maintain()
            except BaseException as exc:  # surfaces in run(); later polls are not written
                self._done.put(_Done(poll, error=exc))
                return
            self._done.put(done)

    def _collect(self, timeout_s: float) -> None:
        """Commit what the writer finished (this thread owns the consumer)."""
        while self.stats.inflight_polls:
            try:
                done = self._done.get(timeout=timeout_s) if timeout_s else self._done.get_nowait()
            except queue.Empty:
                return
            self.stats.inflight_polls -= 1
            self.stats.inflight_records -= len(done.poll.records)
            if done.error is not None:
                raise RuntimeError("ingest writer failed; offsets not committed") from done.error
            self._finish(done)
            timeout_s = 0

    def _drain(self) -> None:
        while self.stats.inflight_polls:
            writer_gone = self._writer is None or not self._writer.is_alive()
            if writer_gone and self._done.empty():
                return
            self._collect(timeout_s=0.5)

    def _pause(self) -> None:
        if not self.stats.paused:
            self.consumer.pause(*self.consumer.assignment())
            self.stats.paused = True
            self.stats.pauses += 1

    def _resume(self) -> None:
        if self.stats.paused:
            self.consumer.resume(*self.consumer.paused())
            self.stats.paused = False
            self.stats.resumes += 1

    # -- rebalances -----------------------------------------------------------------------

    def _on_revoked(self, revoked) -> None:
        self._in_rebalance = True
        try:
            self._drain()  # everything handed over is stored before we let go
        finally:
            self._in_rebalance = False
        self.router.release({tp.partition for tp in revoked})  # eager: all of them
        self.assigned = self.assigned - {(tp.topic, tp.partition) for tp in revoked}
        for tp in revoked:
            self.stats.lag.pop((tp.topic, tp.partition), None)
            self._expected.pop((tp.topic, tp.partition), None)
            self._unchecked.pop(tp, None)

    def _on_assigned(self, assigned) -> None:
        self.router.acquire({tp.partition for tp in assigned})
        stored = self.router.stored_offsets()
        resume = {
            tp: stored[(tp.topic, tp.partition)]
            for tp in assigned
            if (tp.topic, tp.partition) in stored
        }
        for tp, offset in resume.items():  # resume from DuckDB's offsets, not Kafka's
            self._seek(tp, offset)
        if resume:
            # ... once `_settle_assigned` has checked them against the broker's log, after
            # this poll: kafka-python forbids blocking requests inside this callback
            self.consumer.pause(*resume)
            self._unchecked.update(resume)
        if self.stats.paused and assigned:
            self.consumer.pause(*assigned)
        self.assigned = self.assigned | {(tp.topic, tp.partition) for tp in assigned}

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(tp, offset)
        self._next[(tp.topic, tp.partition)] = offset
        self._expected[(tp.topic, tp.partition)] = offset

    def _poll(self, timeout_ms: int, max_records: int | None = None) -> dict:
        """`KafkaConsumer.poll`, then the offset check of newly assigned partitions."""
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self._unchecked:
            self._settle_assigned()
        return records

    def _settle_assigned(self) -> None:
        held = self.consumer.assignment()
        saved = {tp: o for tp, o in self._unchecked.items() if tp in held}
        self._unchecked.clear()
        try:
            resume = self._check_resume(saved)
        except KafkaError as exc:  # they stay paused; the next poll asks again
            log.warning("log start offsets unavailable (%r); checking again", exc)
            self._unchecked.update(saved)
            return
        for tp, offset in resume.items():
            if offset != saved[tp]:
                self._seek(tp, offset)
        if saved and not self.stats.paused:  # backpressure keeps them paused
            self.consumer.resume(*saved)

    def _check_resume(self, saved: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Where to resume each partition, given the next offsets DuckDB saved.

        - The topic was re-created (its topic id changed, or, where the broker gives no
          ids, the saved offset is past the log end): its offsets started again, so
          resume at its log start and store all it holds. Replays are recognised by batch
          id and sample, never by offset, so the new topic's low offsets are not mistaken
          for duplicates.
        - The saved offset is below the log start (retention deleted records before they
          were read): resume at the log start and record the lost offsets.
        Both are data-loss events (table ingest_data_loss, WARNING, /metrics).
        """
        if not saved:
            return {}
        tps = list(saved)
        starts = self.consumer.beginning_offsets(tps, timeout_ms=OFFSETS_TIMEOUT_MS)
        ids = self.router.stored_topic_ids()
        current = self._topic_ids({tp.topic for tp in tps})
        # Only a broker that gives no topic ids is asked for log ends: where it gives ids
        # but none is stored yet (offsets saved before ids were), the saved offset is
        # trusted as before. tansu's ListOffsets(latest) was seen answering less than the
        # log end (tests/test_ingest_exactly_once.py), which would look like a re-creation.
        no_ids = [tp for tp in tps if tp.topic not in current]
        try:
            ends = (
                self.consumer.end_offsets(no_ids, timeout_ms=OFFSETS_TIMEOUT_MS) if no_ids else {}
            )
        except KafkaError as exc:
            log.warning("log end offsets unavailable (%s); re-creation not checked", exc)
            ends = {}
        out: dict[TopicPartition, int] = {}
        for tp, offset in saved.items():
            key = (tp.topic, tp.partition)
            out[tp], event = resume_offset(
                tp.topic,
                tp.partition,
                offset,
                starts.get(tp),
                ends.get(tp),
                ids.get(key),
                current.get(tp.topic),
            )
            if event is not None:
                self._data_loss(event)
        return out

    def _check_continuity(self, key: tuple[str, int], first_offset: int) -> None:
        """A poll that does not start where the last one ended: the consumer reset its
        position (kafka-python resets to the log start when the position is out of
        range), because retention deleted unread records or the topic was re-created."""
        expected = self._expected.get(key)
        if expected is None or first_offset == expected:
            return
        topic, partition = key
        if first_offset > expected:
            event = DataLossEvent(
                utc_now(),
                topic,
                partition,
                expected,
                first_offset,
                first_offset - expected,
                "retention",
            )
        else:
            event = DataLossEvent(
                utc_now(), topic, partition, expected, first_offset, None, "topic_recreated"
            )
        self._data_loss(event)

    def _data_loss(self, event: DataLossEvent) -> None:
        if event.reason == "topic_recreated":
            # what the old topic held past the saved offset is gone with it; how much is
            # not known here (zero when ingest had caught up before the topic went)
            log.warning(
                "topic %s[%d] was re-created: the saved offset %s belongs to the old topic; "
                "reading the new one from offset %s. Records of the old topic after the saved "
                "offset, if any, were lost with it",
                event.topic,
                event.partition,
                event.from_offset,
                event.to_offset,
            )
        else:
            log.warning(
                "data loss on %s[%d]: %s; offsets %s..%s not stored (%s records); resuming at %s",
                event.topic,
                event.partition,
                event.reason,
                event.from_offset,
                event.to_offset,
                "unknown" if event.lost_records is None else event.lost_records,
                event.to_offset,
            )
        self.stats.data_loss_events[event.reason] += 1
        self.stats.lost_records += event.lost_records or 0
        self.router.store_for(event.partition).record_data_loss(event)

    def _watch_topic_ids(self) -> None:
        """A topic re-created while assigned (its id changed in the consumer's metadata,
        with no rebalance) is checked again like a new assignment: paused, then resumed
        from its log start by `_settle_assigned`."""
        held = self.consumer.assignment()
        for topic, topic_id in self._topic_ids({tp.topic for tp in held}).items():
            known = self._known_ids.setdefault(topic, topic_id)
            if known == topic_id:
                continue
            self._known_ids[topic] = topic_id
            for tp in held:
                position = self._expected.get((tp.topic, tp.partition))
                if tp.topic == topic and position is not None:
                    self._unchecked[tp] = position
                    self.consumer.pause(tp)

    def _update_lag(self) -> None:
        self._watch_topic_ids()
        for tp in self.consumer.assignment():
            key = (tp.topic, tp.partition)
            hw = self.consumer.highwater(tp)
            nxt = self._next.get(key)
            lag = (
                hw - nxt
                if hw is not None and nxt is not None
                else (hw if hw is not None and nxt is None else None)
            )
            self.stats.lag[key] = PartitionLag(tp.topic, tp.partition, nxt, hw, lag)

    def close(self) -> None:
        self.stop_event.set()
        self.consumer.close(autocommit=False)
        self.dead_letters.close(timeout_s=10)
