"""YAML loading that keeps line numbers, durations, and Alertmanager-style label matchers.

Errors in rule and receiver files name the file and line so an operator can fix them
without guessing: `rules.yaml:42: rules[3].for: invalid duration '5 minutes'`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, InstanceOf, ValidationError

LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """A configuration file is invalid; `line` is 1-based (None when unknown)."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.message = message


# -- YAML with line numbers -------------------------------------------------------------

Path_ = tuple[str | int, ...]


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document. Returns the data and a map from key path to line number."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Path_, int] = {}
        _index(node, (), lines, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            source, mark.line + 1 if mark else None, f"not valid YAML: {exc.problem or exc.context}"
        ) from exc
    finally:
        loader.dispose()
    return data, lines


def _index(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:  # safe_load would silently keep the last one
                raise ConfigError(
                    source, line, f"duplicate key {key!r} (first on line {seen[key]})"
                )
            seen[key] = line
            lines[path + (key,)] = line
            _index(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), lines, source)


def line_of(lines: Mapping[Path_, int], loc: tuple[str | int, ...]) -> tuple[int | None, str]:
    """Deepest known line for a pydantic error location, and the location as a dotted path.
    Location parts that are not keys in the document (union tags) are skipped."""
    path: Path_ = ()
    shown: list[str] = []
    for part in loc:
        if path + (part,) in lines:
            path = path + (part,)
            shown.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return lines.get(path), "".join(shown).lstrip(".") or "(top level)"


def validation_error(exc: ValidationError, source: str, lines: Mapping[Path_, int]) -> ConfigError:
    """The first error with its line, the others appended (each with its own line)."""
    parts: list[tuple[int | None, str]] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"].startswith("union_tag"):  # point at the `kind:` line itself
            loc += ("kind",)
        line, where = line_of(lines, loc)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append((line, f"{where}: {msg}"))
    first_line, first = parts[0]
    rest = "; ".join(f"line {ln}: {m}" for ln, m in parts[1:])
    return ConfigError(source, first_line, first + (f" (also {rest})" if rest else ""))


# -- durations --------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Any) -> float:
    """`90`, `90s`, `5m`, `1h30m`, `500ms`, `7d` -> seconds (Prometheus-style units)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h")
    text = value.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h30m, 7d")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]


def format_duration(seconds: float) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


# -- matchers ---------------------------------------------------------------------------

_MATCHER = re.compile(
    r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|'
    r"([^\s\"]*))\s*$"
)


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager label matcher. Regexes are anchored; a missing label is ""."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True
    _re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not LABEL_NAME.match(self.name):
            raise ValueError(f"invalid label name {self.name!r}")
        if self.is_regex:
            try:
                object.__setattr__(self, "_re", re.compile(f"^(?:{self.value})$"))
            except re.error as exc:
                raise ValueError(f"invalid regex {self.value!r} for {self.name}: {exc}") from exc

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        hit = bool(self._re.match(actual)) if self._re is not None else actual == self.value
        return hit == self.is_equal

    def __str__(self) -> str:
        op = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}[
            (self.is_regex, self.is_equal)
        ]
        return f'{self.name}{op}"{self.value}"'

    def to_api(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.is_regex,
            "isEqual": self.is_equal,
        }

    @classmethod
    def parse(cls, raw: Any) -> Matcher:
        """`name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`, or the v2 API object
        `{name, value, isRegex, isEqual}`."""
        if isinstance(raw, Matcher):
            return raw
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"name", "value", "isRegex", "isEqual"}
            if unknown or "name" not in raw or "value" not in raw:
                raise ValueError(
                    f"matcher object needs name and value (isRegex, isEqual "
                    f"optional), got keys {sorted(raw)}"
                )
            return cls(
                str(raw["name"]),
                str(raw["value"]),
                bool(raw.get("isRegex", False)),
                bool(raw.get("isEqual", True)),
            )
        if not isinstance(raw, str):
            raise ValueError(f'invalid matcher {raw!r}: use e.g. alertname="GpuHot"')
        m = _MATCHER.match(raw)
        if not m:
            raise ValueError(
                f'invalid matcher {raw!r}: use name="value", name!="value", '
                'name=~"regex" or name!~"regex"'
            )
        name, op, quoted, bare = m.groups()
        value = bytes(quoted, "utf-8").decode("unicode_escape") if quoted is not None else bare
        return cls(name, value, is_regex="~" in op, is_equal=op[0] != "!")


def matches_all(matchers: list[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


MatcherList = Annotated[
    list[InstanceOf[Matcher]], BeforeValidator(lambda v: [Matcher.parse(x) for x in (v or [])])
]
