"""Rule kinds -> the series whose condition holds now (vectorized over devices).

Each evaluator returns `Outcome(hits, unknown)`: `hits` are series (one device, or one
group when the rule aggregates `by` topology labels) whose condition holds; `unknown`
are series that are firing but cannot be judged now (stale data, missing provider), whose
state must not change. Python only loops over series that are firing or about to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import polars as pl

from twin.alerts.context import RuleContext
from twin.alerts.rules import (
    AbsenceRule,
    ConditionRule,
    EventRule,
    HeatBalanceRule,
    LeakRule,
    PueRegressionRule,
    RateRule,
    ThresholdRule,
    XidRule,
)

_CMP = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}


@dataclass
class Hit:
    key: str  # series identity within the rule
    labels: dict[str, str]  # topology labels of the device, or the `by` labels
    value: float
    context: dict[str, Any] = field(default_factory=dict)  # extra template fields
    since: datetime | None = None  # when the condition began, if the data says


@dataclass
class Outcome:
    hits: list[Hit] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    inactive: str | None = None  # why the rule cannot evaluate (missing provider)


def evaluate(rule: Any, ctx: RuleContext, latched: set[str]) -> Outcome:
    """Dispatch on the rule kind. `latched` are the keys of this rule's firing alerts."""
    if isinstance(rule, ThresholdRule):
        return _threshold(rule, ctx, latched)
    if isinstance(rule, RateRule):
        return _rate(rule, ctx, latched)
    if isinstance(rule, AbsenceRule):
        return _absence(rule, ctx, latched)
    if isinstance(rule, LeakRule):
        return _leak(rule, ctx, latched)
    if isinstance(rule, EventRule):
        return _events(rule, ctx)
    if isinstance(rule, PueRegressionRule):
        return _pue_regression(rule, ctx, latched)
    return _provider(rule, ctx, latched)


def _series_key(labels: dict[str, str], by: list[str]) -> str:
    return ",".join(f"{k}={labels.get(k, '')}" for k in by)


