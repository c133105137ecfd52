"""Works on day one (the shipped default serves a fresh store) and learns from the site
(maintenance records imported, retrained, promotion gated on the latest period)."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs
from typer.testing import CliRunner

from api.app import create_app
from api.keys import Role
from dctwin.cli.main import app as cli_app
from experiments.failure.dataset import RunSpec, generate
from experiments.failure.default_model import model_card
from experiments.failure.retrain import retrain
from ingest.store import Store
from simulator.sitegen import synthetic_site
from tests.apihelpers import bearer, keys_per_role
from twin.failure import registry
from twin.failure.features import CLASSES, FEATURES
from twin.failure.records import RecordsError, import_records, load_records, parse_records
from twin.failure.service import FailureRiskService
from twin.state import Twin

pytestmark = pytest.mark.slow

GPUS = 64
HOURS = 4.0
STEP_S = 60.0
SEEDS = (1, 2, 3, 4, 5, 6)
HORIZON_S = 1800.0  # no shipped default at 30 min: the gate compares site models only

GOOD_CSV = """device_id,serial,time,component,action,failure,notes
sv1/h1/row1/rk101/n01/gpu0,,2025-03-01T14:05:00Z,gpu,rma,,ECC storm
,SN-PSU-0042,2025-03-02 15:05:00+01:00,psu,replace,true,
sv1/h1/row1/rk101/n01/gpu1,,2025-03-03T09:00:00Z,gpu,reseat,false,checked seating
"""


# ---------------------------------------------------------------- records: schema


def test_bad_csv_rows_rejected_with_row_and_field(tmp_path):
    """Every bad row is named with its row number and field; nothing is imported."""
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "device_id,time,component,action,failure\n"
        "sv1/a/gpu0,2025-03-01T14:05:00Z,gpu,rma,\n"  # row 2: fine
        "sv1/a/gpu1,yesterday,gpu,rma,\n"  # row 3
        "sv1/a/gpu2,2025-03-01T14:05:00,gpu,rma,\n"  # row 4: no zone
        "sv1/a/gpu3,2025-03-01T14:05:00Z,toaster,rma,\n"  # row 5
        "sv1/a/gpu4,2025-03-01T14:05:00Z,gpu,pray,\n"  # row 6
        "sv1/a/gpu5,2025-03-01T14:05:00Z,gpu,rma,maybe\n"  # row 7
        ",2025-03-01T14:05:00Z,gpu,rma,\n"  # row 8: no device, no serial
    )
    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    with pytest.raises(RecordsError) as exc:
        import_records(con, bad)
    errs = exc.value.errors
    assert errs[0] == "row 3, time: 'yesterday' is not an ISO 8601 time", errs
    assert errs[1].startswith("row 4, time: ") and "no time zone" in errs[1]
    assert errs[2].startswith("row 5, component: 'toaster' is not one of")
    assert errs[3].startswith("row 6, action: 'pray' is not one of")
    assert errs[4] == "row 7, failure: 'maybe' is not true or false"
    assert errs[5].startswith("row 8, device_id: empty")
    assert len(errs) == 6
    assert load_records(con).height == 0  # all or nothing: row 2 was not imported either

    header = tmp_path / "header.csv"
    header.write_text("device,when,component\nx,y,z\n")
    with pytest.raises(RecordsError, match=r"row 1 \(header\): unknown column"):
        parse_records(header.read_text())

    # the CLI: exit 1, errors on stderr, nothing imported
    res = CliRunner().invoke(
        cli_app, ["failure", "import-records", str(bad), "--db", str(tmp_path / "cli.duckdb")]
    )
    assert res.exit_code == 1
    assert "row 3, time: 'yesterday' is not an ISO 8601 time" in res.output
    con.close()


def test_good_records_imported_once(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text(GOOD_CSV)
    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    first = import_records(con, path)
    again = import_records(con, path)
    recs = load_records(con)
    con.close()
    assert (first.rows, first.new, again.new) == (3, 3, 0)
    assert recs["failure"].to_list() == [True, True, False]  # rma: failure by default
    # zones normalised to UTC; a serial-only record is kept
    assert str(recs["time"][1]) == "2025-03-02 14:05:00"
    assert recs["serial"][1] == "SN-PSU-0042" and recs["device_id"][1] is None


# ---------------------------------------------------------------- the shipped default


def test_shipped_default_loads_and_its_card_agrees():
    shipped = registry.shipped_versions()
    assert len(shipped) == 1, [v.version for v in shipped]
    v = shipped[0]
    assert v.source == registry.SHIPPED and v.approved and v.meta["horizon_s"] == 3600.0
    import hashlib

    blob = (v.path / "model.joblib").read_bytes()
    assert len(blob) < 2_000_000
    assert hashlib.sha256(blob).hexdigest() == v.meta["model_sha256"]
    assert v.version.endswith(v.meta["model_sha256"][:12])
    model = v.load()
    assert set(model.classes) == set(CLASSES)
    for cls, m in model.classes.items():
        assert m.features == v.meta["features"][cls]
        assert m.threshold == pytest.approx(v.meta["thresholds"][cls])
    # the card is rendered from meta.json alone: every figure in it is the command's
    assert (v.path / "MODEL_CARD.md").read_text() == model_card(v.meta)
    for r in v.meta["validation"]["classes"].values():
        assert f"{r['pr_auc']:.3f}" in (v.path / "MODEL_CARD.md").read_text()
    # the package ships it
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"twin.failure" = ["default_model/*/*"]' in pyproject


def test_model_scores_with_more_feature_columns_than_it_uses():
    """The store may compute features a model does not know (a newer feature set): the
    model reads its own list; a column it knows but the store lacks counts as missing."""
    import polars as pl

    model = registry.shipped_versions()[0].load()
    rows = pl.DataFrame(
        {
            "device_id": ["a", "b"],
            "device_class": ["gpu", "psu"],
            "rack": ["r", "r"],
            "t": [datetime(2025, 1, 1)] * 2,
            **{f: [0.0, 0.0] for c in CLASSES for f in FEATURES[c]},
            "brand_new_feature": [5.0, 5.0],
        }
    )
    a = model.predict(rows)["risk"].to_numpy()
    b = model.predict(rows.drop("brand_new_feature"))["risk"].to_numpy()
    assert np.array_equal(a, b)
    c = model.predict(rows.drop("temp_c"))["risk"].to_numpy()  # a column it lacks
    assert np.isfinite(c).all()


# ---------------------------------------------------------------- the site's store


@pytest.fixture(scope="module")
def site_store(tmp_path_factory) -> tuple[Path, list[tuple[str, str, object]]]:
    """One site over time: short simulator runs of the same site laid end to end in one
    store (samples, events, labels shifted to follow each other). Returns the store and
    its true failures (device_id, class, failure_time)."""
    root = tmp_path_factory.mktemp("site")
    runs = [generate(RunSpec(s, HOURS, STEP_S, GPUS), root / "data") for s in SEEDS]
    path = root / "site.duckdb"
    Store(path).close()  # the twin's schema
    con = duckdb.connect(str(path))
    base = None
    for i, run in enumerate(runs):
        con.execute(f"ATTACH '{run}' AS r{i} (READ_ONLY)")
        start = con.sql(f"SELECT min(read_time) FROM r{i}.samples").fetchall()[0][0]
        base = base or start
        shift = start - (base + timedelta(hours=HOURS * i))  # back to back
        iv = f"INTERVAL {int(shift.total_seconds())} SECOND"
        for table in ("samples", "events"):
            cols = [
                c
                for (c,) in con.sql(
                    f"SELECT column_name FROM information_schema.columns WHERE "
                    f"table_catalog = 'r{i}' AND table_name = '{table}'"
                ).fetchall()
            ]
            sel = ", ".join(
                f"read_time - {iv} AS read_time" if c == "read_time" else c for c in cols
            )
            con.execute(f"INSERT INTO {table} BY NAME SELECT {sel} FROM r{i}.{table}")
        lab = (
            f"SELECT device_id, failure_time - {iv} AS failure_time FROM r{i}.labels "
            "WHERE failure_time IS NOT NULL"
        )
        if i == 0:
            con.execute(f"CREATE TABLE truth AS {lab}")
        else:
            con.execute(f"INSERT INTO truth {lab}")
        con.execute(f"DETACH r{i}")
    fails = [
        (d, _component(d), ft)
        for d, ft in con.sql("SELECT device_id, failure_time FROM truth ORDER BY 2").fetchall()
    ]
    con.close()
    return path, fails


def _component(device_id: str) -> str:
    for c in CLASSES:
        if f"/{c}" in device_id:
            return c
    return "other"


def _write_records(path: Path, fails, wrong_before=None, pools=None) -> Path:
    """A maintenance CSV: an RMA per true failure. With `wrong_before`, records before
    that time name another device of the same class instead (the wrong device was
    written down), so training labels do not match the telemetry's failures."""
    rng = np.random.default_rng(7)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device_id", "time", "component", "action", "notes"])
        for dev, kind, ft in fails:
            if wrong_before is not None and ft < wrong_before:
                dev = str(rng.choice([d for d in pools[kind] if d != dev]))
            w.writerow([dev, ft.isoformat() + "Z", kind, "rma", ""])
    return path


