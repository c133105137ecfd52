"""Prometheus `/metrics`: a custom collector that reads live state at scrape time.

Nothing is pushed into global gauges; each scrape asks every registered provider for its
metric families. A provider is any callable returning an iterable of
`prometheus_client.core` metric families. Built in:

- `platform_provider`: ingest counters (messages, samples, dead letters by reason),
  ingest rate between scrapes, data lag (age of the newest stored reading), Kafka
  consumer lag, live tick time, stream subscribers;
- `twin_provider`: PUE (site) and pPUE (halls, cooling subsystems) by scope with their
  ISO category, DCiE, heat-balance residual per CDU loop / hall / site, site power split,
  per rack GPU max temperature, power, and any rack score (anomaly score, failure risk)
  the live view carries.

Features register theirs with `MetricsRegistry.register(name, fn)`: active alerts by
severity (alerts), anomaly and risk providers, ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from api.live_view import LiveView
from ingest.stats import IngestStats
from twin.events import EventBus

log = logging.getLogger(__name__)

Provider = Callable[[], Iterable]  # -> metric families

__all__ = ["CONTENT_TYPE_LATEST", "MetricsRegistry", "platform_provider", "twin_provider"]


class MetricsRegistry(Collector):
    def __init__(self) -> None:
        self.providers: list[tuple[str, Provider]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.errors = 0

    def register(self, name: str, provider: Provider) -> None:
        self.providers.append((name, provider))

    def collect(self):
        for name, provider in self.providers:
            try:
                yield from provider()
            except Exception:  # one broken provider must not blank the whole scrape
                self.errors += 1
                log.exception("metrics provider %s failed", name)
        yield GaugeMetricFamily(
            "dctwin_metrics_provider_errors",
            "metric providers that raised since start",
            self.errors,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _robustness_families(stats: IngestStats) -> Iterable:
    """Poison messages, truncated dead letters and data loss (docs/ingest.md)."""
    poison = CounterMetricFamily(
        "dctwin_ingest_poison_messages",
        "messages that broke ingest (ingest_error) or that the dead-letter topic refused "
        "(quarantined)",
        labels=["kind"],
    )
    for kind in ("ingest_error", "quarantined"):
        poison.add_metric([kind], stats.poison_messages.get(kind, 0))
    yield poison
    yield CounterMetricFamily(
        "dctwin_ingest_dead_letters_truncated",
        "dead letters sent as a prefix of a too-large original",
        stats.dead_letters_truncated,
    )
    loss = CounterMetricFamily(
        "dctwin_ingest_data_loss_events",
        "offsets skipped for good: records deleted by retention unread, or a re-created topic",
        labels=["reason"],
    )
    for reason in ("retention", "topic_recreated"):
        loss.add_metric([reason], stats.data_loss_events.get(reason, 0))
    yield loss
    yield CounterMetricFamily(
        "dctwin_ingest_lost_records", "records never stored (known counts)", stats.lost_records
    )


def platform_provider(
    ingest_stats: Callable[[], IngestStats | None],
    live: LiveView | None,
    bus: EventBus | None,
    kafka_lag: Callable[[], float | None] | None = None,
) -> Provider:
    last: dict[str, float] = {}

    def collect():
        stats = ingest_stats()
        if stats is not None:
            yield CounterMetricFamily(
                "dctwin_ingest_messages", "Kafka messages consumed", stats.messages
            )
            yield CounterMetricFamily(
                "dctwin_ingest_samples", "samples stored", stats.samples_stored
            )
            yield CounterMetricFamily(
                "dctwin_ingest_events", "device events stored", stats.events_stored
            )
            yield CounterMetricFamily(
                "dctwin_ingest_batches_skipped",
                "batches already stored (replays, re-sends)",
                stats.batches_skipped,
            )
            dead = CounterMetricFamily(
                "dctwin_ingest_dead_letters", "messages dead-lettered, by reason", labels=["reason"]
            )
            for reason, n in sorted(stats.dead_letters.items()):
                dead.add_metric([reason], n)
            yield dead
            yield from _robustness_families(stats)
            now = time.monotonic()
            if "t" in last and now > last["t"]:
                rate = (stats.samples_stored - last["n"]) / (now - last["t"])
                yield GaugeMetricFamily(
                    "dctwin_ingest_samples_per_second",
                    "ingest rate since the previous scrape",
                    rate,
                )
            last.update(t=now, n=stats.samples_stored)
        if kafka_lag is not None:
            lag = kafka_lag()
            if lag is not None:
                yield GaugeMetricFamily(
                    "dctwin_ingest_kafka_lag_records", "max records behind the partition end", lag
                )
        if live is not None:
            row = live.twin.store.cursor().execute("SELECT max(read_time) FROM latest").fetchone()
            newest = row[0] if row is not None else None
            if newest is not None:
                from api.shape import now_naive_utc

                yield GaugeMetricFamily(
                    "dctwin_ingest_lag_seconds",
                    "age of the newest stored reading (read time to now)",
                    (now_naive_utc() - newest).total_seconds(),
                )
            snap = live.snapshot
            if snap is not None:
                yield GaugeMetricFamily(
                    "dctwin_twin_tick_seconds", "duration of the last live tick", snap.tick_s
                )
            yield CounterMetricFamily("dctwin_twin_ticks", "live ticks run", live.ticks)
            yield CounterMetricFamily(
                "dctwin_twin_tick_seconds_sum",
                "total time spent in live ticks",
                live.tick_seconds_total,
            )
        if bus is not None:
            yield GaugeMetricFamily(
                "dctwin_stream_subscribers", "open /v1/stream connections", bus.subscribers
            )
            yield CounterMetricFamily(
                "dctwin_stream_events", "events published to the bus", bus.published_total
            )

    return collect


def twin_provider(live: LiveView) -> Provider:
    def collect():
        snap = live.fresh_snapshot() or live.compute()
        p = snap.pue
        tick = live.twin.current()  # the twin's last tick: PUE/pPUE per scope, heat balance
        pue = GaugeMetricFamily(
            "dctwin_pue",
            "power usage effectiveness (instantaneous): "
            "PUE for the site, pPUE for halls and cooling subsystems",
            labels=["scope", "category", "figure"],
        )
        dcie = GaugeMetricFamily(
            "dctwin_dcie",
            "data centre infrastructure efficiency, 1/PUE",
            labels=["scope", "category"],
        )
        for scope, fig in sorted(tick.pue.items()):
            if fig.value is not None:
                pue.add_metric([scope, fig.category or "", fig.figure], fig.value)
                if scope == "site" and fig.dcie is not None:
                    dcie.add_metric([scope, fig.category or ""], fig.dcie)
        yield pue
        yield dcie
        hb = tick.heat_balance
        res_kw = GaugeMetricFamily(
            "dctwin_heat_balance_residual_kw",
            "(liquid + air heat removed) - IT power cooled",
            labels=["scope", "level"],
        )
        res_pct = GaugeMetricFamily(
            "dctwin_heat_balance_residual_pct",
            "heat-balance residual in % of the IT power cooled",
            labels=["scope", "level"],
        )
        for i, sid in enumerate(hb.ids):
            if hb.reasons[i] is None and np.isfinite(hb.residual_kw[i]):
                res_kw.add_metric([sid, hb.levels[i]], float(hb.residual_kw[i]))
                res_pct.add_metric([sid, hb.levels[i]], float(hb.residual_pct[i]))
        yield res_kw
        yield res_pct
        yield GaugeMetricFamily(
            "dctwin_pue_stale_inputs",
            "PUE inputs older than the staleness limit",
            len(p.stale_inputs),
        )
        power = GaugeMetricFamily("dctwin_power_kw", "site power by meter", labels=["meter"])
        for name, v in (
            ("facility", snap.power.facility_kw),
            ("it", snap.power.it_kw),
            ("cooling", snap.power.cooling_kw),
        ):
            if v is not None:
                power.add_metric([name], v)
        yield power
        labels = ["rack", "row", "hall"]
        temp = GaugeMetricFamily(
            "dctwin_rack_gpu_max_temp_c", "hottest GPU in the rack", labels=labels
        )
        rpow = GaugeMetricFamily("dctwin_rack_power_kw", "rack PSU input power", labels=labels)
        score_names = sorted({n for r in snap.racks for n in r.scores})
        scores = {
            n: GaugeMetricFamily(f"dctwin_rack_{n}_max", f"max {n} in the rack", labels=labels)
            for n in score_names
        }
        for r in snap.racks:
            lv = [r.rack, r.row, r.hall]
            if r.gpu_max_temp_c is not None:
                temp.add_metric(lv, r.gpu_max_temp_c)
            if r.power_kw is not None:
                rpow.add_metric(lv, r.power_kw)
            for n, v in r.scores.items():
                if v is not None:
                    scores[n].add_metric(lv, v)
        yield temp
        yield rpow
        yield from scores.values()

    return collect


def kafka_lag_of(consumer) -> Callable[[], float | None]:
    """records-lag-max from kafka-python's fetch-manager metrics (read-only access)."""

    def lag() -> float | None:
        try:
            for group, values in consumer.metrics().items():
                if "fetch-manager" in group and "records-lag-max" in values:
                    v = values["records-lag-max"]
                    return None if v is None or v != v or v == float("-inf") else float(v)
        except Exception:  # metrics are best-effort; never fail a scrape for them
            return None
        return None

    return lag


