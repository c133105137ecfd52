"""`dctwin optimize train|evaluate` end to end on a tiny site (short runs)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dctwin.cli.main import app


def test_evaluate_without_a_model_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(
        app,
        ["optimize", "evaluate", "--model", str(tmp_path / "no.pkl"), "--days", "0.01", "--quiet"],
    )
    assert r.exit_code == 2
    assert "optimize train" in r.output


@pytest.mark.slow
def test_train_then_evaluate(tmp_path):
    runner = CliRunner()
    model, db = tmp_path / "m.pkl", tmp_path / "h.duckdb"
    r = runner.invoke(
        app,
        [
            "optimize",
            "train",
            "--gpus",
            "64",
            "--db",
            str(db),
            "--model",
            str(model),
            "--periods",
            "1",
            "--period-days",
            "1.5",
            "--step-s",
            "120",
            "--members",
            "2",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["rows_train"] > out["rows_holdout"] > 0
    assert "facility_kw" in out["holdout_error"]
    assert out["data_window"][0].startswith("2024-03-04")
    # a period inside the training history is refused before anything runs
    r = runner.invoke(
        app,
        [
            "optimize",
            "evaluate",
            "--gpus",
            "64",
            "--model",
            str(model),
            "--store",
            str(tmp_path / "x.duckdb"),
            "--start",
            "2024-03-05",
            "--days",
            "0.05",
            "--no-optimum",
            "--quiet",
        ],
    )
    assert r.exit_code == 2 and "not after the end" in r.output, r.output
    assert not (tmp_path / "x.duckdb").exists()
    r = runner.invoke(
        app,
        [
            "optimize",
            "evaluate",
            "--gpus",
            "64",
            "--model",
            str(model),
            "--store",
            str(tmp_path / "e.duckdb"),
            "--start",
            "2025-06-03T06:00",
            "--days",
            "0.05",
            "--step-s",
            "120",
            "--no-optimum",
            "--quiet",
            "--check",
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    # --check: without the optimum its share target cannot pass -> exit 1, report written
    assert r.exit_code == 1, r.output
    assert "zero GPU and coolant limit violations: PASS" in r.output
    assert "true optimum's (facility) savings: FAIL" in r.output
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["decisions"] == 5 and res["ml"]["gpu_violation_steps"] == 0
    # a second training into the same file learns only the period it explored
    r = runner.invoke(
        app,
        [
            "optimize",
            "train",
            "--gpus",
            "64",
            "--db",
            str(db),
            "--model",
            str(model),
            "--start",
            "2024-08-01",
            "--periods",
            "1",
            "--period-days",
            "1.5",
            "--step-s",
            "120",
            "--members",
            "2",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    assert again["data_window"][0].startswith("2024-08-01")
    assert again["rows_train"] + again["rows_holdout"] == out["rows_train"] + out["rows_holdout"]
