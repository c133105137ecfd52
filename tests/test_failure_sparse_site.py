"""A site whose GPUs report only temperature and power (no ECC, row-remap or throttle
metrics: older drivers, a DCGM field subset). Over a real twin store and the real CLI:
the retrain leaves the features the site never reports out of the model (they used to
reach scikit-learn as all-NaN columns and crash its binning), the model it saves scores
the store live as the SQL reference does, so does the shipped default, and a store whose
records cannot train any class stops with a one-line error."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from dctwin.cli.main import app as cli_app
from ingest.store import Store
from twin.failure import registry
from twin.failure.risk import failure_risks
from twin.failure.service import FailureRiskService

RACK = "rk101"
GPUS = [f"sv1/h1/row1/{RACK}/n01/gpu{i}" for i in range(3)]
T0 = datetime(2025, 6, 1)
HOURS = 6
# the GPU features of metrics this site does not report
ABSENT = {
    "throttle_frac_1h",
    "ecc_corr_1h",
    "ecc_corr_rate_15m_ph",
    "ecc_accel",
    "ecc_uncorr_6h",
    "remap_corr_6h",
    "remap_uncorr_6h",
}


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def store_path(tmp_path) -> Path:
    """Three GPUs reporting gpu_temp_c and power_w once a minute for 6 h."""
    path = tmp_path / "site.duckdb"
    store = Store(path)
    try:
        rng = np.random.default_rng(5)
        rows = [
            (T0 + timedelta(seconds=s), dev, metric, float(v), "gpu", RACK)
            for s in range(0, HOURS * 3600, 60)
            for dev in GPUS
            for metric, v in (("gpu_temp_c", rng.normal(65, 2)), ("power_w", rng.normal(400, 20)))
        ]
        store.cursor().executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        store.close()
    return path


def import_and_retrain(store: Path, models: Path, failures: list[tuple[str, float]]):
    """Failure records (device, hours after T0) imported, then `dctwin failure retrain`."""
    csv = store.parent / "records.csv"
    csv.write_text(
        "device_id,serial,time,component,action,failure,notes\n"
        + "".join(f"{dev},,{at(h).isoformat()}Z,gpu,rma,,\n" for dev, h in failures)
    )
    runner = CliRunner()
    res = runner.invoke(cli_app, ["failure", "import-records", str(csv), "--db", str(store)])
    assert res.exit_code == 0, res.output
    return runner.invoke(
        cli_app,
        [
            "failure",
            "retrain",
            "--db",
            str(store),
            "--horizon",
            "30m",
            "--no-prior",
            "--registry",
            str(models),
        ],
    )


def test_retrain_leaves_out_unreported_metrics_and_its_model_scores_the_site(store_path, tmp_path):
    models = tmp_path / "models"
    res = import_and_retrain(
        store_path, models, [(GPUS[0], 1.5), (GPUS[2], 2.5), (GPUS[1], 4.5), (GPUS[2], 5.5)]
    )
    # a library exception (the binning's ValueError) is not SystemExit
    assert isinstance(res.exception, SystemExit | None), repr(res.exception)
    assert res.exit_code == 0, res.output
    assert "gpu: 7 feature(s) have no value in the store" in res.output
    [version] = registry.versions(models)
    report = json.loads((version.path / "report.json").read_text())
    assert set(report["unreported_features"]["gpu"]) == ABSENT
    gpu_feats = version.meta["features"]["gpu"]
    assert not ABSENT & set(gpu_feats)
    assert {"temp_c", "temp_dev_c", "power_w"} <= set(gpu_feats)
    model = version.load()
    assert model.classes["gpu"].clf is not None  # trained on what the site does report

    # the candidate, approved by hand, and the shipped default (no approved 1-h model in
    # the site's registry) both score the site, live and by the SQL reference alike
    registry.approve(version.version, models)
    store = Store(store_path)
    try:
        for horizon_s, root, serving in (
            (1800, models, version.version),
            (3600, tmp_path / "no-site-model", registry.shipped_versions()[0].version),
        ):
            svc = FailureRiskService(store, horizon_s, root)
            for hours in (2.0, 5.5):
                now = at(hours)
                assert svc.refresh(now) is True
                assert svc.model_version == serving
                table = svc.table
                assert table is not None and sorted(table["device_id"]) == GPUS
                assert table["risk"].is_finite().all(), table
                ref = failure_risks(store, now, horizon_s, root)
                cols = ["device_id", "risk", "status"]
                assert (
                    table.select(cols).sort("device_id").equals(ref.select(cols).sort("device_id"))
                )
                assert table.filter(pl.col("status") == "lost").is_empty()
    finally:
        store.close()


def test_retrain_that_can_train_no_class_stops_with_one_line(store_path, tmp_path):
    """One failure, in the training slice: the calibration slice has none, so no class
    can be calibrated. The command says so in a line and saves no candidate."""
    models = tmp_path / "models"
    res = import_and_retrain(store_path, models, [(GPUS[0], 2.5)])
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 1, res.output
    [line] = res.output.strip().splitlines()
    assert line.startswith("retrain: no device class could be trained: gpu: ")
    assert "0 failure and" in line and "in the calibration slice" in line
    assert "Traceback" not in res.output
    assert registry.versions(models) == []
