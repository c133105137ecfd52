"""What rule kinds share when they evaluate: `Outcome`, `Hit` and the hysteresis of
threshold-like conditions (vectorized over devices).

Each kind's `evaluate` (twin/alerts/kinds/) returns `Outcome(hits, unknown)`: `hits` are
series (one device, or one group when the rule aggregates `by` topology labels) whose
condition holds; `unknown` are series that are firing but cannot be judged now (stale
data, missing provider), whose state must not change. Python only loops over series
that are firing or about to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from twin.alerts.context import RuleContext
from twin.alerts.rules import ConditionRule

_CMP: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {  # Any: scalar or per series
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


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


def series_key(labels: dict[str, str], by: list[str]) -> str:
    return ",".join(f"{k}={labels.get(k, '')}" for k in by)


def by_labels(labels: dict[str, str], by: list[str] | None) -> dict[str, str]:
    """The labels an alert of a `by` group carries (all of the device's without `by`)."""
    return {k: v for k, v in labels.items() if k in by} if by else labels


def condition(
    rule: ConditionRule,
    ctx: RuleContext,
    ids: list[str],
    values: np.ndarray,
    latched: set[str],
    scale: np.ndarray | None = None,
) -> Outcome:
    """Hysteresis: a series not firing needs `op value`; a firing one stays while
    `op clear` holds. With `by`, a group is active if any member is. `scale` (per
    series) multiplies value and clear: thresholds relative to a site attribute."""
    k = np.ones(len(ids)) if scale is None else np.asarray(scale, dtype=float)
    fire = _CMP[rule.op](values, rule.value * k)
    keep = _CMP[rule.op](values, rule.clear_value * k)
    out = Outcome()

    shared: dict[str, Any] = {"threshold": rule.value, "clear": rule.clear_value}

    def extra(i: int) -> dict[str, Any]:
        if scale is None:
            return shared
        return {"threshold": float(rule.value * k[i]), "clear": float(rule.clear_value * k[i])}

    topo = ctx.topology
    if not rule.by:
        held = (
            np.isin(np.asarray(ids, dtype=object), list(latched))
            if latched
            else np.zeros(len(ids), dtype=bool)
        )
        active = np.where(held, keep, fire)
        for i in np.flatnonzero(active):
            dev = ids[int(i)]
            out.hits.append(Hit(dev, topo.labels_for(dev), float(values[i]), extra(int(i))))
        out.unknown = latched - set(ids)
        return out
    worst = np.argmax if rule.op in (">", ">=") else np.argmin
    groups: dict[str, list[int]] = {}
    seen: set[str] = set()
    for n, dev in enumerate(ids):
        key = series_key(topo.labels_for(dev), rule.by)
        seen.add(key)
        if fire[n] or keep[n]:
            groups.setdefault(key, []).append(n)
    for key, members in groups.items():
        idx = np.asarray(members)
        if fire[idx].any() or (key in latched and keep[idx].any()):
            j = int(idx[worst(values[idx])])
            out.hits.append(
                Hit(
                    key,
                    by_labels(topo.labels_for(ids[j]), rule.by),
                    float(values[j]),
                    {**extra(j), "count": int(fire[idx].sum()), "device_id": ids[j]},
                )
            )
    out.unknown = latched - seen
    return out
