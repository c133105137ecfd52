"""Anomaly incidents (issue 20): alarms grouped into one incident per problem, with a root
cause, resolution, persistence across restarts, one alert per incident, the API shape and
the warm start. Real simulator data through the real scorer, a real DuckDB store, real
HTTP for the server test."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from domain.site import load_site
from experiments.anomaly.matching import MatchConfig, match_incidents, summarize_incidents
from experiments.simulate import run_simulation
from ingest.store import Store
from simulator.model import SiteSimulator
from tests.apihelpers import bearer, keys_per_role, serve
from twin.alerts.context import Providers
from twin.alerts.rules import parse_rules
from twin.alerts.service import AlertService
from twin.anomaly.incidents import IncidentConfig, IncidentTracker
from twin.anomaly.service import AnomalyService, AnomalyServiceConfig, incidents_provider
from twin.state import Twin

SITE = Path(__file__).parent / "data" / "anomaly_site.toml"
START = datetime(2025, 7, 7, tzinfo=UTC)
CDU = "t1/h1/cdu-row1"
# the pump of row 1's CDU fails outright 2.3 h in: flow collapses, its 16 GPUs heat up
SPEC = f"pump_degradation@{CDU}:onset=2.3h,fail_after=60,severity=1,redundant=0"


def _simulate(path: Path, hours: float, step_s: float, faults: str | None) -> None:
    site = load_site(SITE)
    sim = SiteSimulator(
        site, seed=11, start_time_s=START.timestamp(), faults=faults, horizon_s=hours * 3600.0
    )
    run_simulation(sim, hours, path, step_s=step_s, fmt="duckdb", faults=faults, progress=False)


@pytest.fixture(scope="module")
def cdu_store(tmp_path_factory) -> Path:
    """3 h of the small test site at 30 s with a CDU pump failing at 2.3 h."""
    path = tmp_path_factory.mktemp("incidents") / "site.duckdb"
    _simulate(path, 3.0, 30.0, SPEC)
    return path


# incident frames of independent scoring runs over copies of the same store (determinism)
RUNS: list[pl.DataFrame] = []


def _config() -> AnomalyServiceConfig:
    return AnomalyServiceConfig(interval_s=30.0, train_s=2 * 3600.0, lag_s=0.0)


def _scored(path: Path, sink=None) -> tuple[AnomalyService, Store]:
    store = Store(path)
    live = AnomalyService(load_site(SITE), store, _config(), sink=sink)
    live.refresh(START + timedelta(hours=2))  # trains
    live.refresh(START + timedelta(hours=3))  # scores the last hour
    RUNS.append(live.incidents.frame())
    # same data, same incidents, ids included, whichever run (the evaluation relies on it)
    assert all(r.equals(RUNS[0]) for r in RUNS)
    return live, store


@pytest.mark.slow
def test_a_cdu_fault_is_one_incident_rooted_at_the_cdu_with_the_api_shape(cdu_store, tmp_path):
    path = tmp_path / "site.duckdb"
    shutil.copy(cdu_store, path)
    parts: list[pl.DataFrame] = []
    live, store = _scored(path, sink=parts.append)
    try:
        scores = pl.concat(parts)
        alarming = scores.filter(
            (pl.col("score") >= 0.6) & pl.col("device_id").str.starts_with("t1/h1/row1/")
        )["device_id"].n_unique()
        # the fan-out: the CDU's GPUs alarm too. Issue 20 part anom2: fewer than before
        # (>= 10): with the flow gone, the GPUs' rack heat per flow leaves the range their
        # thermal fit saw, and extrapolated evidence fades. After the 2000-2004 held-out
        # run (smoothed spreads floored at the noise floor, docs/anomaly.md): the PSUs'
        # one-degree temperature alarms are gone, in row 1 and in row 2 alike (row 2 is
        # not cooled by this CDU; they were two false incidents there)
        assert alarming >= 4
        every = live.incident_list("all", 100)
        mine = [i for i in every if CDU in {a["device_id"] for a in i["alarms"]}]
        assert len(mine) == 1, [i["root_cause"] for i in mine]
        (inc,) = mine
        assert inc["root_cause"]["device_id"] == CDU
        assert inc["devices"] >= 2 and inc["state"] == "open"
        # nothing outside the faulted CDU's row opens an incident
        assert all(
            i["root_cause"]["device_id"].startswith("t1/h1/row1/") for i in every if i is not inc
        )
        # a row-1 GPU that starts alarming within the join window of the incident's latest
        # new device joins it; one that starts later opens its own (the join window's
        # limit: before the floor, the PSU temperature alarms kept this incident growing
        # and every row-1 GPU joined it)
        join = timedelta(seconds=live.config.incidents.join_intervals * live.config.interval_s)
        latest = max(a["first_alarm"] for a in inc["alarms"])
        others = [
            i
            for i in every
            if i is not inc
            and i["root_cause"]["device_id"].startswith("t1/h1/row1/")
            and i["root_cause"]["device_class"] == "gpu"
        ]
        assert all(i["opened"] > latest + join for i in others), (latest, others)
        relations = {a["relation"] for a in inc["alarms"] if a["device_id"] != CDU}
        assert "child" in relations

        # the API: incidents with their alarms, one incident by id, 404 problem for another
        keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
        client = TestClient(
            create_app(Twin(live.site, store), keys=keys, anomaly=live),
            headers=bearer(tokens[Role.viewer]),
        )
        body = client.get("/v1/anomalies", params={"limit": 5}).json()
        assert body["warming_up"] is False and body["items"]
        got = next(i for i in body["incidents"] if i["id"] == inc["id"])
        assert got["root_cause"]["device_id"] == CDU and got["severity"] == "critical"
        assert got["opened"].endswith("Z") or "+00:00" in got["opened"]
        assert len(got["alarms"]) == got["devices"] and got["suspects"][0] == got["root_cause"]
        assert {"metric", "component", "peak_score", "relation"} <= set(got["alarms"][0])
        one = client.get(f"/v1/anomalies/incidents/{inc['id']}")
        assert one.status_code == 200 and one.json()["id"] == inc["id"]
        missing = client.get("/v1/anomalies/incidents/inc-nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert "inc-nope" in missing.json()["detail"]
        none = client.get("/v1/anomalies", params={"incidents": "none"}).json()
        assert none["incidents"] == []
        assert client.get("/v1/anomalies", params={"incidents": "some"}).status_code == 422

        # the live service and a replay of its score stream agree (what the evaluation uses)
        replay = IncidentTracker(live.site, IncidentConfig())
        for p in parts:
            replay.update(p)
        assert replay.frame().equals(live.incidents.frame())
    finally:
        store.close()


@pytest.mark.slow
def test_incidents_persist_across_a_restart_and_fire_one_alert_each(cdu_store, tmp_path):
    path = tmp_path / "site.duckdb"
    shutil.copy(cdu_store, path)
    live, store = _scored(path)
    before = {i["id"]: i for i in live.incident_list("all", 100)}
    assert before
    end = START + timedelta(hours=3)

    # one alert per open incident, naming its root cause; a second evaluation adds none
    rules, _ = parse_rules(
        """
