"""`dctwin simulate`: batch history from the simulator into Parquet, DuckDB and/or Kafka.

Samples go out with the same schema as ingest/store.py's `samples` table (read_time,
device_id, metric, value, kind, rack); events with the `events` table's; the ground-truth
labels (one row per injected fault) beside them. Parquet output is a directory:
samples.parquet (one row group per chunk, dictionary-encoded ids), events.parquet,
labels.parquet, labels.jsonl and run.json. DuckDB output is one file with the Store's
tables plus `labels` and `simulation_run`.
"""

from __future__ import annotations

import json
import resource
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.store import Store
from simulator.batch import BatchRun, ReadSchedule, SampleChunk
from simulator.injector import SimEvent
from simulator.model import SiteSimulator
from simulator.telemetry import TelemetryPlan

SAMPLES_SCHEMA = pa.schema(
    [
        ("read_time", pa.timestamp("us")),
        ("device_id", pa.dictionary(pa.int32(), pa.string())),
        ("metric", pa.dictionary(pa.int32(), pa.string())),
        ("value", pa.float64()),
        ("kind", pa.dictionary(pa.int32(), pa.string())),
        ("rack", pa.dictionary(pa.int32(), pa.string())),
    ]
)
LABELS_DDL = """
CREATE TABLE IF NOT EXISTS labels (
    fault_id VARCHAR NOT NULL, fault VARCHAR NOT NULL, device_id VARCHAR NOT NULL,
    device_class VARCHAR NOT NULL, metric VARCHAR, onset TIMESTAMP NOT NULL,
    failure_time TIMESTAMP, signature VARCHAR NOT NULL, params JSON
);
CREATE TABLE IF NOT EXISTS simulation_run (run_id VARCHAR, info JSON);
"""


@dataclass
class RunSummary:
    run_id: str
    site: str
    gpus: int
    hours: float
    step_s: float
    seed: int
    faults: str | None
    start: str
    samples: int
    events: int
    labels: int
    wall_s: float
    samples_per_s: float
    peak_rss_mb: float
    outputs: list[str]
    fine_burst_s: float = 0.0  # also the last this many seconds of every fine_every_s
    fine_every_s: float = 0.0
    fine_step_s: float = 0.0  # read every this many seconds


def samples_table(chunk: SampleChunk, plan: TelemetryPlan, dicts: dict[str, pa.Array]) -> pa.Table:
    def dict_col(codes, name):
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dicts[name])

    return pa.Table.from_arrays(
        [
            pa.array(chunk.read_time_ms * 1000, pa.timestamp("us")),
            dict_col(chunk.device_code, "device"),
            dict_col(chunk.metric_code, "metric"),
            pa.array(chunk.value, pa.float64()),
            dict_col(chunk.kind_code, "kind"),
            dict_col(chunk.rack_code, "rack"),
        ],
        schema=SAMPLES_SCHEMA,
    )


def events_table(events: list[SimEvent], run_id: str) -> pa.Table:
    return pa.table(
        {
            "read_time": pa.array([e.time_ms * 1000 for e in events], pa.timestamp("us")),
            "device_id": pa.array([e.device_id for e in events], pa.string()),
            "kind": pa.array([e.kind for e in events], pa.string()),
            "severity": pa.array([e.severity for e in events], pa.string()),
            "message": pa.array([e.message for e in events], pa.string()),
            "attrs": pa.array([orjson.dumps(e.attrs).decode() for e in events], pa.string()),
            "collector": pa.array(["simulate"] * len(events), pa.string()),
            "batch_id": pa.array([run_id] * len(events), pa.string()),
        }
    )


def labels_table(labels: list[dict]) -> pa.Table:
    def ts(key):
        return pa.array(
            [None if r[key] is None else r[key] * 1000 for r in labels], pa.timestamp("us")
        )

    cols = {
        k: pa.array([r[k] for r in labels], pa.string())
        for k in ("fault_id", "fault", "device_id", "device_class", "metric")
    }
    return pa.table(
        {
            **cols,
            "onset": ts("onset_ms"),
            "failure_time": ts("failure_ms"),
            "signature": pa.array([r["signature"] for r in labels], pa.string()),
            "params": pa.array([r["params"] for r in labels], pa.string()),
        }
    )


