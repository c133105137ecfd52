"""The alert engine: evaluate rules, run the lifecycle, decide notifications, and commit
all of it in one DuckDB transaction per evaluation.

Per series: a condition that holds for `for` fires an alert (startsAt = when it began);
an alert whose condition stops resolves, unless it is flapping (see FlapSettings), when
it stays firing until clear for `hold`. Firing alerts are then matched against silences
and inhibit rules; an alert is notified firing once, when it is firing and not muted, and
notified resolved once, if its firing was notified.
"""

from __future__ import annotations

import logging
import string
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from twin.alerts.conditions import Hit, Outcome
from twin.alerts.context import Providers, RuleContext
from twin.alerts.grouping import AlertTopology, fingerprint, group_key, group_labels, inhibitions
from twin.alerts.lifecycle import AlertDb
from twin.alerts.outbox import Outbox, utcnow
from twin.alerts.receivers import AlertmanagerReceiver, Receiver
from twin.alerts.rules import RuleBase, RulesFile
from twin.alerts.webhook import AlertView, webhook_payload
from twin.alerts.yaml_files import matches_all

log = logging.getLogger(__name__)


@dataclass
class OpenAlert:
    id: int
    fingerprint: str
    rule: str
    key: str
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float
    starts_at: datetime
    fired_at: datetime
    notified: bool = False
    silenced_by: tuple[str, ...] = ()
    inhibited_by: str | None = None
    flapping: bool = False
    clear_since: datetime | None = None  # flap hold: condition clear since
    ends_at: datetime | None = None

    @property
    def muted(self) -> bool:
        return bool(self.silenced_by) or self.inhibited_by is not None

    def view(self) -> AlertView:
        return AlertView(
            self.id,
            self.fingerprint,
            "resolved" if self.ends_at else "firing",
            self.labels,
            self.annotations,
            self.starts_at,
            self.ends_at,
        )


@dataclass
class RuleStatus:
    last_evaluated: datetime | None = None
    duration_ms: float = 0.0
    error: str | None = None
    inactive: str | None = None
    last_outcome: Outcome | None = None


@dataclass
class Tick:
    now: datetime
    new: list[OpenAlert] = field(default_factory=list)
    resolved: list[OpenAlert] = field(default_factory=list)
    updated: dict[int, OpenAlert] = field(default_factory=dict)
    transitions: list[tuple] = field(default_factory=list)
    notifications: list[tuple[str, str, dict]] = field(default_factory=list)

    def note(
        self,
        a: OpenAlert,
        transition: str,
        at: datetime,
        comment: str | None = None,
        actor: str = "engine",
    ) -> None:
        self.transitions.append((a.id, a.fingerprint, at, transition, actor, comment, a.value))

    @property
    def changed(self) -> bool:
        return bool(
            self.new or self.resolved or self.updated or self.transitions or self.notifications
        )


def reads_of(rules: RulesFile) -> tuple[frozenset[str], frozenset[str], float]:
    """Metrics and event kinds the enabled rules read, and the longest event lookback."""
    metrics: set[str] = set()
    kinds: set[str] = set()
    lookback = 0.0
    for r in rules.rules:
        if not r.enabled:
            continue
        reads = r.reads()
        metrics |= reads.metrics
        kinds |= reads.event_kinds
        lookback = max(lookback, reads.event_lookback_s)
    return frozenset(metrics), frozenset(kinds), lookback


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, fields: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(template, (), _Fields(fields))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return template  # a field of the wrong type for its format spec: show it raw


