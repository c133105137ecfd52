"""Gets batches to Kafka, or to the spool when Kafka cannot take them, in order.

One thread does all sending, so order needs no locks: the read loop hands over one
interval's records at a time (`submit` never blocks on Kafka). While the spool is empty
an interval is produced directly (acks=all, bounded by the Kafka timeouts); whatever of
it fails goes to the spool. While the spool holds anything, new intervals are appended
behind it and the spool is replayed oldest first, so a device's batches reach Kafka in
the order they were read. After any failure the producer is discarded and rebuilt on
the next attempt (a restarted broker does not know the old producer's id).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from collectors.spool import Dropped, Record, Spool
from collectors.stats import DaemonStats

log = logging.getLogger(__name__)

ProducerFactory = Callable[[], KafkaProducer]  # or anything with its API


class Shipper:
    def __init__(
        self,
        spool: Spool,
        stats: DaemonStats,
        producer_factory: ProducerFactory,
        on_dropped: Callable[[Dropped], None],
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        chunk_records: int = 256,
        send_timeout_s: float = 15.0,
    ) -> None:
        self.spool = spool
        self.stats = stats
        self._factory = producer_factory
        self._on_dropped = on_dropped
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_s = backoff_initial_s
        self._chunk_records = chunk_records
        self._send_timeout_s = send_timeout_s
        self._producer: KafkaProducer | None = None
        self._queue: deque[list[Record]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._stop_deadline_mono = float("inf")
        self._next_replay_mono = 0.0
        self._thread = threading.Thread(target=self._run, name="shipper", daemon=True)
        if spool.open_dropped:
            self._report_dropped(spool.open_dropped)
        self._refresh_gauges()

    def start(self) -> None:
        self._thread.start()

    # -- read-loop side ----------------------------------------------------------------------
    def submit(self, records: list[Record]) -> None:
        if not records:
            return
        with self._cond:
            self._queue.append(records)
            self.stats.queue_batches += len(records)
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted has been sent or spooled."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout_s: float) -> bool:
        """Flush what is queued (to Kafka while it answers and the spool is empty,
        otherwise to the spool), then stop. True if the thread finished in time."""
        with self._cond:
            self._stopping = True
            self._stop_deadline_mono = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("shipper did not finish within %.1f s", timeout_s)
            return False
        self._close_producer(timeout_s=2.0)
        return True

    # -- shipper thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping and not self._replay_due():
                    wait = (
                        self._next_replay_mono - time.monotonic() if not self.spool.empty else None
                    )
                    self._cond.wait(wait)
                if self._queue:
                    group = self._queue.popleft()
                elif self._stopping:
                    return
                else:
                    group = None
                self._busy = True
            try:
                if group is not None:
                    self._ship(group)
                else:
                    self._replay_chunk()
            except Exception:  # keep shipping; what failed is in the spool or reported
                log.exception("shipper error")
            finally:
                with self._cond:
                    self._busy = False
                    if group is not None:
                        self.stats.queue_batches -= len(group)
                    self._refresh_gauges()
                    self._cond.notify_all()

    def _replay_due(self) -> bool:
        return (
            not self.spool.empty
            and not self._stopping
            and time.monotonic() >= self._next_replay_mono
        )

    def _ship(self, group: list[Record]) -> None:
        if not self.spool.empty:
            self._to_spool(group)  # behind what is waiting: order per device holds
            return
        if time.monotonic() + self._send_timeout_s > self._stop_deadline_mono - 0.5:
            self._to_spool(group)  # stopping: no time left for a send that may hang
            return
        ok = self._send(group)
        sent = [r for r, good in zip(group, ok, strict=True) if good]
        failed = [r for r, good in zip(group, ok, strict=True) if not good]
        self.stats.batches_sent += len(sent)
        self.stats.samples_sent += sum(r.n_samples for r in sent)
        if failed:
            self._to_spool(failed)
            self._next_replay_mono = time.monotonic() + self._backoff_s

    def _to_spool(self, records: list[Record]) -> None:
        dropped = self.spool.append(records)
        self.stats.batches_spooled += len(records)
        self.stats.samples_spooled += sum(r.n_samples for r in records)
        if dropped:
            self._report_dropped(dropped)

    def _replay_chunk(self) -> None:
        records, end, bad = self.spool.peek(self._chunk_records)
        if bad:
            self._report_dropped(bad)
        if not records:
            if not self.spool.empty:  # counts and files disagree: never spin on it
                log.error("spool reports %d batches but none is readable", self.spool.records)
                self._next_replay_mono = time.monotonic() + self._backoff_max_s
            return
        ok = self._send(records)
        n_ok = next((i for i, good in enumerate(ok) if not good), len(ok))
        if n_ok == len(records):
            self.spool.commit(end, len(records), sum(r.n_samples for r in records))
            self._backoff_s = self._backoff_initial_s
            self._next_replay_mono = 0.0
            if self.spool.empty:
                log.info("spool replayed; sending directly again")
        else:
            # keep the chunk: records after the first failure that did arrive will be
            # sent again, and ingest drops the copy by batch id
            self._next_replay_mono = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        replayed = records[:n_ok] if n_ok == len(records) else []
        self.stats.batches_replayed += len(replayed)
        self.stats.samples_replayed += sum(r.n_samples for r in replayed)

    def _send(self, records: list[Record]) -> list[bool]:
        """Produce records with acks=all; True for each the broker acknowledged."""
        try:
            producer = self._get_producer()
        except Exception as exc:
            self._failed(f"cannot connect: {exc}")
            return [False] * len(records)
        futures = []
        error: Exception | None = None
        for r in records:
            try:
                futures.append(producer.send(r.topic, key=r.key, value=r.value, headers=r.headers))
            except Exception as exc:  # metadata/buffer wait past max_block_ms, and the like
                error = exc
                break
        deadline = time.monotonic() + self._send_timeout_s
        ok = []
        for f in futures:
            try:
                f.get(timeout=max(0.0, deadline - time.monotonic()))
                ok.append(True)
            except Exception as exc:
                error = error or exc
                ok.append(False)
        ok += [False] * (len(records) - len(ok))
        if error is not None:
            self._failed(f"{type(error).__name__}: {error}")
        elif not self.stats.broker_up:
            log.info("broker reachable again")
            self.stats.broker_up = True
        return ok

    def _failed(self, why: str) -> None:
        self.stats.send_errors += 1
        if self.stats.broker_up or self.stats.send_errors == 1:
            log.warning("send failed, spooling: %s", why)
        else:
            log.debug("send failed: %s", why)
        self.stats.broker_up = False
        self._close_producer(timeout_s=0.0)

    def _get_producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = self._factory()
        return self._producer

    def _close_producer(self, timeout_s: float) -> None:
        if self._producer is None:
            return
        p, self._producer = self._producer, None
        try:
            p.close(timeout=timeout_s)
        except KafkaError as exc:
            # kafka-python's close() raises from flush() while records are pending and then
            # leaves its sender thread running. Those records are in the spool already (their
            # sends failed): abort them and close again.
            log.debug("producer close: %r; forcing", exc)
            sender = getattr(p, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(1.0)
            with contextlib.suppress(KafkaError):
                p.close(timeout=0)

    def _report_dropped(self, dropped: Dropped) -> None:
        self.stats.batches_dropped += dropped.records
        self.stats.samples_dropped += dropped.samples
        self.stats.bytes_dropped += dropped.bytes
        log.warning(
            "spool dropped %d batches (%d samples, %d bytes): %s",
            dropped.records,
            dropped.samples,
            dropped.bytes,
            ",".join(sorted(dropped.reasons)),
        )
        self._on_dropped(dropped)

    def _refresh_gauges(self) -> None:
        self.stats.spool_bytes = self.spool.bytes
        self.stats.spool_batches = self.spool.records
        self.stats.spool_samples = self.spool.samples
