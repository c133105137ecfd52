"""Alert rules: YAML schema (pydantic), validation with line numbers, and the default set.

A rules file has `settings`, `rules` and `inhibit_rules` (and optionally `receivers`,
see receivers.py). Each rule has a `kind`; see docs/alerts.md for every field.
"""

from __future__ import annotations

import difflib
import string
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from domain.contract import METRICS, EventKind
from twin.alerts.yaml_files import (
    LABEL_NAME,
    ConfigError,
    Duration,
    MatcherList,
    parse_yaml,
    validation_error,
)

DEFAULT_RULES = "default_rules.yaml"
# NVIDIA XIDs that mean a GPU needs attention now: 48 double-bit ECC, 63/64 row remapping,
# 74 NVLink, 79 fallen off the bus, 92/94/95 ECC (contained/uncontained).
CRITICAL_XIDS = (48, 63, 64, 74, 79, 92, 94, 95)
ALL_METRICS = {m for per_kind in METRICS.values() for m in per_kind}
RESERVED_LABELS = {"alertname", "severity"}
# labels the topology attaches (see grouping.py) and rules may aggregate `by`
TOPOLOGY_LABELS = ("site", "hall", "row", "rack", "node", "cdu", "pdu", "device_id", "device_class")
OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}

Op = Annotated[Literal[">", ">=", "<", "<="], Field(description="comparison")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _template_ok(text: str) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f]
    except ValueError as exc:
        raise ValueError(f"invalid template {text!r}: {exc}") from exc
    for f in fields:
        if not LABEL_NAME.match(f.split(".")[0].split("[")[0]):
            raise ValueError(f"invalid template field {{{f}}} in {text!r}")
    return text


class Annotations(BaseModel):
    """`summary` is required; `{label}`, `{value}`, `{threshold}`... are filled in."""

    model_config = ConfigDict(extra="allow")

    summary: str = Field(min_length=1)
    description: str = ""
    runbook_url: str = ""

    @model_validator(mode="after")
    def _templates(self) -> Annotations:
        for key, value in self.as_dict().items():
            if not isinstance(value, str):
                raise ValueError(f"annotation {key!r} must be a string")
            _template_ok(value)
        if self.runbook_url and not self.runbook_url.startswith(
            ("http://", "https://", "{runbook_base}")
        ):
            raise ValueError(f"runbook_url must be an http(s) URL, got {self.runbook_url!r}")
        return self

    def as_dict(self) -> dict[str, str]:
        out = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": self.runbook_url,
            **(self.model_extra or {}),
        }
        return {k: v for k, v in out.items() if v != ""}