class AlertEngine:
    def __init__(
        self,
        db: AlertDb,
        rules: RulesFile,
        topology: AlertTopology,
        receivers: list[Receiver],
        outbox: Outbox,
        providers: Providers | None = None,
        external_url: str = "",
    ) -> None:
        self.db = db
        self.rules = rules
        self.topology = topology
        self.receivers = receivers
        self.outbox = outbox
        self.providers = providers or Providers()
        self.external_url = external_url.rstrip("/")
        self.flap = rules.settings.flapping
        self.lock = threading.Lock()
        self.started_at: datetime | None = None
        self.status: dict[str, RuleStatus] = {r.name: RuleStatus() for r in rules.rules}
        self.pending: dict[str, dict[str, datetime]] = {r.name: {} for r in rules.rules}
        self._am_sent: dict[str, datetime] = {}
        self.evaluations = 0
        self._reads = reads_of(rules)
        self._ids: list[int] = []
        self._load()

    def _load(self) -> None:
        """Open alerts and recent state changes from the store: a restarted engine neither
        re-notifies what it notified nor forgets what was flapping."""
        self.open: dict[str, OpenAlert] = {}
        for r in self.db.open_alerts():
            self.open[r["fingerprint"]] = OpenAlert(
                r["id"],
                r["fingerprint"],
                r["rule"],
                r["series_key"],
                r["severity"],
                r["labels"],
                r["annotations"],
                r["value"] or 0.0,
                r["starts_at"],
                r["fired_at"],
                r["notified"],
                tuple(r["silenced_by"]),
                r["inhibited_by"],
                r["flapping"],
            )
        since = utcnow() - timedelta(seconds=self.flap.window)
        self.history = {fp: deque(ts) for fp, ts in self.db.state_changes_since(since).items()}
        for pend in self.pending.values():
            pend.clear()

    # -- evaluation ---------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> Tick:
        with self.lock:
            now = now or utcnow()
            if self.started_at is None:
                self.started_at = now
            tick = Tick(now)
            ctx = RuleContext(
                now, self.db.cur(), self.topology, self.providers, self.started_at, *self._reads
            )
            by_rule: dict[str, dict[str, OpenAlert]] = {}
            for a in self.open.values():
                by_rule.setdefault(a.rule, {})[a.key] = a
            names = set()
            for rule in self.rules.rules:
                if not rule.enabled:
                    continue
                names.add(rule.name)
                outcome = self._outcome(rule, ctx, set(by_rule.get(rule.name, {})), now)
                self._lifecycle(rule, outcome, by_rule.get(rule.name, {}), now, tick)
            for a in list(self.open.values()):
                if a.rule not in names:  # rule removed or disabled since it fired
                    self._resolve(a, now, tick, "rule no longer configured")
            self._mute(now, tick)
            self._notify(now, tick)
            if tick.changed:
                try:
                    self._persist(tick)
                except Exception:
                    log.exception("could not store alert changes; reloading state")
                    self._load()
                    raise
            self.evaluations += 1
            return tick

    def _outcome(
        self, rule: RuleBase, ctx: RuleContext, latched: set[str], now: datetime
    ) -> Outcome:
        st = self.status[rule.name]
        if (
            rule.every
            and st.last_outcome is not None
            and st.last_evaluated is not None
            and (now - st.last_evaluated).total_seconds() < rule.every
        ):
            return st.last_outcome
        t0 = time.perf_counter()
        try:
            outcome = rule.evaluate(ctx, latched)
            st.error = None
        except Exception as exc:  # one broken rule or provider must not stop the others
            log.warning("rule %s failed: %s", rule.name, exc)
            outcome = Outcome(unknown=set(latched))
            st.error = f"{type(exc).__name__}: {exc}"
        st.inactive = outcome.inactive
        st.last_evaluated, st.last_outcome = now, outcome
        st.duration_ms = (time.perf_counter() - t0) * 1000
        return outcome

    def _lifecycle(
        self,
        rule: RuleBase,
        outcome: Outcome,
        open_: dict[str, OpenAlert],
        now: datetime,
        tick: Tick,
    ) -> None:
        hits = {h.key: h for h in outcome.hits}
        pending = self.pending[rule.name]
        for key, hit in hits.items():
            alert = open_.get(key)
            if alert is not None:
                alert.value = hit.value
                alert.clear_since = None  # a flapping alert's condition is back
                continue
            since = pending.setdefault(key, min(hit.since, now) if hit.since else now)
            if (now - since).total_seconds() >= rule.for_s:
                del pending[key]
                self._fire(rule, hit, since, now, tick)
        for key in [k for k in pending if k not in hits and k not in outcome.unknown]:
            del pending[key]
        for key, alert in open_.items():
            if key in hits or key in outcome.unknown:
                continue
            if alert.flapping or self._would_flap(alert.fingerprint, now):
                if not alert.flapping:
                    alert.flapping = True
                    tick.updated[alert.id] = alert
                    tick.note(
                        alert,
                        "flapping",
                        now,
                        f"{self.flap.max_transitions} state "
                        f"changes within {self.flap.window:g}s; resolves after "
                        f"{self.flap.hold:g}s clear",
                    )
                if alert.clear_since is None:
                    alert.clear_since = now
                if (now - alert.clear_since).total_seconds() < self.flap.hold:
                    continue
            self._resolve(alert, now, tick)

    def _fire(self, rule: RuleBase, hit: Hit, since: datetime, now: datetime, tick: Tick) -> None:
        labels = {
            k: v
            for k, v in {
                **hit.labels,
                **rule.labels,
                "alertname": rule.name,
                "severity": rule.severity,
            }.items()
            if v != ""
        }
        fp = fingerprint(labels)
        if fp in self.open:  # same labels from another series: one alert (dedupe)
            return
        fields = {
            **labels,
            "value": hit.value,
            "runbook_base": self.rules.settings.runbook_base or f"{self.external_url}/runbooks",
            "downstream": self._downstream(labels),
            **hit.context,
        }
        annotations = {k: render(v, fields) for k, v in rule.annotations.as_dict().items()}
        if not self._ids:  # ids come from a DuckDB sequence, a block at a time
            with self.db.lock:
                self._ids = self.db.next_ids(self.db.cur(), 256)[::-1]
        alert = OpenAlert(
            self._ids.pop(),
            fp,
            rule.name,
            hit.key,
            rule.severity,
            labels,
            annotations,
            hit.value,
            since,
            now,
        )
        self.open[fp] = alert
        self._changed_state(fp, now)
        tick.new.append(alert)
        tick.note(alert, "fired", now)

    def _downstream(self, labels: dict[str, str]) -> str:
        for entity in (labels.get("device_id"), labels.get("cdu"), labels.get("pdu")):
            racks = self.topology.downstream(entity or "")
            if racks:
                return ", ".join(racks)
        return ""

    def _resolve(self, alert: OpenAlert, now: datetime, tick: Tick, why: str | None = None) -> None:
        alert.ends_at = now
        del self.open[alert.fingerprint]
        self._changed_state(alert.fingerprint, now)
        tick.resolved.append(alert)
        tick.note(alert, "resolved", now, why)

    def _changed_state(self, fp: str, now: datetime) -> None:
        hist = self.history.setdefault(fp, deque())
        hist.append(now)

    def _would_flap(self, fp: str, now: datetime) -> bool:
        """Would resolving now be the max_transitions-th state change within the window?"""
        hist = self.history.get(fp, deque())
        horizon = now - timedelta(seconds=self.flap.window)
        while hist and hist[0] < horizon:
            hist.popleft()
        return len(hist) + 1 >= self.flap.max_transitions

    # -- silences and inhibition --------------------------------------------------------

    def _mute(self, now: datetime, tick: Tick) -> None:
        silences = self.db.active_silences(now)
        inhibited = inhibitions(
            self.rules.inhibit_rules, {fp: a.labels for fp, a in self.open.items()}
        )
        for fp, a in self.open.items():
            sil = tuple(sorted(sid for sid, ms in silences if matches_all(ms, a.labels)))
            if sil != a.silenced_by:
                tick.note(
                    a, "silenced" if sil else "unsilenced", now, ", ".join(sil or a.silenced_by)
                )
                a.silenced_by = sil
                tick.updated[a.id] = a
            src = inhibited.get(fp)
            if src != a.inhibited_by:
                by = self.open.get(src or "")
                tick.note(
                    a,
                    "inhibited" if src else "uninhibited",
                    now,
                    f"by {by.labels.get('alertname')} {src}" if by else None,
                )
                a.inhibited_by = src
                tick.updated[a.id] = a

    # -- notifications ------------------------------------------------------------------

    def _notify(self, now: datetime, tick: Tick) -> None:
        fire = [a for a in self.open.values() if not a.notified and not a.muted]
        resolved = [a for a in tick.resolved if a.notified]
        for a in fire:
            a.notified = True
            tick.updated[a.id] = a
        changed = fire + resolved
        for r in self.receivers:
            if isinstance(r, AlertmanagerReceiver):
                self._notify_alertmanager(r, changed, now, tick)
                continue
            groups: dict[str, dict[str, str]] = {}
            for a in changed:
                if r.routes(a.labels) and (a.ends_at is None or r.send_resolved):
                    gl = group_labels(a.labels, r.group_by)
                    groups[group_key(r.name, gl)] = gl
            for gkey, gl in groups.items():
                members = [
                    a
                    for a in self.open.values()
                    if a.notified
                    and not a.muted
                    and r.routes(a.labels)
                    and group_labels(a.labels, r.group_by) == gl
                ]
                members += [
                    a
                    for a in resolved
                    if r.routes(a.labels) and group_labels(a.labels, r.group_by) == gl
                ]
                payload = webhook_payload(
                    r.name,
                    gkey,
                    gl,
                    [a.view() for a in members],
                    self.external_url,
                    getattr(r, "max_alerts", 0),
                )
                tick.notifications.append((r.name, gkey, payload))

    def _notify_alertmanager(
        self, r: AlertmanagerReceiver, changed: list[OpenAlert], now: datetime, tick: Tick
    ) -> None:
        """Changes at once; all firing alerts again every resend interval."""
        from twin.alerts.alertmanager import queued_alerts

        sent = [a for a in changed if r.routes(a.labels) and (a.ends_at is None or r.send_resolved)]
        last = self._am_sent.get(r.name)
        if not sent and (last is None or (now - last).total_seconds() < r.resend_interval):
            return
        if not sent:
            sent = [
                a for a in self.open.values() if a.notified and not a.muted and r.routes(a.labels)
            ]
            if not sent or self.outbox.has_pending(r.name):
                return
        self._am_sent[r.name] = now
        tick.notifications.append(
            (r.name, r.name, queued_alerts([a.view() for a in sent], self.external_url))
        )

    # -- persistence --------------------------------------------------------------------

    def _persist(self, tick: Tick) -> None:
        def row(a: OpenAlert) -> dict[str, Any]:
            return {
                "id": a.id,
                "status": "resolved" if a.ends_at else "firing",
                "ends_at": a.ends_at,
                "value": a.value,
                "silenced_by": list(a.silenced_by),
                "inhibited_by": a.inhibited_by,
                "flapping": a.flapping,
                "notified": a.notified,
                "updated_at": tick.now,
            }

        new_ids = {a.id for a in tick.new}
        new = [
            {
                **row(a),
                "fingerprint": a.fingerprint,
                "rule": a.rule,
                "series_key": a.key,
                "severity": a.severity,
                "labels": orjson.dumps(a.labels).decode(),
                "annotations": orjson.dumps(a.annotations).decode(),
                "starts_at": a.starts_at,
                "fired_at": a.fired_at,
                "updated_at": a.fired_at,
            }
            for a in tick.new
        ]
        changed = [
            row(a)
            for a in ({a.id: a for a in tick.resolved} | tick.updated).values()
            if a.id not in new_ids
        ]
        with self.db.transaction() as cur:
            self.db.write_changes(cur, new, changed, tick.transitions)
            for receiver, gkey, payload in tick.notifications:
                # delivery runs on wall-clock time, whatever time the evaluation was for
                self.outbox.enqueue(cur, receiver, gkey, payload, utcnow())
