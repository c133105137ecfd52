"""Wires the alert engine and the outbox worker into a process (`dctwin serve`/`demo`).

Evaluation runs every `interval_s` and also right after ingest stores data (`wake`),
at most every `min_interval_s`; delivery runs in its own thread so a slow receiver never
delays evaluation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from domain.site import Site
from ingest.store import Store
from twin.alerts.context import Providers
from twin.alerts.engine import AlertEngine, Tick
from twin.alerts.grouping import site_topology
from twin.alerts.lifecycle import AlertDb
from twin.alerts.outbox import Deliverer, Outbox, utcnow
from twin.alerts.receivers import KafkaReceiver, Receiver, load_receivers, parse_receivers
from twin.alerts.rules import RulesFile, load_rules, parse_rules
from twin.alerts.yaml_files import ConfigError
from twin.health import ComponentHealth, heartbeat

log = logging.getLogger(__name__)


def load_config(
    rules_file: Path | None = None, receivers_file: Path | None = None, alerts_topic: str = ""
) -> tuple[RulesFile, list[Receiver]]:
    """Rules (packaged defaults when None), receivers from the rules file and the receivers
    file, plus a Kafka receiver on `alerts_topic` when it is set. ConfigError names the
    file and line."""
    if rules_file is None:
        rules = load_rules(None)
        receivers: list[Receiver] = []
    else:
        rules, lines = parse_rules(_read(rules_file, "rules"), str(rules_file))
        receivers = parse_receivers(rules.receivers, str(rules_file), lines)
    if receivers_file is not None:
        receivers += load_receivers(receivers_file)
    if alerts_topic and not any(
        isinstance(r, KafkaReceiver) and r.topic == alerts_topic for r in receivers
    ):
        receivers.append(KafkaReceiver(name="kafka-alerts", type="kafka", topic=alerts_topic))
    names = [r.name for r in receivers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            str(receivers_file or rules_file), None, f"receivers defined twice: {dupes}"
        )
    return rules, receivers


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read {what} file: {exc.strerror}") from exc


class AlertService:
    def __init__(
        self,
        store: Store,
        site: Site,
        rules: RulesFile,
        receivers: list[Receiver],
        providers: Providers | None = None,
        external_url: str = "",
        kafka_bootstrap: str | None = None,
        interval_s: float = 1.0,
        min_interval_s: float = 0.1,
    ) -> None:
        self.db = AlertDb(store)
        self.outbox = Outbox(self.db)
        self.rules = rules
        self.receivers = receivers
        self.topology = site_topology(site)
        self.engine = AlertEngine(
            self.db, rules, self.topology, receivers, self.outbox, providers, external_url
        )
        self.deliverer = Deliverer(self.outbox, receivers, kafka_bootstrap)
        self.interval_s = interval_s
        self.min_interval_s = min_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_error: str | None = None
        self.started_at: float | None = None  # heartbeat for /healthz (wall clock)
        self.last_success_at: float | None = None
        # called with each evaluation that changed something (the API's live stream)
        self.on_tick: Callable[[Tick], None] | None = None

    # -- running ------------------------------------------------------------------------

    def evaluate(self, now=None) -> Tick:
        tick = self.engine.evaluate(now)
        if tick.notifications:
            self.deliverer.wake.set()
        if self.on_tick is not None and tick.transitions:
            try:
                self.on_tick(tick)
            except Exception:  # a listener must never break evaluation
                log.exception("alert on_tick listener failed")
        return tick

    def wake(self, *_: Any) -> None:
        """Ask for an evaluation now (ingest calls this after storing a poll)."""
        self._wake.set()

    def _eval_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                self.evaluate()
                self.last_error = None
                self.last_success_at = time.time()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("alert evaluation failed")
            self._wake.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
            rest = self.min_interval_s - (time.monotonic() - started)
            if rest > 0:
                self._stop.wait(rest)

    def start(self) -> AlertService:
        self.started_at = time.time()
        for name, target in (
            ("alerts-eval", self._eval_loop),
            ("alerts-delivery", self.deliverer.run),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.started_at = None
        self._stop.set()
        self._wake.set()
        self.deliverer.stop_event.set()
        self.deliverer.wake.set()
        for t in self._threads:
            t.join(timeout=15)
        self.deliverer.close()
        self.db.close()

    # -- views for the API --------------------------------------------------------------

    def rules_view(self) -> list[dict[str, Any]]:
        firing: dict[str, int] = {}
        with self.engine.lock:  # a consistent view, not one mid-evaluation
            for a in self.engine.open.values():
                firing[a.rule] = firing.get(a.rule, 0) + 1
            pending = {name: len(p) for name, p in self.engine.pending.items()}
        out = []
        for rule in self.rules.rules:
            st = self.engine.status[rule.name]
            doc = rule.model_dump(mode="json", by_alias=True, exclude_none=True)
            doc["annotations"] = rule.annotations.as_dict()
            doc["state"] = {
                "health": "disabled"
                if not rule.enabled
                else "error"
                if st.error
                else "inactive"
                if st.inactive
                else "ok"
                if st.last_evaluated
                else "unknown",
                "reason": st.error or st.inactive,
                "last_evaluated": st.last_evaluated,
                "duration_ms": round(st.duration_ms, 3),
                "firing": firing.get(rule.name, 0),
                "pending": pending.get(rule.name, 0),
            }
            out.append(doc)
        return out

    def receivers_view(self) -> list[dict[str, Any]]:
        stats = self.outbox.stats()
        empty = {
            "pending": 0,
            "delivered": 0,
            "failed": 0,
            "last_delivered_at": None,
            "last_error": None,
        }
        return [{**r.public(), "outbox": stats.get(r.name, empty)} for r in self.receivers]

    def engine_health(self, stale_after_s: float) -> ComponentHealth:
        """The evaluation loop: down if its thread died, stale without a successful
        evaluation for `stale_after_s`."""
        return self._thread_health(
            "alerts-eval", self.last_success_at, self.last_error, stale_after_s
        )

    def delivery_health(self, stale_after_s: float) -> ComponentHealth:
        """The outbox worker: down if its thread died, stale without a finished delivery
        pass for `stale_after_s`. A receiver that refuses is not the worker's failure:
        it shows in `GET /v1/receivers` and the pending count here."""
        h = self._thread_health(
            "alerts-delivery",
            self.deliverer.last_pass_at,
            self.deliverer.last_error,
            stale_after_s,
        )
        return replace(h, extra={"delivered": self.deliverer.delivered})

    def _thread_health(
        self, thread: str, last_success: float | None, error: str | None, stale_after_s: float
    ) -> ComponentHealth:
        if self.started_at is None:
            return ComponentHealth("not_running")
        if not any(t.name == thread and t.is_alive() for t in self._threads):
            return ComponentHealth("down", last_success, f"thread {thread} is not running")
        return heartbeat(self.started_at, last_success, stale_after_s, error)

    def health(self) -> dict[str, Any]:
        return {
            "alerts_firing": len(self.engine.open),
            "alert_evaluations": self.engine.evaluations,
            "alert_error": self.last_error,
            "time": utcnow().isoformat(),
        }