rules:
  - name: AnomalyIncident
    kind: anomaly_incident
    annotations: {summary: "{incident_id}: {device_id} ({root_metric}), {devices} devices"}
""",
        "test.yaml",
    )
    alerts = AlertService(
        Store(tmp_path / "alerts.duckdb"),
        live.site,
        rules,
        [],
        providers=Providers(anomaly_incidents=incidents_provider(live)),
        external_url="http://twin.test",
    )
    fired = alerts.evaluate(end.replace(tzinfo=None)).new
    open_ids = {i for i, d in before.items() if d["state"] == "open"}
    assert len(fired) == len(open_ids)
    by_root = {a.labels["device_id"] for a in fired}
    assert CDU in by_root
    cdu_alert = next(a for a in fired if a.labels["device_id"] == CDU)
    assert cdu_alert.annotations["summary"].startswith("inc-")
    assert not alerts.evaluate(end.replace(tzinfo=None) + timedelta(seconds=30)).new
    store.close()

    # restart: the incidents come back from DuckDB, open ones still open
    store = Store(path)
    try:
        again = AnomalyService(load_site(SITE), store, _config())
        after = {i["id"]: i for i in again.incident_list("all", 100)}
        assert after.keys() == before.keys()
        for i, d in before.items():
            assert after[i]["state"] == d["state"]
            assert after[i]["root_cause"]["device_id"] == d["root_cause"]["device_id"]
            assert after[i]["devices"] == d["devices"]
    finally:
        store.close()


def _frame(rows: list[tuple[str, int, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "device_id": d,
                "bucket": b,
                "score": s,
                "p": 10 ** (-8 * s),
                "top_metric": "gpu_temp_c",
                "top_component": "gpu_thermal",
            }
            for d, b, s in rows
        ]
    )


def test_tracker_groups_by_topology_and_time_resolves_and_reopens():
    site = load_site(SITE)
    cfg = IncidentConfig(quiet_intervals=5, reopen_intervals=20, join_intervals=3)
    tr = IncidentTracker(site, cfg)
    gpu, mate, far = (
        "t1/h1/row1/rk101/n01/gpu0",
        "t1/h1/row1/rk101/n01/gpu1",
        "t1/h1/row2/rk202/n02/gpu3",
    )
    # a strong alarm opens at once; the node-mate joins; an unrelated GPU opens its own
    tr.update(_frame([(gpu, 100, 0.95), (mate, 101, 0.7), (far, 101, 0.95)]))
    f = tr.frame().sort("opened_bucket", "root_device")
    assert f.height == 2 and f["state"].to_list() == ["open", "open"]
    assert set(f["devices"].to_list()) == {2, 1}
    # a weak, short alarm alone opens nothing (needs open_score or open_streak)
    tr.update(_frame([("t1/h1/row2/rk201/n01/gpu0", 102, 0.65)]))
    assert tr.frame().height == 2
    # quiet for longer than quiet_intervals: resolved at the last alarm + quiet
    tr.update(_frame([(far, 108, 0.1)]))
    f = tr.frame()
    assert f["state"].to_list() == ["resolved", "resolved"]
    assert sorted(f["resolved_bucket"].to_list()) == [101 + 5, 101 + 5]
    # the same device alarming again soon reopens its incident (no new one) ...
    tr.update(_frame([(gpu, 115, 0.95)]))
    f = tr.frame()
    assert f.height == 2 and f.filter(pl.col("state") == "open")["root_device"].to_list() == [gpu]
    # ... a member alarming again stays in it; a related device starting long after the
    # incident last grew opens a new one
    tr.update(_frame([(mate, 116, 0.95), ("t1/h1/row1/rk101/n01/gpu2", 118, 0.95)]))
    f = tr.frame()
    assert f.height == 3
    assert f.filter(pl.col("root_device") == gpu)["devices"].to_list() == [2]
    # persistence round trip
    again = IncidentTracker(site, cfg)
    again.restore(i.to_doc() for i in tr.incidents.values())
    assert again.frame().sort("id").equals(tr.frame().sort("id"))


def test_strict_matching_counts_root_causes_not_alarms():
    """An incident is true only when its root cause is the faulted device or a direct
    parent/child, opened in the fault's window; summaries are the same numbers twice."""
    site = load_site(SITE)
    tr = IncidentTracker(site, IncidentConfig())
    devices = tr.rel
    labels = pl.DataFrame(
        {
            "fault_id": ["f1"],
            "fault": ["pump_degradation"],
            "device_id": [CDU],
            "device_class": ["cdu"],
            "metric": [None],
            "onset": [datetime(1970, 1, 1) + timedelta(seconds=100 * 30)],
            "failure_time": [None],
            "signature": ["gradual"],
        },
        schema_overrides={"metric": pl.String, "failure_time": pl.Datetime("us")},
    )
    gpu = next(iter(devices.children[CDU]))
    other = "t1/h1/row2/rk202/n02/gpu3"
    inc = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "opened_bucket": [101, 120, 90, 130],
            "root_device": [CDU, gpu, CDU, other],
            "devices": [5, 1, 1, 1],
        }
    )
    from twin.anomaly.frames import device_table

    dt = device_table(site)
    runs = [match_incidents(inc, labels, dt, devices, 30.0, 400, MatchConfig()) for _ in range(2)]
    faults, verdict = runs[0]
    assert verdict.sort("id")["true_strict"].to_list() == [True, True, False, False]
    assert faults["detected"].to_list() == [True] and faults["delay_intervals"].to_list() == [1]
    assert faults["incidents"].to_list() == [2]
    s = [summarize_incidents(f, v, healthy_incidents=3, healthy_days=1.5) for f, v in runs]
    assert s[0] == s[1]
    assert s[0]["precision_strict"] == 0.5 and s[0]["false_incidents_per_healthy_day"] == 2.0


