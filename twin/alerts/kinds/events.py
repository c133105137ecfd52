"""Kinds over device events: `event`, `leak`, `xid`, `pump_failed`, `psu_failed`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import orjson
import polars as pl
from pydantic import Field

from domain.contract import EventKind
from domain.xids import CRITICAL_XID_CODES
from twin.alerts.conditions import Hit, Outcome, by_labels, series_key
from twin.alerts.context import RuleContext
from twin.alerts.rules import Reads, RuleBase, Selector, rule_kind
from twin.alerts.yaml_files import Duration

# NVIDIA XIDs that mean a GPU needs attention now (the catalogue's critical codes)
CRITICAL_XIDS = CRITICAL_XID_CODES


class EventRuleBase(RuleBase):
    """Fires on matching events; resolves `resolve_after` the last one. Active while a
    matching event is younger than `resolve_after`; with `by`, one alert per group (a
    pump failure: one per loop, whichever pump reported)."""

    events: list[EventKind] = Field(min_length=1)
    select: Selector = Field(default_factory=Selector)
    where: dict[str, list[str | int | float | bool]] = Field(
        default_factory=dict, description="attrs filter: attr -> accepted values"
    )
    resolve_after: Duration = Field(900.0, gt=0)

    def reads(self) -> Reads:
        return Reads(
            event_kinds=frozenset(e.value for e in self.events),
            event_lookback_s=self.resolve_after,
        )

    def accepts(self, attrs: dict[str, Any]) -> bool:
        """Does an event with these attrs count (the `where` filter)?"""
        return all(attrs.get(k) in accepted for k, accepted in self.where.items())

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        frame = ctx.events([e.value for e in self.events], self.resolve_after)
        groups: dict[str, Hit] = {}
        topo = ctx.topology
        for t, dev, message, attrs in frame.select(
            "read_time", "device_id", "message", "attrs"
        ).iter_rows():
            if not ctx.matches(dev, self.select) or not self.accepts(orjson.loads(attrs or "{}")):
                continue
            labels = topo.labels_for(dev)
            key = series_key(labels, self.by) if self.by else dev
            hit = groups.get(key)
            if hit is None:
                groups[key] = Hit(
                    key,
                    by_labels(labels, self.by),
                    1.0,
                    {"message": message or "", "device_id": dev},
                    since=t,
                )
            else:
                hit.value += 1
                hit.context["message"] = message or hit.context["message"]
        for hit in groups.values():
            hit.context["count"] = int(hit.value)
        return Outcome(hits=list(groups.values()))


@rule_kind
class EventRule(EventRuleBase):
    """Any event kinds, filtered by device and attrs."""

    kind: Literal["event"]


@rule_kind
class LeakRule(EventRuleBase):
    """`leak_detected` events, or a `leak_detected` reading >= 1 on cooling telemetry."""

    kind: Literal["leak"]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.leak_detected])
    resolve_after: Duration = Field(300.0, gt=0)
    stale_after: Duration = Field(120.0, gt=0)

    def reads(self) -> Reads:
        events = super().reads()
        return Reads(frozenset({"leak_detected"}), events.event_kinds, events.event_lookback_s)

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        """Leak events, or a fresh `leak_detected` reading >= 1 from cooling telemetry."""
        out = super().evaluate(ctx, latched)
        frame = ctx.select(ctx.latest("leak_detected"), self.select).filter(
            (pl.col("value") >= 1)
            & (pl.col("read_time") >= ctx.now - timedelta(seconds=self.stale_after))
        )
        have = {h.key for h in out.hits}
        for dev, value in frame.select("device_id", "value").iter_rows():
            labels = ctx.topology.labels_for(dev)
            key = series_key(labels, self.by) if self.by else dev
            if key not in have:
                have.add(key)
                out.hits.append(
                    Hit(
                        key,
                        by_labels(labels, self.by),
                        float(value),
                        {"message": "leak sensor", "device_id": dev, "count": 1},
                    )
                )
        return out


@rule_kind
class XidRule(EventRuleBase):
    """`xid` events whose `attrs.xid` (or `code`) is one of `codes`."""

    kind: Literal["xid"]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.xid])
    codes: list[int] = Field(default_factory=lambda: list(CRITICAL_XIDS), min_length=1)

    def accepts(self, attrs: dict[str, Any]) -> bool:
        code = attrs.get("xid", attrs.get("code"))
        try:
            if code is None or int(code) not in self.codes:
                return False
        except (TypeError, ValueError):
            return False
        return super().accepts(attrs)


@rule_kind
class PumpFailedRule(EventRuleBase):
    """One alert per cooling loop (CDU), whatever pump of it reported."""

    kind: Literal["pump_failed"]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.pump_failed])
    by: list[str] | None = Field(default_factory=lambda: ["cdu"])


@rule_kind
class PsuFailedRule(EventRuleBase):
    """`psu_fault` events."""

    kind: Literal["psu_failed"]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.psu_fault])
