"""Collector daemon configuration (TOML, validated by pydantic). Example with every key:
deploy/collector.example.toml; reference: docs/collector-daemon.md."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.site import load_toml_model

# keys of a [[sources]] table that belong to the daemon, not to the source's own config
DAEMON_SOURCE_KEYS = ("deadline_s", "interval_s")


class KafkaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: str = Field("127.0.0.1:9092", description="overridden by KAFKA_BOOTSTRAP")
    compression: Literal["zstd", "lz4", "gzip", "none"] = "zstd"
    # Bounds on how long one send may take before its batches go to the spool instead.
    max_block_ms: int = Field(
        2_000, ge=100, le=120_000, description="wait for metadata / buffer space / bootstrap"
    )
    request_timeout_ms: int = Field(5_000, ge=100, le=300_000)
    delivery_timeout_ms: int = Field(
        10_000, ge=200, le=600_000, description="give up on a batch after this long"
    )
    linger_ms: int = Field(5, ge=0, le=10_000)

    @model_validator(mode="after")
    def _delivery_covers_request(self) -> KafkaConfig:
        if self.delivery_timeout_ms < self.request_timeout_ms + self.linger_ms:
            raise ValueError(
                "delivery_timeout_ms must be >= request_timeout_ms + linger_ms "
                f"({self.request_timeout_ms + self.linger_ms})"
            )
        return self


class SpoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dir: Path | None = Field(None, description="default: var/spool/<collector name>")
    max_bytes: int = Field(256 << 20, ge=4096, description="bound on the spool's disk use")
    segment_bytes: int = Field(8 << 20, ge=1024, le=1 << 30)
    fsync: bool = Field(True, description="fsync every append and cursor move")
    compress: bool = Field(True, description="zstd-compress spooled batches")
    replay_backoff_initial_s: float = Field(0.5, gt=0, le=600)
    replay_backoff_max_s: float = Field(10.0, gt=0, le=3600)
    replay_chunk_records: int = Field(256, ge=1, le=100_000)


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="/metrics and /healthz; 0 = disabled")


class CollectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="collector instance name, unique per site")
    site: str = Field(min_length=1)
    interval_s: float = Field(1.0, gt=0, le=3600)
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="default per-source read deadline; default 0.8 * interval_s",
    )
    shutdown_timeout_s: float = Field(
        15.0, gt=0, le=600, description="SIGTERM: time to flush to Kafka or spool"
    )
    error_event_interval_s: float = Field(
        60.0, ge=0, description="repeat a failing source's source_error event this often"
    )
    kafka: KafkaConfig = KafkaConfig()
    spool: SpoolConfig = SpoolConfig()
    metrics: MetricsConfig = MetricsConfig()
    sources: list[dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _deadlines_fit_interval(self) -> CollectorConfig:
        if self.deadline_s is not None and self.deadline_s > self.interval_s:
            raise ValueError(
                f"deadline_s: {self.deadline_s} s is longer than interval_s ({self.interval_s} s)"
            )
        for i, raw in enumerate(self.sources):
            if "interval_s" in raw:
                every = raw["interval_s"]
                if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
                    raise ValueError(
                        f"sources[{i}].interval_s: must be a number > 0, got {every!r}"
                    )
                ticks = every / self.interval_s
                if ticks < 1 or abs(ticks - round(ticks)) > 1e-6:
                    raise ValueError(
                        f"sources[{i}].interval_s: {every} s must be a whole multiple of "
                        f"interval_s ({self.interval_s} s): the daemon reads on its own ticks"
                    )
            if "deadline_s" not in raw:
                continue
            d = raw["deadline_s"]
            if isinstance(d, bool) or not isinstance(d, int | float) or not d > 0:
                raise ValueError(f"sources[{i}].deadline_s: must be a number > 0, got {d!r}")
            if d > self.interval_s:
                raise ValueError(
                    f"sources[{i}].deadline_s: {d} s is longer than interval_s "
                    f"({self.interval_s} s)"
                )
        send_s = (self.kafka.max_block_ms + self.kafka.delivery_timeout_ms) / 1000
        if self.shutdown_timeout_s < send_s + 2:
            raise ValueError(
                f"shutdown_timeout_s: {self.shutdown_timeout_s} s is too short for a "
                f"send in flight to finish: needs >= {send_s + 2:g} s "
                "(kafka.max_block_ms + kafka.delivery_timeout_ms + 2 s)"
            )
        if self.spool.replay_backoff_max_s < self.spool.replay_backoff_initial_s:
            raise ValueError(
                "spool.replay_backoff_max_s: must be >= spool.replay_backoff_initial_s"
            )
        return self

    def bootstrap(self) -> str:
        return os.environ.get("KAFKA_BOOTSTRAP") or self.kafka.bootstrap

    def spool_dir(self) -> Path:
        return self.spool.dir if self.spool.dir is not None else Path("var/spool") / self.name

    def source_every_ticks(self, raw: dict[str, Any]) -> int:
        """A source with its own `interval_s` (a UPS polled every 10 s beside GPUs read
        every second) is read on every n-th tick of the daemon."""
        if "interval_s" not in raw:
            return 1
        return round(float(raw["interval_s"]) / self.interval_s)

    def source_deadline_s(self, raw: dict[str, Any]) -> float:
        if "deadline_s" in raw:
            return float(raw["deadline_s"])
        return self.deadline_s if self.deadline_s is not None else 0.8 * self.interval_s

    @staticmethod
    def source_table(raw: dict[str, Any]) -> dict[str, Any]:
        """The part of a [[sources]] table the source's own config model validates."""
        return {k: v for k, v in raw.items() if k not in DAEMON_SOURCE_KEYS}


class CollectorConfigError(ValueError):
    pass


def load_collector_config(path: str | Path) -> CollectorConfig:
    return load_toml_model(path, CollectorConfig, CollectorConfigError)
