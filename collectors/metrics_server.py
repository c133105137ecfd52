"""`/metrics` (Prometheus text format) and `/healthz` (JSON) for one collector daemon.

A small threading HTTP server on its own thread, with its own prometheus-client registry
(nothing global). The figures are the daemon's plain counters (collectors/stats.py),
turned into metric families at scrape time.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collectors.daemon import CollectorDaemon

log = logging.getLogger(__name__)

PREFIX = "dctwin_collector_"

# (stats attribute, metric name, help); counters get `_total` appended by the client
_COUNTERS = [
    ("ticks", "ticks", "read intervals run"),
    ("ticks_skipped", "ticks_skipped", "grid ticks skipped because a tick overran"),
    ("samples_read", "readings", "samples read from all sources"),
    ("batches_read", "batches_read", "batches built from readings"),
    ("events_read", "events", "events raised (device events, source errors, drops)"),
    ("batches_sent", "batches_sent", "batches acknowledged by Kafka on the direct path"),
    ("samples_sent", "samples_sent", "samples acknowledged by Kafka on the direct path"),
    ("batches_spooled", "batches_spooled", "batches written to the on-disk spool"),
    ("samples_spooled", "samples_spooled", "samples written to the on-disk spool"),
    ("batches_replayed", "batches_replayed", "spooled batches acknowledged by Kafka"),
    ("samples_replayed", "samples_replayed", "spooled samples acknowledged by Kafka"),
    ("batches_dropped", "spool_dropped_batches", "batches the spool discarded"),
    ("samples_dropped", "spool_dropped_samples", "samples the spool discarded"),
    ("bytes_dropped", "spool_dropped_bytes", "bytes the spool discarded"),
    ("send_errors", "send_errors", "failed sends to Kafka"),
]
_GAUGES = [
    ("spool_bytes", "spool_bytes", "bytes in the spool's segment files"),
    ("spool_batches", "spool_batches", "batches waiting in the spool"),
    ("spool_samples", "spool_samples", "samples waiting in the spool"),
    ("queue_batches", "queue_batches", "batches handed to the shipper, not yet sent/spooled"),
    ("broker_up", "broker_up", "1 if the last send to Kafka succeeded"),
    ("started_unix_s", "start_time_seconds", "daemon start, Unix seconds"),
]


class _StatsCollector(Collector):
    def __init__(self, daemon: CollectorDaemon) -> None:
        self.daemon = daemon

    def collect(self):
        s = self.daemon.stats
        labels = ["collector"]
        me = [self.daemon.config.name]
        for attr, name, doc in _COUNTERS:
            c = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            c.add_metric(me, float(getattr(s, attr)))
            yield c
        for attr, name, doc in _GAUGES:
            g = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            g.add_metric(me, float(getattr(s, attr)))
            yield g
        if s.last_tick_unix_s is not None:
            g = GaugeMetricFamily(
                PREFIX + "last_tick_time_seconds", "last tick, Unix seconds", labels=labels
            )
            g.add_metric(me, s.last_tick_unix_s)
            yield g
        src = ["collector", "source"]
        readings = CounterMetricFamily(
            PREFIX + "source_readings", "samples read per source", labels=src
        )
        errors = CounterMetricFamily(
            PREFIX + "source_errors",
            "failed reads per source and reason (timeout, exception, busy, partial)",
            labels=[*src, "reason"],
        )
        late = CounterMetricFamily(
            PREFIX + "source_late_reads", "reads that finished after their deadline", labels=src
        )
        success = GaugeMetricFamily(
            PREFIX + "source_last_success_time_seconds",
            "last successful read per source, Unix seconds",
            labels=src,
        )
        duration = GaugeMetricFamily(
            PREFIX + "source_read_duration_seconds",
            "duration of the last finished read",
            labels=src,
        )
        up = GaugeMetricFamily(PREFIX + "source_up", "0 while a source is failing", labels=src)
        for name, st in list(s.sources.items()):
            key = [*me, name]
            readings.add_metric(key, float(st.readings))
            for reason in ("timeout", "exception", "busy", "partial"):
                errors.add_metric([*key, reason], float(st.errors.get(reason, 0)))
            late.add_metric(key, float(st.late_reads))
            if st.last_success_unix_s is not None:
                success.add_metric(key, st.last_success_unix_s)
            if st.last_duration_s is not None:
                duration.add_metric(key, st.last_duration_s)
            up.add_metric(key, 0.0 if st.failing else 1.0)
        yield from (readings, errors, late, success, duration, up)


class MetricsServer:
    def __init__(self, daemon: CollectorDaemon, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(daemon))
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/healthz":
                    ok, doc = daemon.health()
                    self._reply(200 if ok else 503, "application/json", json.dumps(doc).encode())
                else:
                    self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("metrics http: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