class ParquetSink:
    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        # dictionary pages for the id columns only, min/max statistics only where they
        # prune (time, value): each row group holds every device, so id stats are useless
        self.writer = pq.ParquetWriter(
            out_dir / "samples.parquet",
            SAMPLES_SCHEMA,
            compression="zstd",
            compression_level=1,
            store_schema=False,
            use_dictionary=["device_id", "metric", "kind", "rack"],
            write_statistics=["read_time", "value"],
        )

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self, events: pa.Table, labels: pa.Table, info: dict) -> list[str]:
        self.writer.close()
        pq.write_table(events, self.dir / "events.parquet")
        pq.write_table(labels, self.dir / "labels.parquet")
        (self.dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        return [
            str(self.dir / n)
            for n in (
                "samples.parquet",
                "events.parquet",
                "labels.parquet",
                "labels.jsonl",
                "run.json",
            )
        ]


class DuckDBSink:
    def __init__(self, path: Path) -> None:
        for stale in (path, Path(f"{path}.wal")):
            stale.unlink(missing_ok=True)
        self.path = path
        self.store = Store(path)
        self.con = self.store.con
        self.con.execute(LABELS_DDL)

    def write(self, table: pa.Table) -> None:
        self.con.register("chunk", table)
        self.con.execute(
            "INSERT INTO samples SELECT read_time, device_id::VARCHAR, "
            "metric::VARCHAR, value, kind::VARCHAR, rack::VARCHAR FROM chunk"
        )
        self.con.unregister("chunk")

    def close(self, events: pa.Table, labels: pa.Table, info: dict) -> list[str]:
        con = self.con
        con.register("ev", events)
        con.execute(
            "INSERT INTO events SELECT read_time, device_id, kind, severity, message, "
            "attrs::JSON, collector, batch_id FROM ev"
        )
        con.register("lab", labels)
        con.execute(
            "INSERT INTO labels SELECT fault_id, fault, device_id, device_class, metric,"
            " onset, failure_time, signature, params::JSON FROM lab"
        )
        con.execute(
            "INSERT INTO simulation_run VALUES (?, ?::JSON)", [info["run_id"], json.dumps(info)]
        )
        # current state, as ingest would have left it
        con.execute("""
            INSERT INTO latest SELECT device_id, metric, max(read_time),
                   arg_max(value, read_time), any_value(kind)
            FROM samples GROUP BY device_id, metric""")
        self.store.close()
        return [str(self.path)]


class KafkaSink:
    """Each read becomes the wire batches a collector would send (one per kind and rack)."""

    def __init__(
        self,
        bootstrap: str,
        plan: TelemetryPlan,
        site_id: str,
        step_s: float,
        collector: str = "simulate",
    ) -> None:
        from collectors.batching import Batcher
        from collectors.publish import Publisher

        self.plan = plan
        self.batcher = Batcher(collector, site_id, step_s)
        self.publisher = Publisher(bootstrap, "zstd")
        self.kinds = plan.kind_dict
        self.sent = 0

    def write_chunk(self, chunk: SampleChunk) -> None:
        import numpy as np

        self.batcher.interval_s = chunk.step_s  # a fine tail's batches say so

        from collectors.base import Readings
        from domain.contract import Event, EventKind, Kind

        plan = self.plan
        devices = np.array(plan.device_dict, dtype=object)
        metrics = np.array(plan.metric_dict, dtype=object)
        racks = np.array(plan.rack_dict, dtype=object)
        kinds = np.array([Kind(k) for k in self.kinds], dtype=object)
        bounds = np.flatnonzero(np.diff(chunk.read_time_ms)) + 1
        for sl in np.split(np.arange(len(chunk)), bounds):
            r = Readings(
                device_id=devices[chunk.device_code[sl]].tolist(),
                metric=metrics[chunk.metric_code[sl]].tolist(),
                value=chunk.value[sl].tolist(),
                read_time_ms=chunk.read_time_ms[sl].tolist(),
                kind=kinds[chunk.kind_code[sl]].tolist(),
                rack=racks[chunk.rack_code[sl]].tolist(),
            )
            self.publisher.publish(self.batcher.batches(r))
            self.sent += len(r)
        if chunk.events:
            ev = Readings(
                events=[
                    Event(
                        device_id=e.device_id,
                        kind=EventKind(e.kind),
                        severity=e.severity,
                        read_time_ms=e.time_ms,
                        message=e.message,
                        attrs=e.attrs,
                    )
                    for e in chunk.events
                ]
            )
            self.publisher.publish(self.batcher.batches(ev))

    def close(self) -> None:
        self.publisher.close()


def run_simulation(
    sim: SiteSimulator,
    hours: float,
    out: Path | None,
    *,
    step_s: float = 10.0,
    fmt: str = "auto",
    kafka_bootstrap: str | None = None,
    faults: str | None = None,
    progress: bool = True,
    chunk_rows: int = 4_000_000,
    collector: str = "simulate",
    schedule: ReadSchedule | None = None,
) -> RunSummary:
    """Run `hours` of `sim` in batch mode into the chosen outputs (`schedule`: reads
    other than every `step_s`, simulator.batch.ReadSchedule)."""
    if fmt == "auto":
        fmt = "duckdb" if out is not None and out.suffix == ".duckdb" else "parquet"
    if fmt not in ("parquet", "duckdb", "both"):
        raise ValueError(f"format: {fmt!r} is not one of auto, parquet, duckdb, both")
    if out is None and kafka_bootstrap is None:
        raise ValueError("out: give an output path, a Kafka bootstrap, or both")
    run = BatchRun(sim, hours, step_s, chunk_rows, schedule=schedule)
    plan = run.plan
    dicts = {
        "device": pa.array(plan.device_dict, pa.string()),
        "metric": pa.array(plan.metric_dict, pa.string()),
        "kind": pa.array(plan.kind_dict, pa.string()),
        "rack": pa.array(plan.rack_dict, pa.string()),
    }
    sinks: list = []
    if out is not None and fmt in ("parquet", "both"):
        sinks.append(ParquetSink(out))
    if out is not None and fmt in ("duckdb", "both"):
        sinks.append(DuckDBSink(out / "sim.duckdb" if fmt == "both" else out))
    kafka = (
        KafkaSink(kafka_bootstrap, plan, sim.site.site.id, step_s, collector)
        if kafka_bootstrap
        else None
    )
    run_id = uuid.uuid4().hex
    start_iso = datetime.fromtimestamp(sim.time_s, UTC).isoformat()
    events: list[SimEvent] = []
    t0 = time.perf_counter()
    bar = _progress(progress, run.n_reads, hours)
    try:
        for chunk in run.chunks():
            if sinks:
                table = samples_table(chunk, plan, dicts)
                for s in sinks:
                    s.write(table)
            if kafka is not None:
                kafka.write_chunk(chunk)
            events += chunk.events
            if bar is not None:
                bar[0].update(bar[1], advance=chunk.reads, description=f"{run.samples:,} samples")
    finally:
        if bar is not None:
            bar[0].stop()
        if kafka is not None:
            kafka.close()
    labels = sim.labels()
    summary = RunSummary(
        run_id,
        sim.site.site.id,
        sim.layout.n_gpu,
        hours,
        step_s,
        sim.seed,
        faults,
        start_iso,
        run.samples,
        len(events),
        len(labels),
        0.0,
        0.0,
        0.0,
        [],
    )
    if schedule is not None and schedule.fine_burst_s > 0:
        summary.fine_burst_s = schedule.fine_burst_s
        summary.fine_every_s = schedule.fine_every_s
        summary.fine_step_s = schedule.fine_step_s
    info = asdict(summary)
    ev_t, lab_t = events_table(events, run_id), labels_table(labels)
    outputs: list[str] = []
    for s in sinks:
        if isinstance(s, ParquetSink):
            sim.write_labels(s.dir / "labels.jsonl")
        outputs += s.close(ev_t, lab_t, info)
    if kafka is not None:
        outputs.append(f"kafka://{kafka_bootstrap} ({kafka.sent:,} samples)")
    summary.wall_s = time.perf_counter() - t0
    summary.samples_per_s = run.samples / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.peak_rss_mb = peak_rss_mb()
    summary.outputs = outputs
    return summary


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _progress(enabled: bool, total: int, hours: float):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(f"simulating {hours:g} h"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar.start()
    return bar, bar.add_task("", total=total)
