"""Scenarios (issue 26): timed fault sequences for a simulated site, kept as TOML files.

A scenario file (`dctwin/scenarios/NAME.toml`, format in docs/scenarios.md) lists faults
with an offset from the moment the scenario starts. It becomes a fault spec of the
simulator (docs/simulator.md) with `onset` = that offset, and reaches the simulated site
on the Kafka topic `sim.control` (domain/topics.py), which the `simulated` collector
source reads when its `control_topic` is set. `ScenarioRunner` is what `dctwin serve`
hands the API (`POST /v1/scenarios/{name}/run`) on a simulated site.
"""

from __future__ import annotations

import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.scenarios import ScenarioError, ScenarioInfo, UnknownScenarioError
from domain.site import Site
from simulator.faults import FAULT_TYPES, FaultSpecError, parse_duration, parse_faults
from simulator.layout import SiteLayout

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_SCENARIO = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# which fault parameter a scenario's `duration` / `severity` sets, by what the kind has
_DURATION_KEYS = ("duration", "fail_after", "precursor")
_SEVERITY_KEYS = ("severity", "depth")


class ScenarioFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: str = Field(description="offset after the scenario starts: 90s, 2m, 1h")
    kind: str = Field(description="a fault type of simulator/faults.py")
    device: str = Field(description="device id of the site, or 'any'")
    severity: float | None = Field(None, ge=0)
    duration: str | None = None
    params: dict[str, float | str] = Field(default_factory=dict)


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    fault: list[ScenarioFault] = Field(min_length=1)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: list[ScenarioFault]
    path: Path

    def spec(self) -> str:
        """The simulator fault spec, onsets relative to the scenario's start."""
        items = []
        for i, f in enumerate(self.faults):
            where = f"{self.path.name}: fault {i + 1} ({f.kind})"
            kind = FAULT_TYPES.get(f.kind)
            if kind is None:
                raise ScenarioError(f"{where}: unknown fault kind (known: {sorted(FAULT_TYPES)})")
            params: dict[str, str] = {"onset": f"{parse_duration(f.at, where + ': at'):g}"}
            if f.duration is not None:
                key = next((k for k in _DURATION_KEYS if k in kind.defaults), None)
                if key is None:
                    raise ScenarioError(f"{where}: this kind takes no duration")
                params[key] = f"{parse_duration(f.duration, where + ': duration'):g}"
            if f.severity is not None:
                key = next((k for k in _SEVERITY_KEYS if k in kind.defaults), None)
                if key is None:
                    raise ScenarioError(f"{where}: this kind takes no severity")
                params[key] = f"{f.severity:g}"
            params.update({k: str(v) for k, v in f.params.items()})
            items.append(f"{f.kind}@{f.device}:" + ",".join(f"{k}={v}" for k, v in params.items()))
        return "\n".join(items)

    def info(self) -> ScenarioInfo:
        return ScenarioInfo(
            name=self.name,
            description=self.description,
            faults=[
                {"at": f.at, "kind": f.kind, "device": f.device, "duration": f.duration}
                for f in self.faults
            ],
        )


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
        doc = ScenarioFile.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{path.name}: {loc}: {first['msg']}") from exc
    return Scenario(path.stem, doc.description, doc.fault, path)


def scenario_names(directory: Path = SCENARIO_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml") if _NAME.match(p.stem))


def find_scenario(name: str, directory: Path = SCENARIO_DIR) -> Scenario:
    """A scenario by name, or a path to a scenario file."""
    as_path = Path(name)
    if as_path.suffix == ".toml" and as_path.is_file():
        return load_scenario(as_path)
    if not _NAME.match(name) or not (directory / f"{name}.toml").is_file():
        raise UnknownScenarioError(
            f"no scenario {name!r} (known: {', '.join(scenario_names(directory)) or 'none'})"
        )
    return load_scenario(directory / f"{name}.toml")


def check_against_site(scenario: Scenario, site: Site) -> str:
    """The scenario's spec, checked against the site (devices exist, kinds fit them)."""
    spec = scenario.spec()
    try:
        parse_faults(spec, SiteLayout(site), 0.0)
    except FaultSpecError as exc:
        raise ScenarioError(f"{scenario.path.name}: {exc}") from exc
    return spec


def control_message(scenario: str, spec: str) -> bytes:
    return orjson.dumps({"scenario": scenario, "faults": spec, "sent_ms": int(time.time() * 1e3)})


class ScenarioRunner:
    """Plays scenarios on the simulated site behind a Kafka cluster (the API's runner)."""

    def __init__(
        self, site: Site, bootstrap: str, topic: str, directory: Path = SCENARIO_DIR
    ) -> None:
        self.site, self.bootstrap, self.topic, self.directory = site, bootstrap, topic, directory
        self._producer: KafkaProducer | None = None

    def list(self) -> list[ScenarioInfo]:
        out = []
        for name in scenario_names(self.directory):
            try:
                out.append(find_scenario(name, self.directory).info())
            except ScenarioError as exc:  # a broken file is listed with its error
                out.append(ScenarioInfo(name=name, description=f"invalid: {exc}", faults=[]))
        return out

    def run(self, name: str) -> dict[str, Any]:
        if not _NAME.match(name):  # the API names scenarios, never paths
            raise UnknownScenarioError(f"no scenario {name!r}")
        scenario = find_scenario(name, self.directory)
        spec = check_against_site(scenario, self.site)
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        self._producer.send(self.topic, control_message(name, spec)).get(timeout=10)
        return {"scenario": name, "faults": len(scenario.faults), "spec": spec}

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
