"""`dctwin serve`: ingest + twin + API in one process against a given broker.

`Server` builds every service of the process (the twin and its tick, the live view, the
anomaly scorer, the failure-risk table, the part history, the alert engine with its
outbox, the API key store) and is the one place their background jobs start and stop:
`start_ingest()` starts them in order, `stop()` stops them in reverse order and only
then closes the store. It owns the process's `HealthRegistry` (twin/health.py): each
job's probe is registered when the job starts and dropped when it stops, and the API's
`/healthz` and `/readyz` read it (docs/api.md).
Configuration comes only from `Settings` (DCTWIN_* environment variables).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

import uvicorn

from api.app import create_app
from api.feeds import anomalies_feed, incidents_feed, recommendations_feed
from api.http_server import uvicorn_config
from api.keys import KeyStore
from api.live_view import LiveView
from api.metrics import alert_events, kafka_lag_of
from api.rack_scores import anomaly_rack_scorer, failure_rack_scorer
from api.scenarios import PageLogLike
from dctwin.scenario import ScenarioRunner
from dctwin.settings import Settings
from domain.site import Site, load_site
from domain.topics import ensure_topics
from ingest.consumer import Ingestor
from ingest.store import Store
from twin.alerts.providers import twin_providers
from twin.alerts.service import AlertService
from twin.alerts.service import load_config as load_alert_config
from twin.anomaly.service import AnomalyService, AnomalyServiceConfig
from twin.capacity.service import CapacityConfig, CapacityService
from twin.events import EventBus
from twin.failure.service import FailureRiskService
from twin.health import ComponentHealth, HealthRegistry
from twin.optimizer.live import LiveConfig, LiveOptimizer
from twin.optimizer.recommendations import store_opener
from twin.optimizer.shipped import shipped_for  # issue 19/26 (opt-default)
from twin.parts import PartHistory
from twin.periodic import Periodic
from twin.state import Twin
from twin.sustainability import FlexibleLoad, SustainabilityService
from twin.twin_config import TwinConfig
from twin.whatif.service import WhatIfService

log = logging.getLogger(__name__)

# Liveness thresholds (docs/api.md, "Health"): a job is stale when it has had no successful
# round for this long. At least a minute, so one slow round (a big tick, a DuckDB
# checkpoint) is not an outage; anomaly and failure risk catch up and refit in rounds of
# minutes.
MIN_STALE_S = 60.0
MODEL_STALE_S = 900.0
# ingest is stuck when records wait in its partitions and nothing was stored for this long
INGEST_STUCK_S = 120.0
COMPONENTS = (
    "ingest",
    "twin",
    "live",
    "alerts",
    "alert-delivery",
    "anomaly",
    "failure-risk",
    "parts",
    "optimizer",
    "whatif",
    "capacity",  # issue 27
)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.site = load_site(settings.site_file)
        # alert rules and receivers are checked before anything is opened
        rules, receivers = load_alert_config(
            settings.alert_rules_file, settings.alert_receivers_file, settings.alerts_topic
        )
        self.store = Store(settings.db_path, memory_limit=settings.duckdb_memory_limit)
        self.twin = Twin(self.site, self.store, config=twin_config(settings))
        # the twin ticks in the background: rollups, heat balance and PUE stay current and
        # rollup history accrues whether or not anyone reads the API
        self.twin_ticker = Periodic(self.twin.tick, settings.twin_tick_s, "twin", wait_first=True)
        # anomaly scores and the failure-risk table that device state, rack scores, the
        # live stream and alert rules read; their own threads keep them current
        self.anomaly = AnomalyService(
            self.site,
            self.store,
            AnomalyServiceConfig(fit_max_samples=settings.anomaly_fit_max_samples),
        )
        self.failure_risk = FailureRiskService(
            self.store, settings.failure_horizon_s, settings.failure_models
        )
        # slot -> part history from inventory events; risk history follows the part
        self.parts = PartHistory(self.store)
        self.failure_risk.on_scored.append(self.parts.record_risk)
        self.alerts = AlertService(
            self.store,
            self.site,
            rules,
            receivers,
            providers=twin_providers(
                self.twin, failure_risk=self.failure_risk, anomaly=self.anomaly
            ),
            kafka_bootstrap=settings.kafka_bootstrap,
            interval_s=settings.alert_interval_s,
            external_url=settings.external_url or f"http://{settings.api_host}:{settings.api_port}",
        )
        self.ingestor: Ingestor | None = None
        self.ingest_thread: threading.Thread | None = None
        self.started = time.time()
        self.bus = EventBus()
        self.live = LiveView(
            self.twin,
            self.bus,
            settings.live_interval_s,
            scorers=[anomaly_rack_scorer(self.anomaly), failure_rack_scorer(self.failure_risk)],
            feeds=[
                anomalies_feed(self.anomaly),
                incidents_feed(self.anomaly),  # issue 20
                recommendations_feed(store_opener(self.store.cursor)),
            ],
        )
        self.alerts.on_tick = alert_events(self.bus)
        self.optimizer = live_optimizer(
            settings, self.site.site.id, self.store, self.site
        )  # issue 19
        self.keys = KeyStore(settings.apikey_db)
        # issue 27 (whatif): what-if runs on a bounded executor this server owns; the
        # physics is the simulator's (this layer may import it, the twin may not)
        from simulator.whatif import run as run_whatif

        self.whatif = WhatIfService(
            self.site,
            self.store,
            run_whatif,
            stale_after_s=self.twin.stale_after_s,
            max_workers=settings.whatif_workers,
            pue_now=lambda: self.twin.last.pue["site"].value if self.twin.last else None,
        )
        self.sustainability = SustainabilityService(
            self.twin,
            settings.carbon_intensity,
            FlexibleLoad(
                settings.flex_load_kw, settings.flex_load_hours, settings.flex_load_start_hour
            )
            if settings.flex_load_kw > 0
            else None,
        )
        # issue 27 (capacity): headroom every capacity_refresh_s, forecast hourly
        self.capacity = CapacityService(self.twin, capacity_config(settings))
        self.capacity_job = Periodic(
            self.capacity.refresh, settings.capacity_refresh_s, "capacity", wait_first=True
        )
        self.ingest_started_at: float | None = None
        self.ingest_last_stored: float | None = None  # wall clock of the last stored poll
        # every background job reports here while it runs; the API reads it
        self.health_registry = HealthRegistry(COMPONENTS)
        self.health_registry.add_ready_check("store", self._store_ready)
        self.health_registry.add_ready_check("twin", self._twin_ready)
        self.health_registry.add_ready_check("ingest", self._ingest_ready)
        stale = max(MIN_STALE_S, 3 * settings.twin_tick_s)
        live_stale = max(MIN_STALE_S, 3 * settings.live_interval_s)
        alerts_stale = max(MIN_STALE_S, 3 * settings.alert_interval_s)
        # background jobs: started in this order, stopped in reverse, all before the store
        # closes (DuckDB refuses to close a connection mid-query); each with its probe
        self.jobs: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            ("twin", self.twin_ticker.start, lambda: self.twin_ticker.stop(15)),
            ("parts", self.parts.start, self.parts.stop),
            ("anomaly", self.anomaly.start_background, self.anomaly.stop_background),
            ("failure-risk", self.failure_risk.start, self.failure_risk.stop),
            ("live", self.live.start, self.live.stop),
            ("alerts", self.alerts.start, self.alerts.stop),
            ("optimizer", self.optimizer.start, self.optimizer.stop),
            ("whatif", self.whatif.start, self.whatif.stop),  # issue 27
            ("capacity", self.capacity_job.start, self.capacity_job.stop),  # issue 27
        ]
        self.probes: dict[str, list[tuple[str, Callable[[], ComponentHealth]]]] = {
            "twin": [("twin", lambda: self.twin_ticker.health(stale))],
            "parts": [("parts", lambda: self.parts.health(stale))],
            "anomaly": [("anomaly", lambda: self.anomaly.health(MODEL_STALE_S))],
            "failure-risk": [("failure-risk", lambda: self.failure_risk.health(MODEL_STALE_S))],
            "live": [("live", lambda: self.live.health(live_stale))],
            "alerts": [
                ("alerts", lambda: self.alerts.engine_health(alerts_stale)),
                ("alert-delivery", lambda: self.alerts.delivery_health(MIN_STALE_S)),
            ],
            "optimizer": [("optimizer", lambda: self.optimizer.health(MIN_STALE_S))],
            "whatif": [("whatif", self.whatif.health)],  # issue 27
            "capacity": [  # issue 27: a round may include the hourly forecast
                ("capacity", lambda: self.capacity_job.health(max(MODEL_STALE_S, stale)))
            ],
        }
        self._started: list[str] = []
        # issue 26 (demo-story): scenarios on a simulated site; the demo's on-call inbox
        self.scenarios: ScenarioRunner | None = (
            ScenarioRunner(self.site, settings.kafka_bootstrap, settings.sim_control_topic)
            if settings.simulated_site
            else None
        )
        self.oncall: PageLogLike | None = None  # set by the demo before uvicorn_server()

    # -- health ---------------------------------------------------------------------------

    def ingest_health(self) -> ComponentHealth:
        """Down if the ingest thread died; stale if records wait in its partitions and
        nothing was stored for INGEST_STUCK_S; lag_records is IngestStats' lag."""
        ing, thread = self.ingestor, self.ingest_thread
        if ing is None or thread is None or self.ingest_started_at is None:
            return ComponentHealth("not_running")
        stats = ing.stats
        lag = sum(p.lag for p in stats.lag.values() if p.lag is not None)
        extra = {
            "lag_records": lag,
            "assigned_partitions": len(ing.assigned),
            "samples_stored": stats.samples_stored,
        }
        last = self.ingest_last_stored
        if not thread.is_alive():
            return ComponentHealth(
                "down", last, "the ingest thread is not running (see the log)", extra=extra
            )
        since = time.time() - (last if last is not None else self.ingest_started_at)
        if lag > 0 and since > INGEST_STUCK_S:
            detail = f"{lag} records waiting, nothing stored for {since:.0f} s"
            return ComponentHealth("stale", last, detail, INGEST_STUCK_S, extra)
        return ComponentHealth("ok", last, None, INGEST_STUCK_S, extra)

    def _store_ready(self) -> str | None:
        try:
            self.store.cursor().execute("SELECT 1").fetchone()
        except Exception as exc:
            return f"the store cannot be read: {exc}"
        return None

    def _twin_ready(self) -> str | None:
        return None if self.twin.last is not None else "the twin has not ticked yet"

    def _ingest_ready(self) -> str | None:
        ing = self.ingestor
        if ing is None:
            return None  # this process does not ingest
        if not ing.assigned:
            return "ingest has no partitions assigned yet"
        lag = sum(p.lag for p in ing.stats.lag.values() if p.lag is not None)
        if lag > self.settings.ready_max_lag_records:
            return f"ingest is catching up: {lag} records behind (ready at <= " + (
                f"{self.settings.ready_max_lag_records})"
            )
        return None

    def _stored(self, results: object) -> None:
        self.ingest_last_stored = time.time()
        self.alerts.wake()

    def health(self) -> dict:
        alive = self.ingest_thread is not None and self.ingest_thread.is_alive()
        stats = self.ingestor.stats if self.ingestor else None
        return {
            "ingest_running": alive,
            "samples_stored": stats.samples_stored if stats else 0,
            "dead_letters": sum(stats.dead_letters.values()) if stats else 0,
            "uptime_s": round(time.time() - self.started, 1),
            **self.alerts.health(),
        }

    def start_ingest(self, jobs: bool = True) -> None:
        """Start ingest, then (`jobs`) every background job; the demo starts the jobs once
        its history is stored (issue 26)."""
        s = self.settings
        ensure_topics(s.kafka_bootstrap, s.topic_partitions)
        if s.alerts_topic:
            ensure_topics(s.kafka_bootstrap, s.topic_partitions, (s.alerts_topic,))
        if s.simulated_site:  # issue 26: one partition keeps scenario messages in order
            ensure_topics(s.kafka_bootstrap, 1, (s.sim_control_topic,))
        # evaluate alerts right after each stored poll, not only on the 1 s tick
        self.ingestor = Ingestor(
            self.store,
            s.kafka_bootstrap,
            s.consumer_group,
            on_stored=self._stored,
            site=self.site,
        )
        self.ingest_thread = threading.Thread(target=self._ingest_loop, name="ingest", daemon=True)
        self.ingest_started_at = time.time()
        self.ingest_thread.start()
        self.health_registry.register("ingest", self.ingest_health)
        if jobs:
            self.start_jobs()

    def start_jobs(self) -> None:
        """Start every background job, in order (idempotent)."""
        for name, start, _stop in self.jobs:
            if name not in self._started:
                start()
                self._started.append(name)
                for component, probe in self.probes.get(name, ()):
                    self.health_registry.register(component, probe)

    def stop_jobs(self) -> None:
        """Stop the started background jobs: each is told at once and all are joined
        together (issue 26: a stop costs the slowest job's round, not the sum of them)."""
        names = [name for name, _s, _stop in reversed(self.jobs) if name in self._started]
        for name in names:
            for component, _probe in self.probes.get(name, ()):
                self.health_registry.unregister(component)
        stops = {name: stop for name, _start, stop in self.jobs}

        def stop_one(name: str) -> None:
            t0 = time.monotonic()
            try:
                stops[name]()
            except Exception:  # one job failing to stop must not keep the others running
                log.exception("stopping %s failed", name)
            log.debug("stopped %s in %.1f s", name, time.monotonic() - t0)

        threads = [threading.Thread(target=stop_one, args=(n,), name=f"stop-{n}") for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in names:
            self._started.remove(name)

    def _ingest_loop(self) -> None:
        assert self.ingestor is not None
        try:
            self.ingestor.run()
        except Exception:
            log.exception("ingest loop died")
            raise

    def uvicorn_server(self) -> uvicorn.Server:
        s = self.settings
        app = create_app(
            self.twin,
            health=self.health,
            health_registry=self.health_registry,
            keys=self.keys,
            bus=self.bus,
            live=self.live,
            anomaly=self.anomaly,
            failure_risk=self.failure_risk,
            alerts=self.alerts,
            parts=self.parts,
            optimizer=self.optimizer,
            capacity=self.capacity,
            open_healthz=s.api_open_healthz,
            open_metrics=s.api_open_metrics,
            ingest_stats=lambda: self.ingestor.stats if self.ingestor else None,
            kafka_lag=lambda: kafka_lag_of(self.ingestor.consumer)() if self.ingestor else None,
            whatif=self.whatif,
            sustainability=self.sustainability,
            scenarios=self.scenarios,
            oncall=self.oncall,
        )
        gc.freeze()  # long-lived startup objects (site, app) leave the GC's scans: fewer pauses
        # uvicorn as configured by api/http_server.py: unparseable requests (a URL over
        # 64 kB, ...) are answered with problem documents too
        return uvicorn.Server(uvicorn_config(app, self.settings.api_host, self.settings.api_port))

    def stop(self) -> None:
        self.health_registry.unregister("ingest")
        if self.ingestor is not None:  # ingest finishes its round while the jobs stop
            self.ingestor.stop_event.set()
        self.stop_jobs()
        if self.ingest_thread is not None:
            self.ingest_thread.join(timeout=15)
        if self.ingestor is not None:
            self.ingestor.close()
        if self.scenarios is not None:
            self.scenarios.close()
        self.store.close()

    def run_forever(self) -> None:
        self.start_ingest()
        try:
            self.uvicorn_server().run()  # returns on SIGINT/SIGTERM
        finally:
            self.stop()


def live_optimizer(
    settings: Settings, site_id: str, store: Store, site: Site | None = None
) -> LiveOptimizer:
    """Issue 19 (opt-live): the live optimizer and its write path from the settings; the
    writer (a collectors capability) is built here, the twin only sees the protocol."""
    s = settings
    writer = None
    if s.optimizer_writer_file is not None:
        from collectors.sources.modbus.writer import ModbusSetpointWriter, load_writer_config

        writer = ModbusSetpointWriter(load_writer_config(s.optimizer_writer_file))
    shipped, shipped_note = shipped_for(site) if s.optimizer_shipped_default else (None, None)
    cfg = LiveConfig(
        site_id=site_id,
        model_path=s.optimizer_model,
        interval_s=s.optimizer_interval_s,
        guard_interval_s=s.optimizer_guard_interval_s,
        max_age_s=s.optimizer_state_max_age_s,
        advisory_only=s.optimizer_advisory_only,
        watch_s=s.optimizer_watch_s,
        guard_gpu_temp_c=s.optimizer_guard_gpu_temp_c,
        guard_coolant_supply_c=s.optimizer_guard_coolant_c,
        guard_dp_min_kpa=s.optimizer_guard_dp_min_kpa,
        # issue 19/26 (opt-default): the shipped default only for the site it was trained on
        shipped=shipped,
        shipped_note=shipped_note,
        settle_s=s.optimizer_settle_s,
        outcome_window_s=s.optimizer_outcome_window_s,
        site=site,
    )
    return LiveOptimizer(cfg, store_opener(store.cursor), store.cursor, writer)


def capacity_config(settings: Settings) -> CapacityConfig:  # issue 27 (capacity)
    return CapacityConfig(
        refresh_s=settings.capacity_refresh_s,
        peak_window_h=settings.capacity_peak_window_h,
        forecast_every_s=settings.capacity_forecast_every_s,
        history_days=settings.capacity_history_days,
    )


def twin_config(settings: Settings) -> TwinConfig:
    if settings.stale_after_intervals is not None:
        return TwinConfig(
            telemetry_interval_s=settings.telemetry_interval_s,
            stale_intervals=settings.stale_after_intervals,
            tick_interval_s=settings.twin_tick_s,
            heat_balance_threshold_pct=settings.heat_balance_threshold_pct,
        )
    return TwinConfig.with_stale_after(
        settings.stale_after_s,
        telemetry_interval_s=settings.telemetry_interval_s,
        tick_interval_s=settings.twin_tick_s,
        heat_balance_threshold_pct=settings.heat_balance_threshold_pct,
    )