def test_retrain_promotion_refused_when_worse_accepted_when_better(site_store, tmp_path):
    path, fails = site_store
    con = duckdb.connect(str(path), read_only=True)
    t0, t1 = con.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
    pools: dict[str, list[str]] = {}
    for (dev,) in con.sql("SELECT DISTINCT device_id FROM samples ORDER BY 1").fetchall():
        pools.setdefault(_component(dev), []).append(dev)
    con.close()
    # labels wrong over training and calibration (the first 3/4), right in the held-out
    # quarter, where both models are judged against the telemetry's real failures
    cut = t0 + (t1 - t0) * 0.75
    right = _write_records(tmp_path / "right.csv", fails)
    wrong = _write_records(tmp_path / "wrong.csv", fails, cut, pools)
    stores = {}
    for name, recs in (("right", right), ("wrong", wrong)):
        stores[name] = tmp_path / f"{name}.duckdb"
        stores[name].write_bytes(path.read_bytes())
        res = CliRunner().invoke(
            cli_app, ["failure", "import-records", str(recs), "--db", str(stores[name])]
        )
        assert res.exit_code == 0, res.output
    models = tmp_path / "models"

    def run(name: str):
        con = duckdb.connect(str(stores[name]), read_only=True)
        # one OpenMP thread: on a loaded 2-core machine the trees' spinning threads cost
        # 20x the CPU (65 s instead of 3 s a fit)
        try:
            with threadpool_limits(1):
                return retrain(con, models, HORIZON_S, prior_seeds=None)
        finally:
            con.close()

    # no serving model at 30 min: the wrong records' model must beat chance, and does not
    poor = run("wrong")
    assert not poor.promoted and "no better than chance" in poor.reason, poor.reason
    with pytest.raises(registry.RegistryError):
        registry.newest_approved(models, HORIZON_S)
    # an operator approves it by hand anyway: a poor model serves
    registry.approve(poor.version.version, models)
    assert registry.newest_approved(models, HORIZON_S).version == poor.version.version

    # right records: better on the held-out period than the serving model -> promoted
    good = run("right")
    assert good.promoted, good.reason
    assert registry.newest_approved(models, HORIZON_S).version == good.version.version
    rep = json.loads((good.version.path / "report.json").read_text())
    assert rep["decision"] == "promoted" and rep["serving"]["version"] == poor.version.version
    judged = rep["judged_classes"]
    assert judged
    cand = np.mean([rep["candidate"]["classes"][c]["pr_auc"] for c in judged])
    serv = np.mean([rep["serving"]["classes"][c]["pr_auc"] for c in judged])
    assert cand > serv
    assert good.version.meta["promotion"]["decision"] == "promoted"

    # wrong records again: worse than the serving (good) model -> refused, good stays
    worse = run("wrong")
    assert not worse.promoted
    assert "not above the serving model" in worse.reason or "lose" in worse.reason
    assert registry.newest_approved(models, HORIZON_S).version == good.version.version
    rep = json.loads((worse.version.path / "report.json").read_text())
    assert rep["decision"] == "refused" and rep["serving"]["version"] == good.version.version
    assert not registry.get(worse.version.version, models).approved


