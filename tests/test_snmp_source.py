"""SNMP source against a real agent: snmpsim's command responder on loopback (UDP).

The agent serves hand-written recordings (tests/data/snmp/*.snmprec) laid out by the MIB
definitions: ups.snmprec by UPS-MIB (RFC 1628), pdu.snmprec by the example PDU layout
of maps/pdu-generic.toml, broken.snmprec a UPS with wrong types and a missing object.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from collectors.base import Readings, now_ms
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig, load_collector_config
from collectors.sources import build_source
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from collectors.sources.snmp.source import SHIPPED_MAPS, SnmpError, SnmpSource
from domain.contract import RANGES, EventKind, Kind
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.helpers import ingest_until
from tests.snmp_agent import V3_AUTH_KEY, V3_PRIV_KEY, V3_USER, SnmpAgent, free_udp_port

UPS = "sv1/facility/ups1"
# ups.snmprec, converted by hand from the MIB's units
UPS_EXPECTED = {
    "battery_status": 2.0,  # batteryNormal(2)
    "battery_time_on_battery_s": 125.0,
    "battery_runtime_s": 2520.0,  # 42 min
    "battery_charge_pct": 87.0,
    "battery_voltage_v": 272.4,  # 2724 x 0.1 V
    "battery_current_a": -3.5,  # -35 x 0.1 A
    "battery_temp_c": 29.0,
    "input_line_bads_total": 3.0,
    "frequency_hz": 49.9,  # input line 1: 499 x 0.1 Hz
    "input_voltage_v": 231.0,  # input line 1
    "on_battery": 1.0,  # upsOutputSource = battery(5)
    "output_voltage_v": 230.0,  # output line 1
    "output_current_a": 12.5,  # output line 1: 125 x 0.1 A
    "output_power_w": 8400.0,  # 2800 + 2950 + 2650 W over the three lines
    "output_load_pct": 45.0,  # the most loaded line
    "alarms_present": 1.0,
    "battery_test_result": 1.0,  # donePass(1)
}


@pytest.fixture(scope="module")
def agent() -> Iterator[SnmpAgent]:
    with SnmpAgent() as a:
        yield a


def ups_config(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "snmp",
        "name": "ups1",
        "host": "127.0.0.1",
        "port": port,
        "community": "ups",
        "map": "ups-mib",
        "device_id": UPS,
        "rack": "facility",
        "timeout_s": 0.5,
        "retries": 0,
        **extra,
    }


def make(raw: dict[str, Any]) -> SnmpSource:
    src = build_source(raw, 0)
    assert isinstance(src, SnmpSource)
    return src


def by_metric(r: Readings) -> dict[str, float]:
    out = dict(zip(r.metric, r.value, strict=True))
    assert len(out) == len(r), "a metric was read twice"
    return out


def test_v2c_ups_reads_every_mib_object_in_contract_units(agent):
    src = make(ups_config(agent.port))
    try:
        t0 = now_ms()
        r = src.read()
        t1 = now_ms()
    finally:
        src.close()
    assert by_metric(r) == UPS_EXPECTED
    assert all(t0 <= t <= t1 for t in r.read_time_ms)  # when the agent answered
    assert set(r.device_id) == {UPS} and set(r.rack) == {"facility"}
    assert set(r.kind) == {Kind.power}
    for metric, value in zip(r.metric, r.value, strict=True):
        lo, hi = RANGES[Kind.power][metric]
        assert lo <= value <= hi, metric
    assert r.events == [] and not src.errors


def test_v3_auth_priv_with_keys_from_env_and_file(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("UPS1_SNMP_AUTH", V3_AUTH_KEY)
    key_file = tmp_path / "priv.key"
    key_file.write_text(V3_PRIV_KEY + "\n")
    raw = ups_config(
        agent.port,
        version="3",
        user=V3_USER,
        auth_protocol="sha256",
        auth_key={"env": "UPS1_SNMP_AUTH"},
        priv_protocol="aes",
        priv_key={"file": str(key_file)},
        context_name="ups",  # snmpsim picks the recording by v3 context name
    )
    del raw["community"]
    src = make(raw)
    try:
        assert by_metric(src.read()) == UPS_EXPECTED
        assert by_metric(src.read()) == UPS_EXPECTED  # engine discovery happens once
    finally:
        src.close()
    assert not src.errors


def test_wrong_community_is_a_counted_timeout(agent):
    """A v2c agent drops requests with an unknown community: it looks like silence."""
    src = make(ups_config(agent.port, community="not-the-community", timeout_s=0.3))
    try:
        t0 = time.monotonic()
        with pytest.raises(SnmpError, match="no answer .* within 0.3 s") as info:
            src.read()
        assert time.monotonic() - t0 < 2.0  # one request's timeout, not one per OID
        assert info.value.reason == "timeout"
        with pytest.raises(SnmpError):
            src.read()
    finally:
        src.close()
    assert src.errors == {"timeout": 2}


@pytest.mark.parametrize(
    ("user", "auth_key", "priv_key"),
    [
        (V3_USER, "wrong-auth-key", V3_PRIV_KEY),
        ("nobody-here", V3_AUTH_KEY, V3_PRIV_KEY),
        (V3_USER, V3_AUTH_KEY, "wrong-priv-key"),
    ],
    ids=["wrong-auth-key", "unknown-user", "wrong-priv-key"],
)
def test_rejected_v3_credentials_are_a_counted_auth_error(agent, user, auth_key, priv_key):
    raw = ups_config(
        agent.port,
        version="3",
        user=user,
        auth_protocol="sha256",
        auth_key=auth_key,
        priv_protocol="aes",
        priv_key=priv_key,
        context_name="ups",
    )
    src = make(raw)
    try:
        with pytest.raises(SnmpError, match="credentials rejected") as info:
            src.read()
    finally:
        src.close()
    assert info.value.reason == "auth"
    assert src.errors == {"auth": 1}


def test_unresolvable_host_is_a_counted_agent_error():
    src = make(ups_config(161, host="no-such-ups.invalid"))
    try:
        with pytest.raises(SnmpError, match="no-such-ups.invalid:161: cannot resolve"):
            src.read()
    finally:
        src.close()
    assert src.errors == {"agent": 1}


def test_sample_config_builds_with_its_secrets_from_the_environment(monkeypatch):
    sample = load_collector_config(SHIPPED_MAPS.parent / "sample.toml")
    monkeypatch.setenv("UPS1_SNMP_AUTH_KEY", "a" * 12)
    monkeypatch.setenv("UPS1_SNMP_PRIV_KEY", "p" * 12)
    src = make(sample.sources[0])
    src.close()
    assert src.config.version == "3" and len(src.config.objects) == len(UPS_EXPECTED)
    monkeypatch.delenv("UPS1_SNMP_PRIV_KEY")
    with pytest.raises(ValueError, match="priv_key.*UPS1_SNMP_PRIV_KEY is not set"):
        build_source(sample.sources[0], 0)


V3 = {
    "version": "3",
    "user": V3_USER,
    "auth_protocol": "sha256",
    "auth_key": V3_AUTH_KEY,
    "priv_protocol": "aes",
    "priv_key": V3_PRIV_KEY,
    "context_name": "ups",
}


@pytest.mark.parametrize("extra", [{}, V3], ids=["v2c", "v3"])
def test_agent_killed_then_restarted(extra):
    """A dead agent is a counted timeout; the same source reads again once it is back
    (over v3 too, where the restarted agent has a new engine boot count and time)."""
    with SnmpAgent() as a:
        src = make(ups_config(a.port, timeout_s=0.3, **extra))
        try:
            assert by_metric(src.read()) == UPS_EXPECTED
            a.stop()
            with pytest.raises(SnmpError, match="no answer") as info:
                src.read()
            assert info.value.reason == "timeout"
            a.start()
            assert by_metric(src.read()) == UPS_EXPECTED
        finally:
            src.close()
    assert src.errors == {"timeout": 1}


def test_wrong_types_and_missing_objects_lose_only_themselves(agent, caplog):
    src = make(ups_config(agent.port, community="broken"))
    try:
        with caplog.at_level("WARNING", logger="collectors.sources.snmp.source"):
            first = src.read()
            second = src.read()
    finally:
        src.close()
    got = by_metric(first)
    # the other objects of the recording read normally
    assert got == {
        "battery_status": 2.0,
        "battery_time_on_battery_s": 0.0,
        "battery_runtime_s": 3300.0,
        "battery_voltage_v": 273.6,
        "battery_current_a": 0.0,
        "input_line_bads_total": 0.0,
        "frequency_hz": 50.0,
        "input_voltage_v": 230.0,
        "on_battery": 0.0,  # normal(3)
        "output_voltage_v": 230.0,
        "output_current_a": 8.0,
        "output_load_pct": 18.0,
        "alarms_present": 0.0,
    }
    # charge is an OctetString "87%", output power a "1.8 kW" string, the test result an
    # OID; the battery temperature is not there at all
    assert src.errors == {"wrong_type": 6, "no_such_object": 2}  # two passes
    [event] = first.events
    assert event.kind == EventKind.source_error and event.device_id == UPS
    assert (event.attrs["wrong_type"], event.attrs["no_such_object"]) == (3, 1)
    assert event.attrs["failed"] == 4 and event.attrs["source"] == "ups1"
    assert "upsEstimatedChargeRemaining" in event.message
    assert second.events == []  # the same failures again: counted, not re-announced
    assert first.failed_parts == second.failed_parts == 4  # and by the daemon, each read
    assert by_metric(second) == got
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "upsBatteryTemperature (1.3.6.1.2.1.33.1.2.7.0): no_such_object" in logged
    assert "upsOutputPower (1.3.6.1.2.1.33.1.4.4.1.4).1: wrong_type" in logged
    assert len(caplog.records) == 4  # one line per failing object, on the first pass only


def test_pdu_outlet_table_walk(agent):
    src = make(
        {
            "type": "snmp",
            "name": "pdu-a",
            "host": "127.0.0.1",
            "port": agent.port,
            "community": "pdu",
            "map": "pdu-generic",
            "device_id": "sv1/r12/pdu-a",
            "rack": "r12",
            "max_repetitions": 3,  # 4 outlets: the walk needs two GETBULK rounds
            "timeout_s": 0.5,
        }
    )
    try:
        r = src.read()
    finally:
        src.close()
    rows = {(d, m): v for d, m, v in zip(r.device_id, r.metric, r.value, strict=True)}
    assert len(rows) == len(r) == 4 + 4 * 5
    pdu = "sv1/r12/pdu-a"
    assert rows[(pdu, "power_w")] == 1234.0
    assert rows[(pdu, "current_a")] == 5.4
    assert rows[(pdu, "voltage_v")] == 229.8
    assert rows[(pdu, "energy_kwh")] == 9876.5
    expected = {
        # outlet: (on, W, A, V, kWh)
        1: (1.0, 410.0, 1.8, 229.7, 3210.1),
        2: (1.0, 385.0, 1.69, 229.8, 3001.1),
        3: (0.0, 0.0, 0.0, 229.9, 0.5),
        4: (1.0, 439.0, 1.93, 229.6, 3664.8),
    }
    for n, (on, w, a, v, kwh) in expected.items():
        dev = f"{pdu}/outlet{n}"
        assert (rows[(dev, "outlet_on")], rows[(dev, "power_w")]) == (on, w)
        assert (rows[(dev, "current_a")], rows[(dev, "voltage_v")]) == (a, v)
        assert rows[(dev, "energy_kwh")] == kwh
    assert not src.errors and r.events == []


def test_config_errors_name_the_field(tmp_path, monkeypatch):
    base = {"type": "snmp", "host": "h", "device_id": "d", "rack": "r", "kind": "power"}
    with pytest.raises(ValueError, match=r"objects\[0\]\.metric: 'nope' is not a power metric"):
        build_source({**base, "objects": [{"metric": "nope", "oid": "1.3.6.1.2.1.1.0"}]}, 0)
    with pytest.raises(ValueError, match="exactly one of oid .* or column"):
        build_source({**base, "objects": [{"metric": "power_w"}]}, 0)
    with pytest.raises(ValueError, match="not a numeric OID"):
        build_source({**base, "objects": [{"metric": "power_w", "oid": "upsOutputPower"}]}, 0)
    with pytest.raises(ValueError, match="auth_key: required"):
        build_source({**base, "map": "ups-mib", "version": "3", "user": "u"}, 0)
    monkeypatch.delenv("NO_SUCH_SNMP_KEY", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_SNMP_KEY is not set"):
        build_source({**base, "map": "ups-mib", "community": {"env": "NO_SUCH_SNMP_KEY"}}, 0)
    with pytest.raises(ValueError, match=r"map: .*nope\.toml: file not found"):
        build_source({**base, "map": str(tmp_path / "nope.toml")}, 0)


def test_dead_agent_does_not_stop_the_daemon(agent, settings, unique):
    """run_once with an SNMP agent that is gone, a live UPS and a simulated rack: the live
    readings and a source_error event naming the dead agent both reach DuckDB."""
    cfg = CollectorConfig(
        name=f"snmp-{unique}",
        site="sv1",
        interval_s=3.0,  # a deadline of 2.4 s: room on a loaded test machine
        kafka={"bootstrap": settings.kafka_bootstrap},
        sources=[{"type": "simulated"}],
    )
    ups_id = f"sv1/facility/ups-{unique}"
    dead = make(
        ups_config(free_udp_port(), name="ups-dead", device_id=f"{ups_id}-dead", timeout_s=0.3)
    )
    alive = make(ups_config(agent.port, name="ups-alive", device_id=ups_id))
    sim = SimulatedSource(SimulatedSourceConfig(racks=["rk101"]))
    daemon = CollectorDaemon(cfg, sources=[dead, alive, sim])
    sent = daemon.run_once()
    daemon.close()
    assert sent == len(UPS_EXPECTED) + len(sim.snapshot(0))
    assert daemon.stats.sources["ups-dead"].errors == {"exception": 1}  # SnmpError raised
    assert daemon.stats.sources["ups-alive"].reads_ok == 1
    assert dead.errors == {"timeout": 1}
    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)
    cur = store.cursor()
    try:

        def stored_batches() -> int:
            return cur.execute(
                "SELECT count(*) FROM ingested_batches WHERE collector = ?", [cfg.name]
            ).fetchone()[0]

        ingest_until(ingestor, lambda: stored_batches() >= daemon.stats.batches_delivered)
        ups = cur.execute(
            "SELECT metric, value FROM samples WHERE device_id = ?", [ups_id]
        ).fetchall()
        events = cur.execute(
            # the simulated rack also announces its parts (inventory): not what is tested
            "SELECT kind, message FROM events WHERE collector = ? AND kind <> 'inventory'",
            [cfg.name],
        ).fetchall()
    finally:
        ingestor.close()
        store.close()
    assert dict(ups) == UPS_EXPECTED
    assert [k for k, _ in events] == [EventKind.source_error.value]
    assert "ups-dead" in events[0][1] and "no answer" in events[0][1]
