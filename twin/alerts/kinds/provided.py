"""Kinds over values other parts of the twin compute, read through
`twin.alerts.context.Providers`: `anomaly_score`, `anomaly_incident`, `failure_risk`,
`heat_balance`, `pue_regression`. Without its provider a rule is reported inactive, never silently
quiet."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from twin.alerts.conditions import Hit, Outcome, condition
from twin.alerts.context import RuleContext, ScoreProvider
from twin.alerts.rules import ConditionRule, Op, RuleBase, Selector, rule_kind
from twin.alerts.yaml_files import Duration


class ScoreRule(ConditionRule):
    """A threshold (with hysteresis) over an entity -> value provider."""

    provider: ClassVar[str]  # the Providers field it reads

    def selector(self) -> Selector | None:
        return None

    def transform(self, values: np.ndarray) -> np.ndarray:
        return values

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        fn: ScoreProvider | None = getattr(ctx.providers, self.provider)
        if fn is None:
            return Outcome(unknown=set(latched), inactive=f"no {self.provider} provider configured")
        values = dict(fn(ctx.now))
        sel = self.selector()
        ids = [k for k in values if sel is None or ctx.matches(k, sel)]
        arr = np.array([float(values[k]) for k in ids], dtype=float)
        return condition(self, ctx, ids, self.transform(arr), latched)


@rule_kind
class AnomalyScoreRule(ScoreRule):
    """Anomaly score per device from the anomaly provider (0 normal .. 1 anomalous)."""

    provider: ClassVar[str] = "anomaly_score"
    kind: Literal["anomaly_score"]
    op: Op = ">="
    select: Selector = Field(default_factory=Selector)

    def selector(self) -> Selector | None:
        return self.select


# -- issue 20: one alert per anomaly incident -----------------------------------------------


@rule_kind
class AnomalyIncidentRule(RuleBase):
    """One alert per open anomaly incident (alarms grouped by topology and time), labelled
    with its root-cause device; it resolves when the incident does. `select` filters on
    the root-cause device, `min_score` / `min_devices` on the incident."""

    kind: Literal["anomaly_incident"]
    select: Selector = Field(default_factory=Selector)
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="peak device score")
    min_devices: int = Field(1, ge=1, description="devices alarming in the incident")

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        fn = ctx.providers.anomaly_incidents
        if fn is None:
            return Outcome(
                unknown=set(latched), inactive="no anomaly_incidents provider configured"
            )
        hits = []
        for inc in fn(ctx.now):
            root = inc["root_cause"]
            if root is None or not ctx.matches(root["device_id"], self.select):
                continue
            # once firing, an incident's alert stays until the incident resolves
            if inc["id"] not in latched and (
                inc["score"] < self.min_score or inc["devices"] < self.min_devices
            ):
                continue
            dev = root["device_id"]
            hits.append(
                Hit(
                    inc["id"],
                    ctx.topology.labels_for(dev),
                    float(inc["score"]),
                    {
                        "incident_id": inc["id"],
                        "device_id": dev,
                        "root_metric": root["metric"] or "-",
                        "root_component": root["component"] or "-",
                        "devices": inc["devices"],
                        "incident_severity": inc["severity"],
                    },
                    since=inc["opened"],
                )
            )
        return Outcome(hits=hits)


@rule_kind
class FailureRiskRule(ScoreRule):
    """Predicted failure probability per device from the failure-risk provider."""

    provider: ClassVar[str] = "failure_risk"
    kind: Literal["failure_risk"]
    op: Op = ">="
    select: Selector = Field(default_factory=Selector)

    def selector(self) -> Selector | None:
        return self.select


@rule_kind
class HeatBalanceRule(ScoreRule):
    """|heat removed - IT power| / IT power per cooling loop, from the heat-balance
    provider. A persistent residual means a sensor fault, bypass, leak or fouling."""

    provider: ClassVar[str] = "heat_balance_residual"
    kind: Literal["heat_balance"]
    absolute: bool = True

    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.abs(values) if self.absolute else values


@rule_kind
class PueRegressionRule(RuleBase):
    """Energy-based PUE over the last `window` against the PUE over the `baseline` before
    it; fires when it rose by more than `max_increase` (absolute PUE points)."""

    kind: Literal["pue_regression"]
    window: Duration = Field(3600.0, gt=0)
    baseline: Duration = Field(7 * 86400.0, gt=0)
    max_increase: float = Field(gt=0)
    clear_increase: float | None = Field(None, ge=0)
    every: Duration = Field(60.0, description="PUE over hours changes slowly")

    @model_validator(mode="after")
    def _clear(self) -> PueRegressionRule:
        if self.clear_increase is not None and self.clear_increase > self.max_increase:
            raise ValueError("clear_increase must be <= max_increase")
        return self

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        fn = ctx.providers.pue_interval
        if fn is None:
            return Outcome(unknown=set(latched), inactive="no pue_interval provider configured")
        split = ctx.now - timedelta(seconds=self.window)
        current = fn(split, ctx.now)
        baseline = fn(split - timedelta(seconds=self.baseline), split)
        key = ctx.topology.site_id
        if current is None or baseline is None:
            return Outcome(unknown=set(latched))
        increase = current - baseline
        clear = self.max_increase if self.clear_increase is None else self.clear_increase
        active = increase > (clear if key in latched else self.max_increase)
        if not active:
            return Outcome()
        return Outcome(
            hits=[
                Hit(
                    key,
                    {"site": key},
                    float(current),
                    {"baseline": baseline, "increase": increase, "threshold": self.max_increase},
                )
            ]
        )
