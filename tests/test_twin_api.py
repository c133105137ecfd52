"""Twin endpoints over the app (FastAPI TestClient), fed by the simulator harness."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from ingest.store import Store
from tests.apihelpers import bearer, keys_per_role
from tests.twin_sim import SimHarness
from twin.rollup_history import to_ts
from twin.state import Twin
from twin.twin_config import TwinConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("api") / "api.duckdb")
    h = SimHarness(store)
    # never stale, never re-ticked by reads: the harness's simulated clock lies in the past
    twin = Twin(
        h.site,
        store,
        config=TwinConfig(telemetry_interval_s=10, stale_intervals=1e9, tick_interval_s=1e9),
    )
    start = h.write()
    for _ in range(36):
        twin.tick(h.step(10.0))
    # every /v1 endpoint needs a key (docs/api.md): a viewer key reads all of these
    keys, tokens = keys_per_role(tmp_path_factory.mktemp("keys") / "keys.duckdb")
    yield (
        TestClient(create_app(twin, keys=keys), headers=bearer(tokens[Role.viewer])),
        twin,
        h,
        start,
    )
    store.close()


def iso(ms: int) -> str:
    return to_ts(ms).isoformat() + "Z"


def test_pue_instantaneous_keeps_v0_fields(env):
    client, twin, h, _ = env
    body = client.get("/v1/pue").json()
    for field in ("value", "dcie", "category", "time", "inputs", "stale_inputs", "reason"):
        assert field in body
    assert body["category"] == "PUE3" and body["method"] == "instantaneous"
    # meters report tenths of a kW (Modbus registers): exact to that resolution
    assert body["value"] == pytest.approx(h.sim.plant.facility_kw / h.sim.plant.it_kw, rel=5e-4)
    assert body["quality"]["status"] == "ok" and body["unit"] == "kW"


def test_pue_energy_with_step_and_scopes(env):
    client, twin, h, start = env
    end = h.time_ms
    body = client.get("/v1/pue", params={"start": iso(start), "end": iso(end), "step": "2m"}).json()
    assert body["method"] == "energy" and body["unit"] == "kWh" and body["step_s"] == 120
    assert body["quality"]["coverage"] == 1.0 and body["value"] > 1.0
    assert len(body["series"]) == 3 and all(p["value"] for p in body["series"])
    hall = client.get(
        "/v1/pue", params={"start": iso(start + 10_000), "end": iso(end), "scope": "hall:h1"}
    ).json()
    assert hall["figure"] == "pPUE" and 1.0 < hall["value"] < 1.1
    scopes = {s["scope"] for s in client.get("/v1/pue/scopes").json()}
    assert {"site", "hall:h1", "cooling:chiller_plant", "cooling:all"} <= scopes
    plant = client.get("/v1/pue", params={"scope": "cooling:chiller_plant"}).json()
    assert plant["value"] > 1.0 and plant["figure"] == "pPUE"


def test_bad_parameters_are_4xx_naming_the_parameter(env):
    client, _, h, start = env
    r = client.get("/v1/pue", params={"start": iso(start), "end": iso(start - 1000)})
    assert r.status_code == 422 and "end" in r.json()["detail"]
    r = client.get("/v1/pue", params={"scope": "hall:nowhere"})
    assert r.status_code == 400 and "scope" in r.json()["detail"]
    r = client.get("/v1/pue", params={"start": iso(start), "step": "fortnight"})
    assert r.status_code == 400 and "step" in r.json()["detail"]
    r = client.get(
        "/v1/pue", params={"start": iso(start - 86_400_000 * 30), "end": iso(start), "step": "1s"}
    )
    assert r.status_code == 400 and "step" in r.json()["detail"]
    r = client.get("/v1/series", params={"id": "t1/nowhere", "metric": "power_kw"})
    assert r.status_code == 404 and "id" in r.json()["detail"]
    r = client.get("/v1/series", params={"id": "t1/h1/row1/r11", "metric": "bogus"})
    assert r.status_code == 400 and "metric" in r.json()["detail"]
    assert client.get("/v1/topology/t1/h9").status_code == 404
    assert client.get("/v1/topology", params={"depth": "atoms"}).status_code == 400
    assert client.get("/v1/rollups", params={"level": "floor"}).status_code == 400
    assert client.get("/v1/heat-balance", params={"id": "t1/h1/row1"}).status_code == 404


def test_topology_endpoints(env):
    client, *_ = env
    body = client.get("/v1/topology").json()
    classes = {n["class"] for n in body["nodes"]}
    assert "rack" in classes and "gpu" not in classes
    assert {"chain": "power", "from": "t1/facility/ups", "to": "t1/h1/pdu1"} in body["edges"]
    gpu = client.get("/v1/topology/t1/h1/row2/r22/n03/gpu5").json()
    assert gpu["upstream"]["power"][-4:] == [
        "t1/h1/pdu2",
        "t1/facility/ups",
        "t1/utility",
        "t1/facility/ups/battery",  # the UPS's battery string feeds it too
    ]
    assert "t1/h1/cdu2" in gpu["upstream"]["cooling"]
    assert {r["metric"] for r in gpu["state"]["readings"]} >= {"gpu_temp_c", "power_w"}
    cdu = client.get(
        "/v1/topology/t1/h1/cdu1",
        params={"downstream_class": "gpu", "chain": "cooling", "limit": 10},
    ).json()
    assert cdu["downstream_counts"]["cooling"] == {"rack": 3, "node": 12, "gpu": 96}
    assert cdu["downstream"]["total"] == 96 and len(cdu["downstream"]["ids"]) == 10
    assert cdu["downstream"]["truncated"] is True
    rack = client.get("/v1/topology/t1/h1/row1/r12").json()
    assert rack["state"]["rollup"]["power_kw"] > 0


def test_heat_balance_rollups_and_series(env):
    client, twin, h, start = env
    hb = client.get("/v1/heat-balance").json()
    by_id = {s["id"]: s for s in hb["scopes"]}
    assert set(by_id) == {"t1/h1/cdu1", "t1/h1/cdu2", "t1/h1", "t1"}
    assert all(abs(s["residual_pct"]) < 2 and s["status"] == "ok" for s in hb["scopes"])
    one = client.get(
        "/v1/heat-balance",
        params={"id": "t1/h1/cdu1", "start": iso(start), "end": iso(h.time_ms), "step": "60"},
    ).json()
    assert len(one["scopes"]) == 1 and len(one["scopes"][0]["history"]) >= 5
    roll = client.get("/v1/rollups", params={"level": "row"}).json()
    assert [r["id"] for r in roll["rollups"]] == ["t1/h1/row1", "t1/h1/row2"]
    assert roll["units"]["power_kw"] == "kw"
    s = client.get(
        "/v1/series",
        params={
            "id": "t1/h1/row1/r11",
            "metric": "power_kw",
            "start": iso(start),
            "end": iso(h.time_ms + 1),
            "step": "1m",
        },
    ).json()
    assert s["source"] == "rollup_tick" and sum(p["count"] for p in s["points"]) == 36
    d = client.get(
        "/v1/series",
        params={
            "id": "t1/h1/row1/r11/n01/gpu0",
            "metric": "power_w",
            "start": iso(start),
            "end": iso(h.time_ms + 1),
            "step": "60",
        },
    ).json()
    assert d["source"] == "samples" and sum(p["count"] for p in d["points"]) == 37
    st = client.get("/v1/twin/status").json()
    assert st["rows_tracked"] > 0 and st["tick_ms"]["total"] > 0


def test_reads_while_the_twin_ticks_in_another_thread(tmp_path):
    """The server ticks in a background thread while API threads read: no shared cursor,
    no errors, every read answers."""
    import threading

    store = Store(tmp_path / "threads.duckdb")
    h = SimHarness(store)
    twin = Twin(h.site, store, config=TwinConfig(stale_intervals=1e9, tick_interval_s=1e9))
    start = h.write()
    twin.tick(h.step(10.0))
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    client = TestClient(create_app(twin, keys=keys), headers=bearer(tokens[Role.viewer]))
    errors: list[BaseException] = []

    def ticker() -> None:
        try:
            for _ in range(25):
                twin.tick(h.step(10.0))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=ticker)
    t.start()
    statuses = []
    while t.is_alive():
        end = iso(h.time_ms)
        statuses += [
            client.get(
                "/v1/series",
                params={"id": "t1/h1/row1", "metric": "power_kw", "start": iso(start), "end": end},
            ).status_code,
            client.get(
                "/v1/pue", params={"start": iso(start), "end": end, "scope": "hall:h1"}
            ).status_code,
            client.get("/v1/heat-balance").status_code,
            client.get("/v1/rollups").status_code,
        ]
    t.join()
    store.close()
    assert not errors and statuses and set(statuses) == {200}


def test_heat_map_and_rollups_agree_for_a_rack(env):
    """The heat map (/v1/racks, from the live view) shows the twin's rack rollups, with
    their staleness and completeness rules: the same figures as /v1/rollups."""
    client, twin, _, _ = env
    racks = client.get("/v1/racks").json()["items"]
    assert racks
    for rack in racks[:3]:
        roll = client.get("/v1/rollups", params={"level": "rack", "id": rack["path"]}).json()
        (row,) = roll["rollups"]
        assert rack["gpu_max_temp_c"] == row["gpu_temp_max_c"]
        assert rack["gpu_mean_temp_c"] == row["gpu_temp_mean_c"]
        assert rack["gpus_reporting"] == row["gpus_reporting"]
        assert rack["power_kw"] == row["power_kw"]
    assert any(r["gpu_max_temp_c"] is not None for r in racks)
