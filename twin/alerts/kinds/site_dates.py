"""Kinds over the site file itself: `due_date` (a maintenance date coming up)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from twin.alerts.conditions import Hit, Outcome
from twin.alerts.context import RuleContext
from twin.alerts.rules import RuleBase, Selector, rule_kind
from twin.alerts.yaml_files import Duration


@rule_kind
class DueDateRule(RuleBase):
    """A date attribute of a device from the site file (e.g. a UPS battery's
    `replace_by`) that is within `ahead` of now, or past. `{value}` is the days left
    (negative once overdue); it resolves when the site file moves the date."""

    kind: Literal["due_date"]
    select: Selector = Field(default_factory=Selector)
    attribute: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="an ISO date attribute")
    ahead: Duration = Field(0.0, ge=0, description="fire this long before the date")

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        out = Outcome()
        today = ctx.now.date()
        for device, attrs in ctx.topology.attributes.items():
            raw = attrs.get(self.attribute)
            if not isinstance(raw, str) or not ctx.matches(device, self.select):
                continue
            try:
                due = date.fromisoformat(raw)
            except ValueError:
                continue  # not a date: the site model writes ISO dates only
            days_left = (due - today).days
            if days_left * 86400.0 <= self.ahead:
                labels = ctx.topology.labels_for(device)
                out.hits.append(Hit(device, labels, float(days_left), {"due": raw}))
        return out
