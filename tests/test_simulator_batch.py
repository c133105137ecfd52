"""Batch mode: Parquet and DuckDB outputs with the store's schema, labels beside them,
the `dctwin simulate` command, and Kafka output ingested by the real consumer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dctwin.cli.main import app
from experiments.simulate import run_simulation
from ingest.consumer import Ingestor
from ingest.history import query_series
from ingest.store import Store
from ingest.validate import IngestPolicy
from simulator.batch import BatchRun
from simulator.model import SiteSimulator
from tests.helpers import ingest_until
from tests.simtools import JAN, small_site

SITE = small_site(64)  # 2 racks
GPU = "syn/h1/row1/r10101/n02/gpu3"
SPEC = f"gpu_off_bus@{GPU}:onset=10m; coolant_leak@any:onset=5m,rate=20"


def sim(seed: int = 1, faults: str | None = SPEC) -> SiteSimulator:
    return SiteSimulator(SITE, seed=seed, start_time_s=JAN, faults=faults)


def store_columns(tmp_path) -> list[tuple[str, str]]:
    s = Store(tmp_path / "ref.duckdb")
    cols = s.cursor().execute("DESCRIBE samples").fetchall()
    s.close()
    return [(c[0], c[1]) for c in cols]


def test_parquet_output_has_the_store_schema_labels_and_events(tmp_path):
    out = tmp_path / "run"
    s = sim()
    summary = run_simulation(
        s, 0.5, out, step_s=30.0, faults=SPEC, progress=False, chunk_rows=20_000
    )
    plan = s.telemetry
    reads = 60
    lost_rows = len(plan.gpu_block.metrics) * (reads - 20)  # from the read at 10 min on
    assert summary.samples == reads * plan.size - lost_rows

    def q(sql: str) -> list[tuple]:
        return duckdb.connect().sql(sql).fetchall()

    cols = q(f"DESCRIBE SELECT * FROM '{out}/samples.parquet'")
    assert [(c[0], c[1]) for c in cols] == store_columns(tmp_path)
    assert q(f"SELECT count(*) FROM '{out}/samples.parquet'")[0][0] == summary.samples
    assert pq.ParquetFile(out / "samples.parquet").num_row_groups > 1  # chunked in time
    # the lost GPU's telemetry stops at its onset
    last = q(f"SELECT max(read_time) FROM '{out}/samples.parquet' WHERE device_id = '{GPU}'")[0][0]
    assert last < datetime.fromtimestamp(JAN + 600, UTC).replace(tzinfo=None)
    labels = q(
        f"SELECT fault, device_id, onset, failure_time FROM '{out}/labels.parquet' "
        "ORDER BY fault_id"
    )
    assert [r[0] for r in labels] == ["gpu_off_bus", "coolant_leak"]
    assert labels[0][1] == GPU and labels[0][2] == labels[0][3]
    lines = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert [x["fault"] for x in lines] == ["gpu_off_bus", "coolant_leak"]
    events = q(f"SELECT device_id, kind, attrs FROM '{out}/events.parquet'")
    assert (GPU, "xid", '{"xid":79}') in events
    assert any(k == "leak_detected" for _, k, _ in events)
    info = json.loads((out / "run.json").read_text())
    assert info["samples"] == summary.samples and info["seed"] == 1


def test_duckdb_output_is_a_twin_database(tmp_path):
    db = tmp_path / "hist.duckdb"
    summary = run_simulation(sim(), 0.25, db, step_s=30.0, progress=False)
    assert summary.outputs == [str(db)]
    store = Store(db, read_only=True)
    cur = store.cursor()
    assert [(c[0], c[1]) for c in cur.execute("DESCRIBE samples").fetchall()] == store_columns(
        tmp_path
    )
    assert cur.execute("SELECT count(*) FROM samples").fetchone()[0] == summary.samples
    assert cur.execute("SELECT count(*) FROM labels").fetchone()[0] == 2
    assert cur.execute("SELECT count(*) FROM events WHERE kind = 'xid'").fetchone()[0] == 1
    pairs = cur.execute(
        "SELECT count(*) FROM (SELECT DISTINCT device_id, metric FROM samples)"
    ).fetchone()[0]
    assert cur.execute("SELECT count(*) FROM latest").fetchone()[0] == pairs
    start = datetime.fromtimestamp(JAN, UTC).replace(tzinfo=None)
    end = datetime.fromtimestamp(JAN + 900, UTC).replace(tzinfo=None)
    series = query_series(store.cursor(), "syn/facility/utility", "power_kw", start, end, 300)
    assert series.height == 3 and series["count"].to_list() == [10, 10, 10]
    store.close()


def test_batch_runs_are_deterministic_and_memory_is_chunked():
    def values(seed):
        run = BatchRun(sim(seed), 0.2, 30.0, chunk_rows=5_000)
        chunks = list(run.chunks())
        assert max(len(c) for c in chunks) <= max(5_000, run.plan.size)
        return np.concatenate([c.value for c in chunks])

    a, b, c = values(7), values(7), values(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_simulate_command(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    site_file = tmp_path / "site.toml"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--gpus",
            "40",
            "--hours",
            "0.1",
            "--step-s",
            "60",
            "--seed",
            "3",
            "--faults",
            "random:n=4",
            "--out",
            str(out),
            "--quiet",
            "--write-site",
            str(site_file),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["gpus"] == 40 and summary["labels"] == 4 and summary["samples"] > 0
    assert (out / "samples.parquet").exists() and site_file.exists()
    spec_file = tmp_path / "faults.txt"
    spec_file.write_text("// one per line\nhx_fouling@any:onset=1m\n")
    result = runner.invoke(
        app,
        [
            "simulate",
            "--site",
            str(site_file),
            "--hours",
            "0.05",
            "--faults",
            str(spec_file),
            "--out",
            str(tmp_path / "x.duckdb"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["labels"] == 1
    bad = runner.invoke(
        app,
        [
            "simulate",
            "--gpus",
            "8",
            "--faults",
            "pump_degradation@nope",
            "--out",
            str(tmp_path / "y"),
            "--quiet",
        ],
    )
    assert bad.exit_code == 2 and "faults item 1" in bad.output
    both = runner.invoke(app, ["simulate", "--gpus", "8", "--site", str(site_file)])
    assert both.exit_code == 2 and "--site and --gpus" in both.output


@pytest.mark.slow
def test_kafka_output_is_ingested_exactly(settings, unique):
    collector = f"simulate-{unique}"
    s = sim(faults=f"gpu_off_bus@{GPU}:onset=30s")
    summary = run_simulation(
        s,
        2 / 60,
        None,
        step_s=30.0,
        kafka_bootstrap=settings.kafka_bootstrap,
        progress=False,
        collector=collector,
    )
    store = Store(settings.db_path)
    # a backfill: the simulated read times lie in the past, beyond a live site's window
    ingestor = Ingestor(
        store,
        settings.kafka_bootstrap,
        settings.consumer_group,
        policy=IngestPolicy(max_past_s=5 * 365 * 86400.0),
    )
    try:

        def stored() -> int:
            return (
                store.cursor()
                .execute(
                    "SELECT coalesce(sum(n_samples), 0) FROM ingested_batches WHERE collector = ?",
                    [collector],
                )
                .fetchone()[0]
            )

        def events() -> int:
            return (
                store.cursor()
                .execute("SELECT count(*) FROM events WHERE collector = ?", [collector])
                .fetchone()[0]
            )

        ingest_until(ingestor, lambda: stored() >= summary.samples and events() >= 2)
        assert stored() == summary.samples
        kinds = {
            r[0]
            for r in store.cursor()
            .execute(
                "SELECT kind FROM events WHERE collector = ? AND device_id = ?", [collector, GPU]
            )
            .fetchall()
        }
        assert kinds == {"xid", "device_lost"}
    finally:
        ingestor.close()
        store.close()
