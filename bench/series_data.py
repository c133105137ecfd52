"""A day (or week) of telemetry history built straight into a Store, for the series,
storage and memory benchmarks (bench/bench_series.py).

Every metric the simulated collectors emit, for every device of a site, one sample per
`interval_s`, written as ingest leaves it (raw `samples`, `latest`), then rolled up by
the store's own maintenance (`rollup_1m`, `rollup_1h`, sorted compaction). Values are a
per-series level, a slow daily swing and noise, rounded to what the sensors report
(0.1 for temperatures and percentages, whole units otherwise): synthetic, but with the
precision real telemetry has, which is what both dctwin and VictoriaMetrics compress.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from bench.bench_twin import EMITTED
from domain.site import Site
from ingest.store import Store

T0 = datetime(2025, 6, 1)


def site_series(site: Site, device_classes: set[str] | None = None) -> pa.Table:
    """(device_id, metric, kind, rack) of every emitted series of `site`."""
    ids: list[str] = []
    metrics: list[str] = []
    racks: list[str] = []
    for d in site.devices():
        if device_classes is not None and d.device_class not in device_classes:
            continue
        for m in EMITTED.get(d.device_class, []):
            ids.append(d.id)
            metrics.append(m)
            racks.append(getattr(d, "rack", None) or "")
    return pa.table({"device_id": ids, "metric": metrics, "kind": ["x"] * len(ids), "rack": racks})


def fill_history(
    store: Store,
    series: pa.Table,
    hours: float,
    interval_s: float = 60.0,
    start: datetime = T0,
    tail_minutes: int = 60,
) -> tuple[int, datetime]:
    """`hours` of samples for every series from `start`, in time order as ingest appends
    them, with maintenance run as the server runs it: after every hour, and every minute
    over the last `tail_minutes` (so the layout is the steady state's: closed days
    compacted, today's hours sorted, the current hour in per-minute runs). Returns
    (samples stored, end of the history)."""
    cur = store.cursor()
    cur.register("bench_series", series)
    n_steps = int(hours * 3600 / interval_s)
    step_us = int(interval_s * 1e6)
    cur.execute(
        """CREATE OR REPLACE TEMP TABLE _bs AS SELECT row_number() OVER () AS k, *,
           (hash(device_id || metric) % 1000)::DOUBLE / 1000 AS u FROM bench_series"""
    )
    # counters rise, temperatures and percentages have 0.1 resolution, the rest whole units
    value = """CASE
        WHEN s.metric IN ('energy_mj', 'energy_kwh', 'ecc_uncorrected_total')
            THEN round(r.tm * (1 + 9 * s.u))
        WHEN s.metric LIKE '%temp%' OR s.metric LIKE '%pct' THEN
            round(30 + 40 * s.u + 5 * sin(r.tm * 6.2832 / 1440) + random() - 0.5, 1)
        ELSE round(100 + 600 * s.u + 50 * sin(r.tm * 6.2832 / 1440) + 10 * random())
        END"""
    per_hour = max(1, int(3600 / interval_s))
    per_minute = max(1, int(60 / interval_s))
    tail_from = max(0, n_steps - int(tail_minutes * 60 / interval_s))
    a = 0
    while a < n_steps:
        b = min(n_steps, a + (per_hour if a < tail_from else per_minute))
        b = min(b, tail_from) if a < tail_from else b
        cur.execute(
            f"""INSERT INTO samples
            SELECT $t0::TIMESTAMP + to_microseconds(r.range * {step_us}) AS read_time,
                   s.device_id, s.metric, {value}, s.kind, s.rack
            FROM (SELECT range, range * {interval_s / 60} AS tm FROM range({a}, {b})) r
            CROSS JOIN _bs s ORDER BY r.range, s.k""",
            {"t0": start},
        )
        a = b
        t = start + timedelta(seconds=a * interval_s)
        cur.execute(
            """INSERT INTO latest SELECT device_id, metric, $t, 0.0, kind FROM _bs
            ON CONFLICT DO UPDATE SET read_time = excluded.read_time""",
            {"t": t - timedelta(seconds=interval_s)},
        )
        store.maintain(now=t)
        while store.rollups.compact_step():
            pass
    n = cur.execute("SELECT count(*) FROM samples").fetchall()[0][0]
    return int(n), start + timedelta(seconds=n_steps * interval_s)


def db_bytes(path: str | Path) -> int:
    p = Path(path)
    wal = p.with_name(p.name + ".wal")
    return p.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
