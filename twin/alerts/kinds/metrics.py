"""Kinds over telemetry readings: `threshold`, `rate`, `absence`."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from twin.alerts.conditions import Hit, Outcome, by_labels, condition, series_key
from twin.alerts.context import RuleContext
from twin.alerts.rules import (
    ConditionRule,
    MetricName,
    Reads,
    RuleBase,
    Selector,
    rule_kind,
)
from twin.alerts.yaml_files import Duration


@rule_kind
class ThresholdRule(ConditionRule):
    """Latest reading `op` value; readings older than `stale_after` change nothing."""

    kind: Literal["threshold"]
    select: Selector = Field(default_factory=Selector)
    metric: MetricName
    stale_after: Duration = Field(120.0, gt=0, description="older readings change nothing")
    relative_to: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="a numeric site attribute of the device (e.g. a UPS's "
        "required_ride_through_s): value and clear are multiples of it, and devices "
        "without it are skipped",
    )

    def reads(self) -> Reads:
        return Reads(metrics=frozenset({self.metric}))

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        frame = ctx.select(ctx.latest(self.metric), self.select)
        fresh = frame.filter(pl.col("read_time") >= ctx.now - timedelta(seconds=self.stale_after))
        ids = fresh["device_id"].to_list()
        values = fresh["value"].to_numpy().astype(float)
        if self.relative_to is None:
            return condition(self, ctx, ids, values, latched)
        attrs = ctx.topology.attributes
        base = [attrs.get(d, {}).get(self.relative_to) for d in ids]
        has = [isinstance(b, (int, float)) for b in base]
        keep_ids = [d for d, h in zip(ids, has, strict=True) if h]
        scale = np.array([b for b, h in zip(base, has, strict=True) if h], dtype=float)
        return condition(self, ctx, keep_ids, values[np.asarray(has, dtype=bool)], latched, scale)


@rule_kind
class RateRule(ConditionRule):
    """Rate of change of a metric over `window`, in units per `per` (default per second)."""

    kind: Literal["rate"]
    select: Selector = Field(default_factory=Selector)
    metric: MetricName
    window: Duration = Field(gt=0)
    per: Duration = Field(1.0, gt=0)

    def reads(self) -> Reads:
        return Reads(metrics=frozenset({self.metric}))

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        """(latest - first in the window) / elapsed, scaled to `per`. Needs samples spanning
        at least half the window so that two jittery readings a second apart do not count."""
        frame = ctx.select(ctx.window_edges(self.metric, self.window), self.select)
        frame = frame.with_columns(
            span_s=(pl.col("t1") - pl.col("t0")).dt.total_microseconds() / 1e6
        ).filter(pl.col("span_s") >= self.window / 2)
        rate = ((frame["v1"] - frame["v0"]) / frame["span_s"] * self.per).to_numpy()
        return condition(self, ctx, frame["device_id"].to_list(), rate.astype(float), latched)


@rule_kind
class AbsenceRule(RuleBase):
    """A device (or one of its metrics) not heard from for `after`. Devices silent for
    longer than `forget_after` are considered decommissioned and dropped."""

    kind: Literal["absence"]
    select: Selector = Field(default_factory=Selector)
    metric: MetricName | None = None
    after: Duration = Field(gt=0)
    forget_after: Duration = Field(86400.0, gt=0)

    def reads(self) -> Reads:
        return Reads(metrics=frozenset({self.metric} if self.metric else ()))

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        """Silent devices. For `after` after the engine starts nothing fires: a restarted
        twin has old data until the collectors' next readings arrive."""
        if (ctx.now - ctx.started_at).total_seconds() < self.after:
            return Outcome(unknown=set(latched))
        frame = ctx.select(ctx.last_seen(self.metric), self.select)
        age = ((ctx.now - frame["read_time"]).dt.total_microseconds() / 1e6).to_numpy()
        silent = (age > self.after) & (age <= self.forget_after)
        out = Outcome()
        ids = frame["device_id"].to_list()
        topo = ctx.topology
        if self.by:
            groups: dict[str, list[int]] = {}
            for i in np.flatnonzero(silent):
                groups.setdefault(series_key(topo.labels_for(ids[i]), self.by), []).append(int(i))
            for key, members in groups.items():
                j = members[int(np.argmax(age[members]))]
                labels = by_labels(topo.labels_for(ids[j]), self.by)
                out.hits.append(Hit(key, labels, float(age[j]), {"count": len(members)}))
            return out
        for i in np.flatnonzero(silent):
            since = frame["read_time"][int(i)] + timedelta(seconds=self.after)
            out.hits.append(Hit(ids[i], topo.labels_for(ids[i]), float(age[i]), {}, since))
        return out
