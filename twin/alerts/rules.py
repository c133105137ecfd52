"""Alert rules: YAML schema (pydantic), validation with line numbers, and the default set.

A rules file has `settings`, `rules` and `inhibit_rules` (and optionally `receivers`,
see receivers.py). Each rule has a `kind`; see docs/alerts.md for every field.

This module holds what every rule shares (`RuleBase`, `ConditionRule`, `Selector`...) and
the registry of rule kinds. A kind is one class in `twin/alerts/kinds/`: its pydantic
model and its `evaluate` together, registered with `@rule_kind`. A rules file naming a
kind that is not registered is rejected at load time, with its line and the known kinds.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from domain.contract import METRICS
from twin.alerts.yaml_files import (
    LABEL_NAME,
    ConfigError,
    Duration,
    MatcherList,
    parse_yaml,
    validation_error,
)

if TYPE_CHECKING:
    from twin.alerts.conditions import Outcome
    from twin.alerts.context import RuleContext

DEFAULT_RULES = "default_rules.yaml"
# one markdown runbook per default rule, <RuleName>.md, package data beside the rules
RUNBOOK_DIR = Path(__file__).resolve().parent / "runbooks"
ALL_METRICS = {m for per_kind in METRICS.values() for m in per_kind}
RESERVED_LABELS = {"alertname", "severity"}
# labels the topology attaches (see grouping.py) and rules may aggregate `by`
TOPOLOGY_LABELS = ("site", "hall", "row", "rack", "node", "cdu", "pdu", "device_id", "device_class")
OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
# equality, for enumerated readings (a UPS's battery_test_result == 3, doneError)
OPS.update({"eq": "==", "ne": "!=", "==": "==", "!=": "!="})

Op = Annotated[Literal[">", ">=", "<", "<=", "==", "!="], Field(description="comparison")]


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


@dataclass(frozen=True)
class Reads:
    """What a rule reads from the store, so that one query per table serves every rule."""

    metrics: frozenset[str] = frozenset()
    event_kinds: frozenset[str] = frozenset()
    event_lookback_s: float = 0.0


class RuleBase(_Strict):
    """Fields every rule has. A rule kind subclasses it (or `ConditionRule`), narrows
    `kind` to a `Literal`, implements `evaluate` and is registered with `@rule_kind`."""

    kind: str
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

    def evaluate(self, ctx: RuleContext, latched: set[str]) -> Outcome:
        """The series whose condition holds now (see conditions.Outcome). `latched` are
        the series keys of this rule's firing alerts."""
        raise NotImplementedError(f"rule kind {self.kind!r} has no evaluate()")

    def reads(self) -> Reads:
        """Metrics and event kinds `evaluate` reads through the context (none by default:
        it may still read them, uncached)."""
        return Reads()


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
            if self.op in ("==", "!=") and self.clear != self.value:
                raise ValueError(f"clear has no meaning for op {self.op!r}: leave it out")
        return self

    @property
    def clear_value(self) -> float:
        return self.value if self.clear is None else self.clear


# -- the registry of rule kinds --------------------------------------------------------

_KINDS: dict[str, type[RuleBase]] = {}
K = TypeVar("K", bound=RuleBase)


def rule_kind(cls: type[K]) -> type[K]:
    """Register a rule kind: the model's `kind: Literal["name"]` names it, and the class
    must implement `evaluate`. Mistakes fail at import, not at evaluation."""
    annotation = cls.model_fields["kind"].annotation
    names = get_args(annotation)
    if get_origin(annotation) is not Literal or len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(f"{cls.__name__}.kind must be Literal['<kind name>'], got {annotation}")
    kind = names[0]
    if kind in _KINDS and _KINDS[kind] is not cls:
        raise TypeError(
            f"rule kind {kind!r} registered twice: {_KINDS[kind].__name__}, {cls.__name__}"
        )
    if cls.evaluate is RuleBase.evaluate:
        raise TypeError(f"rule kind {kind!r} ({cls.__name__}) does not implement evaluate()")
    _KINDS[kind] = cls
    return cls


def rule_kinds() -> dict[str, type[RuleBase]]:
    """Every registered kind -> its rule model."""
    # the kinds import this module for their base classes, so they are loaded here
    import twin.alerts.kinds  # noqa: F401

    return dict(sorted(_KINDS.items()))


def _rule_of_kind(data: Any) -> Any:
    """A rule mapping -> the model of its kind. Unknown kinds are reported like pydantic's
    own union tags, so the error names the `kind:` line (see yaml_files.validation_error)."""
    if not isinstance(data, dict):
        return data
    kinds = rule_kinds()
    known = ", ".join(kinds)
    if "kind" not in data:
        raise PydanticCustomError(
            "union_tag_not_found", "{message}", {"message": f"rule has no kind (one of: {known})"}
        )
    kind = data["kind"]
    model = kinds.get(kind) if isinstance(kind, str) else None
    if model is None:
        close = difflib.get_close_matches(str(kind), list(kinds), n=1)
        raise PydanticCustomError(
            "union_tag_invalid",
            "{message}",
            {
                "message": f"unknown rule kind {kind!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; known kinds: {known}"
            },
        )
    return model.model_validate(data)


# any registered kind; serialized with its own kind's fields
Rule = Annotated[SerializeAsAny[RuleBase], BeforeValidator(_rule_of_kind)]


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
        "",
        description="fills {runbook_base} in annotations; empty: the API's own runbooks, "
        "{external_url}/runbooks (issue 26)",
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