class Selector(_Strict):
    """Which devices a rule looks at: by class (from the site model) and/or id glob."""

    device_class: list[str] = Field(default_factory=list)
    device: str | None = Field(None, description="glob over device ids, e.g. sv1/h1/row1/*")

    @field_validator("device_class", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def device_regex(self) -> str | None:
        """The id glob as an anchored regex both Python's re and polars (Rust) accept."""
        return None if self.device is None else glob_regex(self.device)


_REGEX_META = set("\\.^$|?*+()[]{}")


def glob_regex(glob: str) -> str:
    """fnmatch semantics (``*``, ``?``, ``[seq]``, ``[!seq]``; ``*`` crosses ``/``).

    ``fnmatch.translate`` emits ``\\Z`` and atomic groups, which the Rust regex engine
    behind polars rejects, so the translation is done here.
    """
    out, i, n = ["^"], 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif (
            c == "[" and (end := glob.find("]", i + 1 if glob[i : i + 1] in ("!", "]") else i)) > 0
        ):
            body = glob[i:end]
            i = end + 1
            neg = body.startswith("!")
            body = body[1:] if neg else body
            body = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(f"[{'^' if neg else ''}{body}]")
        else:
            out.append("\\" + c if c in _REGEX_META else c)
    out.append("$")
    return "".join(out)


class RuleBase(_Strict):
    name: str = Field(pattern=LABEL_NAME.pattern, description="alertname")
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: Annotations
    for_s: Duration = Field(0.0, alias="for", description="condition must hold this long")
    by: list[str] | None = Field(
        None, description="aggregate devices into one alert per value of these topology labels"
    )
    every: Duration = Field(0.0, description="evaluate at most this often (0: every tick)")
    enabled: bool = True

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not LABEL_NAME.match(k):
                raise ValueError(f"invalid label name {k!r}")
            if k in RESERVED_LABELS:
                raise ValueError(f"label {k!r} is set by the engine; use the rule's name/severity")
        return v

    @field_validator("by")
    @classmethod
    def _by_labels(cls, v: list[str] | None) -> list[str] | None:
        for k in v or []:
            if k not in TOPOLOGY_LABELS:
                raise ValueError(f"by: unknown label {k!r} (one of {list(TOPOLOGY_LABELS)})")
        return v


def _metric_known(metric: str) -> str:
    if metric not in ALL_METRICS:
        close = difflib.get_close_matches(metric, sorted(ALL_METRICS), n=4)
        raise ValueError(
            f"unknown metric {metric!r} (see domain/contract.py METRICS"
            + (f"; similar: {close}" if close else "")
            + ")"
        )
    return metric


MetricName = Annotated[str, AfterValidator(_metric_known)]


class ConditionRule(RuleBase):
    """value `op` threshold fires; once firing it clears only when `op` against `clear`
    no longer holds (hysteresis). `clear` defaults to the threshold."""

    op: Op = ">"
    value: float
    clear: float | None = None

    @field_validator("op", mode="before")
    @classmethod
    def _op_names(cls, v: Any) -> Any:
        return OPS.get(v, v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _clear_side(self) -> ConditionRule:
        if self.clear is not None:
            if self.op in (">", ">=") and self.clear > self.value:
                raise ValueError(
                    f"clear ({self.clear}) must be <= value ({self.value}) for "
                    f"op {self.op!r}: it is where a firing alert resolves"
                )
            if self.op in ("<", "<=") and self.clear < self.value:
                raise ValueError(
                    f"clear ({self.clear}) must be >= value ({self.value}) for op {self.op!r}"
                )
        return self

    @property
    def clear_value(self) -> float:
        return self.value if self.clear is None else self.clear


class ThresholdRule(ConditionRule):
    kind: Literal["threshold"]
    select: Selector = Field(default_factory=Selector)
    metric: MetricName
    stale_after: Duration = Field(120.0, gt=0, description="older readings change nothing")


class RateRule(ConditionRule):
    """Rate of change of a metric over `window`, in units per `per` (default per second)."""

    kind: Literal["rate"]
    select: Selector = Field(default_factory=Selector)
    metric: MetricName
    window: Duration = Field(gt=0)
    per: Duration = Field(1.0, gt=0)


class AbsenceRule(RuleBase):
    """A device (or one of its metrics) not heard from for `after`. Devices silent for
    longer than `forget_after` are considered decommissioned and dropped."""

    kind: Literal["absence"]
    select: Selector = Field(default_factory=Selector)
    metric: MetricName | None = None
    after: Duration = Field(gt=0)
    forget_after: Duration = Field(86400.0, gt=0)


class EventRule(RuleBase):
    """Fires on matching events; resolves `resolve_after` the last one."""

    kind: Literal["event"]
    events: list[EventKind] = Field(min_length=1)
    select: Selector = Field(default_factory=Selector)
    where: dict[str, list[str | int | float | bool]] = Field(
        default_factory=dict, description="attrs filter: attr -> accepted values"
    )
    resolve_after: Duration = Field(900.0, gt=0)


class LeakRule(EventRule):
    """`leak_detected` events, or a `leak_detected` reading >= 1 on cooling telemetry."""

    kind: Literal["leak"]  # type: ignore[assignment]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.leak_detected])
    resolve_after: Duration = Field(300.0, gt=0)
    stale_after: Duration = Field(120.0, gt=0)


class XidRule(EventRule):
    kind: Literal["xid"]  # type: ignore[assignment]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.xid])
    codes: list[int] = Field(default_factory=lambda: list(CRITICAL_XIDS), min_length=1)


class PumpFailedRule(EventRule):
    """One alert per cooling loop (CDU), whatever pump of it reported."""

    kind: Literal["pump_failed"]  # type: ignore[assignment]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.pump_failed])
    by: list[str] | None = Field(default_factory=lambda: ["cdu"])


class PsuFailedRule(EventRule):
    kind: Literal["psu_failed"]  # type: ignore[assignment]
    events: list[EventKind] = Field(default_factory=lambda: [EventKind.psu_fault])


class AnomalyScoreRule(ConditionRule):
    """Anomaly score per device from the anomaly provider (0 normal .. 1 anomalous)."""

    kind: Literal["anomaly_score"]
    op: Op = ">="
    select: Selector = Field(default_factory=Selector)


class FailureRiskRule(ConditionRule):
    """Predicted failure probability per device from the failure-risk provider."""

    kind: Literal["failure_risk"]
    op: Op = ">="
    select: Selector = Field(default_factory=Selector)


class HeatBalanceRule(ConditionRule):
    """|heat removed - IT power| / IT power per cooling loop, from the heat-balance
    provider. A persistent residual means a sensor fault, bypass, leak or fouling."""

    kind: Literal["heat_balance"]
    absolute: bool = True


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


Rule = Annotated[
    ThresholdRule
    | RateRule
    | AbsenceRule
    | EventRule
    | LeakRule
    | XidRule
    | PumpFailedRule
    | PsuFailedRule
    | AnomalyScoreRule
    | FailureRiskRule
    | HeatBalanceRule
    | PueRegressionRule,
    Field(discriminator="kind"),
]
PROVIDER_OF = {
    "anomaly_score": "anomaly_score",
    "failure_risk": "failure_risk",
    "heat_balance": "heat_balance_residual",
    "pue_regression": "pue_interval",
}


class InhibitRule(_Strict):
    """Alertmanager semantics: a firing source mutes targets whose `equal` labels have the
    same values. Topology labels (cdu, pdu, rack) make this topology-aware."""

    source_matchers: MatcherList = Field(min_length=1)
    target_matchers: MatcherList = Field(min_length=1)
    equal: list[str] = Field(default_factory=list)


class FlapSettings(_Strict):
    """An alert that changed state `max_transitions` times within `window` is flapping:
    it stays firing until its condition has been clear for `hold`."""

    window: Duration = Field(900.0, gt=0)
    max_transitions: int = Field(4, ge=2)
    hold: Duration = Field(600.0, gt=0)


class EngineSettings(_Strict):
    flapping: FlapSettings = Field(default_factory=FlapSettings)
    runbook_base: str = Field(
        "https://runbooks.example.invalid/dctwin", description="fills {runbook_base} in annotations"
    )


class RulesFile(_Strict):
    settings: EngineSettings = Field(default_factory=EngineSettings)
    rules: list[Rule] = Field(default_factory=list)
    inhibit_rules: list[InhibitRule] = Field(default_factory=list)
    receivers: list[dict[str, Any]] = Field(default_factory=list)  # validated by receivers.py


def parse_rules(text: str, source: str = "<rules>") -> tuple[RulesFile, dict]:
    """Validate a rules document; ConfigError names the line. Returns the model and the
    line map (receivers.py uses it to report its own errors)."""
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, 1, "a rules file is a mapping with rules: [...]")
    try:
        model = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, lines) from exc
    first: dict[str, int] = {}
    for i, rule in enumerate(model.rules):  # names are alertnames: they must be unique
        if rule.name in first:
            raise ConfigError(
                source,
                lines.get(("rules", i, "name")),
                f"rules[{i}].name: duplicate rule name {rule.name!r} (first "
                f"as rules[{first[rule.name]}])",
            )
        first[rule.name] = i
    return model, lines


def load_rules(path: str | Path | None = None) -> RulesFile:
    """A rules file, or the packaged default GPU data-center rule set when None."""
    if path is None:
        text = resources.files("twin.alerts").joinpath(DEFAULT_RULES).read_text()
        return parse_rules(text, DEFAULT_RULES)[0]
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), None, f"cannot read rules file: {exc.strerror}") from exc
    return parse_rules(text, str(p))[0]