def alerts_provider(service) -> Provider:
    """Active alerts by severity (and muted ones) from the alert engine's open set."""

    def collect():
        active = GaugeMetricFamily(
            "dctwin_alerts_active", "firing alerts by severity", labels=["severity", "muted"]
        )
        counts: dict[tuple[str, str], int] = {}
        with service.engine.lock:
            for a in service.engine.open.values():
                k = (a.severity, "true" if a.muted else "false")
                counts[k] = counts.get(k, 0) + 1
        for sev in ("critical", "warning", "info"):
            for muted in ("false", "true"):
                active.add_metric([sev, muted], counts.pop((sev, muted), 0))
        for (sev, muted), n in counts.items():
            active.add_metric([sev, muted], n)
        yield active

    return collect


def alert_events(bus: EventBus) -> Callable:
    """An AlertService.on_tick listener: each alert transition onto the live stream."""

    def on_tick(tick) -> None:
        for alert_id, fingerprint, at, transition, actor, comment, value in tick.transitions:
            bus.publish(
                "alert",
                {
                    "id": alert_id,
                    "fingerprint": fingerprint,
                    "transition": transition,
                    "time": _iso(at),
                    "actor": actor,
                    "comment": comment,
                    "value": value,
                },
            )

    return on_tick


def _iso(t) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- issue 27 (capacity) -------------------------------------------------------------------
# Cardinality: racks are left out (their headroom is in GET /v1/capacity); per site the
# headroom family has 2 x (rows + PDUs + 3 per hall + CDUs + CRAHs + UPS + 2 plant) series,
# the run-out family 2 x 2 x (halls + 1).
_EPOCH = datetime(1970, 1, 1)  # forecast times are naive UTC
CAPACITY_METRIC_KINDS = ("row", "pdu", "ups", "hall", "cdu", "crah", "plant")