def test_no_history_says_warming_up_and_how_much_is_needed(tmp_path):
    store = Store(tmp_path / "empty.duckdb")
    try:
        site = load_site(SITE)
        live = AnomalyService(site, store)
        keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
        client = TestClient(
            create_app(Twin(site, store), keys=keys, anomaly=live),
            headers=bearer(tokens[Role.viewer]),
        )
        body = client.get("/v1/anomalies").json()
        assert body["warming_up"] is True and body["items"] == [] and body["incidents"] == []
        assert body["history_needed_s"] == 3600.0 and body["history_s"] == 0.0
        assert body["status"].startswith("warming up: 0 of 60 min")
    finally:
        store.close()


@pytest.mark.slow
def test_restarted_server_on_a_store_with_history_scores_at_once(settings, tmp_path):
    """`dctwin serve`'s Server on a store that already holds 70 min of telemetry: anomaly
    scores are in /v1/anomalies over real HTTP within one twin tick of the first refresh,
    not after an hour of warm-up."""
    from dctwin.server import Server

    _simulate(tmp_path / "history.duckdb", 70 / 60, 10.0, None)
    settings.site_file = SITE
    settings.db_path = tmp_path / "history.duckdb"
    settings.apikey_db = tmp_path / "keys.duckdb"
    settings.alerts_topic = ""
    settings.failure_models = tmp_path / "models"
    settings.twin_tick_s = 1.0
    server = Server(settings)
    try:
        _, token = server.keys.create("warm", "viewer")
        t0 = time.monotonic()
        server.start_jobs()
        with (
            serve(server.uvicorn_server().config.app) as url,
            httpx.Client(base_url=url, headers=bearer(token)) as c,
        ):
            body: dict = {}
            while time.monotonic() - t0 < 60:
                body = c.get("/v1/anomalies").json()
                if body["items"]:
                    break
                time.sleep(0.2)
            took = time.monotonic() - t0
            assert body["items"], body
            assert body["warming_up"] is False
            assert body["status"].startswith("scored up to")
            assert took < 60, took  # not after an hour of warm-up
    finally:
        server.stop()
    # the first refresh fits *and* scores (before, it fitted, then scored only at the next
    # interval): one refresh on that store, by itself, returns scored intervals
    store = Store(tmp_path / "history.duckdb")
    try:
        live = AnomalyService(load_site(SITE), store)
        assert live.refresh() >= 1 and live.fitted, live.status
        assert live.status.startswith("scored up to"), live.status
    finally:
        store.close()
