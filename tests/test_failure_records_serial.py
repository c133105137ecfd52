"""Maintenance records given by serial only label the slot the part was in at the
record's time (the twin's part tenures); records no tenure places are reported. Over a
real twin store: inventory events as ingest stores them, the part history's tenures,
records imported from a CSV, the retrain's labelling and its CLI."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from dctwin.cli.main import app as cli_app
from domain.contract import Event, EventBatch, EventKind
from experiments.failure.retrain import site_rows
from ingest.store import Store
from twin.failure.records import import_records, load_records, place_by_serial
from twin.parts import PartHistory

RACK = "rk101"
A, B, C = (f"sv1/h1/row1/{RACK}/n01/gpu{i}" for i in range(3))
T0 = datetime(2025, 6, 1)
HOURS = 6
HORIZON_S = 1800.0
_seq = itertools.count()


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def inventory(store: Store, device: str, t: datetime, uuid: str, serial: str) -> None:
    """An inventory report, stored as ingest stores an event batch."""
    ms = int((t - datetime(1970, 1, 1)).total_seconds() * 1000)
    batch = EventBatch(
        collector="test",
        site="sv1",
        rack=RACK,
        seq=next(_seq),
        sent_time_ms=0,
        events=[
            Event(
                device_id=device,
                kind=EventKind.inventory,
                severity="info",
                read_time_ms=ms,
                attrs={"uuid": uuid, "serial": serial},
            )
        ],
    )
    store.write([], [batch], {})


@pytest.fixture
def site(tmp_path) -> Path:
    """Three GPU slots reporting for 6 h. Part S-100 sits in A, then moves to B at 3 h
    (B's S-200 leaves the site); A gets a new part S-400 at 3 h 5 min."""
    path = tmp_path / "site.duckdb"
    store = Store(path)
    try:
        rng = np.random.default_rng(3)
        rows = [
            (T0 + timedelta(seconds=s), dev, metric, float(v), "gpu", RACK)
            for s in range(0, HOURS * 3600, 60)
            for dev in (A, B, C)
            for metric, v in (
                ("gpu_temp_c", rng.normal(65, 2)),
                ("power_w", rng.normal(400, 20)),
                ("throttle_reasons", 0.0),
                ("ecc_corrected_total", s // 600),
                ("ecc_uncorrected_total", 0.0),
                ("remapped_rows_correctable", 0.0),
                ("remapped_rows_uncorrectable", 0.0),
            )
        ]
        store.cursor().executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)", rows)
        ph = PartHistory(store)
        inventory(store, A, T0, "GPU-u1", "S-100")
        inventory(store, B, T0, "GPU-u2", "S-200")
        inventory(store, C, T0, "GPU-u3", "S-300")
        ph.update()
        inventory(store, B, at(3), "GPU-u1", "S-100")  # moved from A
        inventory(store, A, at(3) + timedelta(minutes=5), "GPU-u4", "S-400")
        ph.update()
        assert [(h["serial"], h["removed_at"]) for h in ph.slot_history(A)] == [
            ("S-100", at(3)),
            ("S-400", None),
        ]
    finally:
        store.close()
    (tmp_path / "records.csv").write_text(
        "device_id,serial,time,component,action,failure,notes\n"
        f",S-100,{at(1.5).isoformat()}Z,gpu,rma,,in slot A then\n"
        f",S-100,{at(4.5).isoformat()}Z,gpu,rma,,moved to slot B since\n"
        f",S-999,{at(2).isoformat()}Z,gpu,rma,,a serial no slot ever reported\n"
        f",S-200,{at(5).isoformat()}Z,gpu,replace,,left the site at 3 h\n"
        f"{C},,{at(2.5).isoformat()}Z,gpu,rma,,by device id\n"
        f",gpu-U3,{at(5.5).isoformat()}Z,gpu,rma,,the UUID copied in the serial column\n"
        f",S-400,{at(4).isoformat()}Z,gpu,inspect,,not a failure: labels nothing\n"
    )
    return path


def test_serial_only_records_label_the_slot_the_part_was_in(site):
    con = duckdb.connect(str(site))
    import_records(con, site.parent / "records.csv")
    recs, unplaced = place_by_serial(con, load_records(con))
    by_note = dict(zip(recs["notes"], recs["device_id"], strict=True))
    assert by_note["in slot A then"] == A
    assert by_note["moved to slot B since"] == B  # the same serial, each at its own time
    assert by_note["the UUID copied in the serial column"] == C
    assert by_note["not a failure: labels nothing"] == A
    assert by_note["a serial no slot ever reported"] is None
    assert by_note["left the site at 3 h"] is None
    reasons = dict(zip(unplaced["serial"], unplaced["reason"], strict=True))
    assert reasons == {
        "S-999": "no slot ever reported this serial or UUID",
        "S-200": f"in no slot at that time (left {B} at {at(3).isoformat()})",
    }

    # the retrain's training rows: a positive row for each placed failure, in its slot
    rows, info = site_rows(con, HORIZON_S)
    con.close()
    pos = rows.filter(pl.col("y") == 1)
    assert set(pos.select("device_id", "failure_time").unique().iter_rows()) == {
        (A, at(1.5)),
        (B, at(4.5)),
        (C, at(2.5)),
        (C, at(5.5)),
    }
    # each positive row lies within the horizon before its failure
    lead_s = (pos["failure_time"] - pos["t"]).dt.total_seconds()
    assert lead_s.min() > 0 and lead_s.max() <= HORIZON_S
    assert pos.filter((pl.col("device_id") == B) & (pl.col("t") < at(3))).is_empty()
    assert info["failure_records"] == 4
    assert (info["failure_records_by_serial"], info["placed_by_serial"]) == (5, 3)
    assert info["unresolved_serial_only"] == 2
    assert [e["serial"] for e in info["unresolved_examples"]] == ["S-999", "S-200"]


def test_retrain_cli_reports_records_it_could_not_place(site, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        cli_app, ["failure", "import-records", str(site.parent / "records.csv"), "--db", str(site)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli_app,
        [
            "failure",
            "retrain",
            "--db",
            str(site),
            "--horizon",
            "30m",
            "--no-prior",
            "--registry",
            str(tmp_path / "models"),
        ],
    )
    import traceback

    assert res.exit_code == 0, "".join(traceback.format_exception(*res.exc_info))
    assert "3 of 5 failure record(s) given by serial placed in their slot" in res.output
    assert "2 not placed" in res.output and "S-999" in res.output
    assert "warning: 2 failure record(s) given by serial could not be placed" in res.output
    [report] = (tmp_path / "models").glob("*/report.json")
    rep = json.loads(report.read_text())["records"]
    assert rep["unresolved_serial_only"] == 2 and rep["placed_by_serial"] == 3
    assert {e["serial"] for e in rep["unresolved_examples"]} == {"S-999", "S-200"}