def capacity_provider(service) -> Provider:
    """Headroom (N, N-1) per element above the rack, and days until the forecast run-out."""

    def collect():
        frame = service.headroom("peak").frame
        head = GaugeMetricFamily(
            "dctwin_capacity_headroom_kw",
            "capacity minus used load (peak basis), kW; negative: over capacity",
            labels=["kind", "id", "resource", "weather", "redundancy"],
        )
        cap = GaugeMetricFamily(
            "dctwin_capacity_kw",
            "capacity, kW",
            labels=["kind", "id", "resource", "weather", "redundancy"],
        )
        for r in frame.filter(frame["kind"].is_in(CAPACITY_METRIC_KINDS)).iter_rows(named=True):
            for red, hk, ck in (
                ("N", "headroom_n_kw", "capacity_n_kw"),
                ("N-1", "headroom_n1_kw", "capacity_n1_kw"),
            ):
                labels = [r["kind"], r["id"], r["resource"], r["weather"] or "", red]
                if r[hk] is not None and np.isfinite(r[hk]):
                    head.add_metric(labels, r[hk])
                if r[ck] is not None and np.isfinite(r[ck]):
                    cap.add_metric(labels, r[ck])
        yield head
        yield cap
        fc = service.kept_forecast()
        days = GaugeMetricFamily(
            "dctwin_capacity_runout_days",
            "days from the forecast origin until the expected run-out (absent: not within "
            "the forecast horizon)",
            labels=["scope", "resource", "redundancy"],
        )
        if fc is not None:
            origin_s = (fc.time - _EPOCH).total_seconds()
            for s in fc.series:
                for red, ro in (("N", s.runout_n), ("N-1", s.runout_n1)):
                    if ro is not None and ro.expected_s is not None:
                        days.add_metric(
                            [s.scope, s.resource, red], (ro.expected_s - origin_s) / 86400.0
                        )
        yield days

    return collect