def _condition(
    rule: ConditionRule,
    ctx: RuleContext,
    ids: list[str],
    values: np.ndarray,
    latched: set[str],
    fire: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> Outcome:
    """Hysteresis: a series not firing needs `op value`; a firing one stays while
    `op clear` holds. With `by`, a group is active if any member is."""
    if fire is None:
        fire = _CMP[rule.op](values, rule.value)
        keep = _CMP[rule.op](values, rule.clear_value)
    ctx_extra = {"threshold": rule.value, "clear": rule.clear_value}
    out = Outcome()
    topo = ctx.topology
    if not rule.by:
        held = (
            np.isin(np.asarray(ids, dtype=object), list(latched))
            if latched
            else np.zeros(len(ids), dtype=bool)
        )
        active = np.where(held, keep, fire)
        for i in np.flatnonzero(active):
            out.hits.append(Hit(ids[i], topo.labels_for(ids[i]), float(values[i]), ctx_extra))
        out.unknown = latched - set(ids)
        return out
    worst = np.argmax if rule.op in (">", ">=") else np.argmin
    groups: dict[str, list[int]] = {}
    seen: set[str] = set()
    for i, dev in enumerate(ids):
        key = _series_key(topo.labels_for(dev), rule.by)
        seen.add(key)
        if fire[i] or keep[i]:
            groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        idx = np.asarray(members)
        if fire[idx].any() or (key in latched and keep[idx].any()):
            j = idx[worst(values[idx])]
            labels = {k: v for k, v in topo.labels_for(ids[j]).items() if k in rule.by}
            out.hits.append(
                Hit(
                    key,
                    labels,
                    float(values[j]),
                    {**ctx_extra, "count": int(fire[idx].sum()), "device_id": ids[j]},
                )
            )
    out.unknown = latched - seen
    return out


def _threshold(rule: ThresholdRule, ctx: RuleContext, latched: set[str]) -> Outcome:
    frame = ctx.select(ctx.latest(rule.metric), rule.select)
    fresh = frame.filter(pl.col("read_time") >= ctx.now - timedelta(seconds=rule.stale_after))
    return _condition(
        rule, ctx, fresh["device_id"].to_list(), fresh["value"].to_numpy().astype(float), latched
    )


def _rate(rule: RateRule, ctx: RuleContext, latched: set[str]) -> Outcome:
    """(latest - first in the window) / elapsed, scaled to `per`. Needs samples spanning
    at least half the window so that two jittery readings a second apart do not count."""
    frame = ctx.select(ctx.window_edges(rule.metric, rule.window), rule.select)
    frame = frame.with_columns(
        span_s=(pl.col("t1") - pl.col("t0")).dt.total_microseconds() / 1e6
    ).filter(pl.col("span_s") >= rule.window / 2)
    rate = ((frame["v1"] - frame["v0"]) / frame["span_s"] * rule.per).to_numpy()
    return _condition(rule, ctx, frame["device_id"].to_list(), rate.astype(float), latched)


def _absence(rule: AbsenceRule, ctx: RuleContext, latched: set[str]) -> Outcome:
    """Silent devices. For `after` after the engine starts nothing fires: a restarted
    twin has old data until the collectors' next readings arrive."""
    if (ctx.now - ctx.started_at).total_seconds() < rule.after:
        return Outcome(unknown=set(latched))
    frame = ctx.select(ctx.last_seen(rule.metric), rule.select)
    age = ((ctx.now - frame["read_time"]).dt.total_microseconds() / 1e6).to_numpy()
    silent = (age > rule.after) & (age <= rule.forget_after)
    out = Outcome()
    ids = frame["device_id"].to_list()
    topo = ctx.topology
    if rule.by:
        groups: dict[str, list[int]] = {}
        for i in np.flatnonzero(silent):
            groups.setdefault(_series_key(topo.labels_for(ids[i]), rule.by), []).append(i)
        for key, members in groups.items():
            j = members[int(np.argmax(age[members]))]
            labels = {k: v for k, v in topo.labels_for(ids[j]).items() if k in rule.by}
            out.hits.append(Hit(key, labels, float(age[j]), {"count": len(members)}))
        return out
    for i in np.flatnonzero(silent):
        since = frame["read_time"][int(i)] + timedelta(seconds=rule.after)
        out.hits.append(Hit(ids[i], topo.labels_for(ids[i]), float(age[i]), {}, since))
    return out


def _event_ok(rule: EventRule, attrs: dict) -> bool:
    if isinstance(rule, XidRule):
        code = attrs.get("xid", attrs.get("code"))
        try:
            if int(code) not in rule.codes:
                return False
        except (TypeError, ValueError):
            return False
    return all(attrs.get(k) in accepted for k, accepted in rule.where.items())


def _events(rule: EventRule, ctx: RuleContext) -> Outcome:
    """Active while a matching event is younger than `resolve_after`; with `by`, one
    alert per group (a pump failure: one per loop, whichever pump reported)."""
    frame = ctx.events([e.value for e in rule.events], rule.resolve_after)
    groups: dict[str, Hit] = {}
    topo = ctx.topology
    for t, dev, message, attrs in frame.select(
        "read_time", "device_id", "message", "attrs"
    ).iter_rows():
        if not ctx.matches(dev, rule.select) or not _event_ok(rule, orjson.loads(attrs or "{}")):
            continue
        labels = topo.labels_for(dev)
        key = _series_key(labels, rule.by) if rule.by else dev
        hit = groups.get(key)
        if hit is None:
            shown = {k: v for k, v in labels.items() if k in rule.by} if rule.by else labels
            groups[key] = Hit(
                key, shown, 1.0, {"message": message or "", "device_id": dev}, since=t
            )
        else:
            hit.value += 1
            hit.context["message"] = message or hit.context["message"]
    for hit in groups.values():
        hit.context["count"] = int(hit.value)
    return Outcome(hits=list(groups.values()))


def _leak(rule: LeakRule, ctx: RuleContext, latched: set[str]) -> Outcome:
    """Leak events, or a fresh `leak_detected` reading >= 1 from cooling telemetry."""
    out = _events(rule, ctx)
    frame = ctx.select(ctx.latest("leak_detected"), rule.select).filter(
        (pl.col("value") >= 1)
        & (pl.col("read_time") >= ctx.now - timedelta(seconds=rule.stale_after))
    )
    have = {h.key for h in out.hits}
    for dev, value in frame.select("device_id", "value").iter_rows():
        labels = ctx.topology.labels_for(dev)
        key = _series_key(labels, rule.by) if rule.by else dev
        if key not in have:
            have.add(key)
            shown = {k: v for k, v in labels.items() if k in rule.by} if rule.by else labels
            out.hits.append(
                Hit(
                    key,
                    shown,
                    float(value),
                    {"message": "leak sensor", "device_id": dev, "count": 1},
                )
            )
    return out


def _provider(rule: Any, ctx: RuleContext, latched: set[str]) -> Outcome:
    """anomaly_score, failure_risk, heat_balance: thresholds over provider values."""
    name = {
        "anomaly_score": "anomaly_score",
        "failure_risk": "failure_risk",
        "heat_balance": "heat_balance_residual",
    }[rule.kind]
    fn = getattr(ctx.providers, name)
    if fn is None:
        return Outcome(unknown=set(latched), inactive=f"no {name} provider configured")
    values = dict(fn(ctx.now))
    sel = getattr(rule, "select", None)
    ids = [k for k in values if sel is None or ctx.matches(k, sel)]
    arr = np.array([float(values[k]) for k in ids], dtype=float)
    if isinstance(rule, HeatBalanceRule) and rule.absolute:
        arr = np.abs(arr)
    return _condition(rule, ctx, ids, arr, latched)


def _pue_regression(rule: PueRegressionRule, ctx: RuleContext, latched: set[str]) -> Outcome:
    fn = ctx.providers.pue_interval
    if fn is None:
        return Outcome(unknown=set(latched), inactive="no pue_interval provider configured")
    split = ctx.now - timedelta(seconds=rule.window)
    current = fn(split, ctx.now)
    baseline = fn(split - timedelta(seconds=rule.baseline), split)
    key = ctx.topology.site_id
    if current is None or baseline is None:
        return Outcome(unknown=set(latched))
    increase = current - baseline
    clear = rule.max_increase if rule.clear_increase is None else rule.clear_increase
    active = increase > (clear if key in latched else rule.max_increase)
    if not active:
        return Outcome()
    return Outcome(
        hits=[
            Hit(
                key,
                {"site": key},
                float(current),
                {"baseline": baseline, "increase": increase, "threshold": rule.max_increase},
            )
        ]
    )