# ---------------------------------------------------------------- day one: API


def test_failure_risk_answers_with_shipped_default_on_a_fresh_store(site_store, tmp_path):
    """No approved model in the site's registry: the shipped default serves, and the
    API says so (`model` in /v1/failure-risk, /v1/failure-models, device state)."""
    path, _ = site_store
    store = Store(path)
    try:
        site = synthetic_site(GPUS, racks_per_row=1, rows_per_hall=2)
        keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
        empty = tmp_path / "no-models"
        risk = FailureRiskService(store, 3600, empty)
        client = TestClient(
            create_app(Twin(site, store), keys=keys, failure_risk=risk),
            headers=bearer(tokens[Role.viewer]),
        )
        shipped = registry.shipped_versions()[0]
        r = client.get("/v1/failure-risk", params={"horizon": "1h"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == shipped.version and len(body["devices"]) > GPUS
        assert body["model"]["source"] == "shipped_default"
        assert body["model"]["validation"]["method"].startswith("held-out simulator seeds")
        assert set(body["model"]["validation"]["classes"]) == set(CLASSES)
        models = client.get("/v1/failure-models").json()
        assert models["serving"]["version"] == shipped.version
        assert [m["source"] for m in models["models"]] == ["shipped_default"]
        dev = body["devices"][0]["device_id"]
        state = client.get(f"/v1/devices/{dev}").json()["failure_risk"]
        assert state["model_version"] == shipped.version
        assert state["model_source"] == "shipped_default"
    finally:
        store.close()
