"""Collector daemon configuration (TOML, validated by pydantic)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest.site import format_validation_error


class KafkaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: str = Field("127.0.0.1:9092", description="overridden by KAFKA_BOOTSTRAP")
    compression: Literal["zstd", "lz4", "gzip", "none"] = "zstd"


class CollectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="collector instance name, unique per site")
    site: str = Field(min_length=1)
    interval_s: float = Field(1.0, gt=0, le=3600)
    kafka: KafkaConfig = KafkaConfig()
    sources: list[dict[str, Any]] = Field(min_length=1)

    def bootstrap(self) -> str:
        return os.environ.get("KAFKA_BOOTSTRAP") or self.kafka.bootstrap


class CollectorConfigError(ValueError):
    pass


def load_collector_config(path: str | Path) -> CollectorConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CollectorConfigError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CollectorConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return CollectorConfig.model_validate(raw)
    except ValidationError as exc:
        raise CollectorConfigError(f"{path}: {format_validation_error(exc)}") from exc
