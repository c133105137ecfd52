"""Redfish source against DMTF's mockups served unchanged over real HTTP(S) on loopback.

Expected numbers are read from the mockup JSON files in each test, never typed in.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from collectors.base import Readings
from collectors.batching import Batcher
from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources import build_source
from collectors.sources.redfish.source import RedfishError, RedfishSource, RedfishSourceConfig
from dctwin.redfish_mockup import MOCKUPS, MockupServer, mockup_json
from domain.contract import EventKind, Kind, decode, encode
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.helpers import ingest_until, silent_listener, wait_for

PREFIX = "sv1/h1/rf"


def make_source(srv: MockupServer, **over) -> RedfishSource:
    cfg = dict(
        base_url=srv.url,
        auth=srv.auth,
        username=srv.username,
        password=srv.password,
        device_prefix=PREFIX,
        rack="h1",
        timeout_s=5.0,
        events="off",  # the event tests below turn it on; request counts stay exact here
    )
    cfg.update(over)
    return RedfishSource(RedfishSourceConfig(**cfg))


def values(r: Readings) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for d, m, v in zip(r.device_id, r.metric, r.value, strict=True):
        assert (d, m) not in out, f"{d} {m} sent twice in one read"
        out[(d, m)] = v
    return out


def dev(path: str) -> str:
    return f"{PREFIX}/{path}"


def reading(doc: dict, prop: str, fld: str = "Reading") -> float:
    return doc[prop][fld]


def members(mockup: str, collection: str) -> list[str]:
    doc = mockup_json(mockup, collection)
    return [m["@odata.id"].removeprefix("/redfish/v1/") for m in doc["Members"]]


@pytest.fixture
def cdu_server():
    with MockupServer("public-cooling-unit", auth="session") as srv:
        yield srv


def test_cdu_loop_pumps_leaks_and_failed_pump_event(cdu_server):
    m = "public-cooling-unit"
    src = make_source(
        cdu_server,
        chassis_kind="cooling",
        devices={"/redfish/v1/ThermalEquipment/CDUs/1/": "sv1/h1/cdu-row1"},
    )
    try:
        r = src.read()
    finally:
        src.close()
    got = values(r)
    cdu = "sv1/h1/cdu-row1"
    sec = mockup_json(m, "ThermalEquipment/CDUs/1/SecondaryCoolantConnectors/1")
    pri = mockup_json(m, "ThermalEquipment/CDUs/1/PrimaryCoolantConnectors/1")
    # the CDU's own ids carry its loop (what the twin reads) ...
    assert got[(cdu, "supply_temp_c")] == reading(sec, "SupplyTemperatureCelsius")
    assert got[(cdu, "return_temp_c")] == reading(sec, "ReturnTemperatureCelsius")
    assert got[(cdu, "flow_lpm")] == reading(sec, "FlowLitersPerMinute")
    assert got[(cdu, "diff_pressure_kpa")] == reading(sec, "DeltaPressurekPa")
    assert got[(cdu, "heat_removed_kw")] == reading(sec, "HeatRemovedkW")
    assert got[(cdu, "primary_supply_temp_c")] == reading(pri, "SupplyTemperatureCelsius")
    assert got[(cdu, "primary_return_temp_c")] == reading(pri, "ReturnTemperatureCelsius")
    assert got[(cdu, "primary_flow_lpm")] == reading(pri, "FlowLitersPerMinute")
    # ... and each connector keeps every reading under its own id
    prim = f"{cdu}/PrimaryCoolantConnectors/1"
    assert got[(prim, "supply_pressure_kpa")] == reading(pri, "SupplyPressurekPa")
    assert got[(prim, "return_pressure_kpa")] == reading(pri, "ReturnPressurekPa")
    assert got[(prim, "heat_removed_kw")] == reading(pri, "HeatRemovedkW")
    assert {r.kind[i] for i in range(len(r)) if r.device_id[i] == cdu} == {Kind.cooling, Kind.air}

    env = mockup_json(m, "ThermalEquipment/CDUs/1/EnvironmentMetrics")
    assert got[(cdu, "temp_c")] == reading(env, "TemperatureCelsius")
    assert got[(cdu, "humidity_pct")] == reading(env, "HumidityPercent")

    for pid in members(m, "ThermalEquipment/CDUs/1/Pumps"):
        pump = mockup_json(m, pid)
        d = "sv1/h1/cdu-row1/" + pid.removeprefix("ThermalEquipment/CDUs/1/")
        assert got[(d, "pump_speed_pct")] == reading(pump, "PumpSpeedPercent")
        ok = pump["Status"]["State"] == "Enabled" and pump["Status"]["Health"] == "OK"
        assert got[(d, "pump_running")] == (1.0 if ok else 0.0)
    assert got[("sv1/h1/cdu-row1/Pumps/1", "pump_running")] == 1.0
    assert got[("sv1/h1/cdu-row1/Pumps/2", "pump_running")] == 0.0

    leak = mockup_json(m, "ThermalEquipment/CDUs/1/LeakDetection")
    for det in leak["LeakDetectorGroups"][0]["Detectors"]:
        d = PREFIX + det["DataSourceUri"].removeprefix("/redfish/v1")
        assert got[(d, "leak_detected")] == (0.0 if det["DetectorState"] == "OK" else 1.0)

    failed = [e for e in r.events if e.kind == EventKind.pump_failed]
    assert len(failed) == 1, r.events  # the CDU repeats the pump's condition: one event
    assert failed[0].device_id == "sv1/h1/cdu-row1/Pumps/2"
    assert failed[0].severity == "critical"
    assert (
        failed[0].message
        == mockup_json(m, "ThermalEquipment/CDUs/1/Pumps/2")["Status"]["Conditions"][0]["Message"]
    )
    assert not [e for e in r.events if e.kind == EventKind.leak_detected]


def test_power_shelf_psu_input_power_and_outlets():
    m = "public-power-shelf"
    with MockupServer(m, auth="basic") as srv:
        src = make_source(srv)
        got = values(src.read())
        src.close()
    psus = [
        p
        for p in dict.fromkeys(members(m, "Chassis/PowerShelf/PowerSubsystem/PowerSupplies"))
        if "Metrics" in mockup_json(m, p)
    ]
    assert psus, "the mockup has a PSU with metrics"
    for p in psus:
        met = mockup_json(m, p + "/Metrics")
        assert got[(dev(p), "input_power_w")] == reading(met, "InputPowerWatts")
        assert got[(dev(p), "output_power_w")] == reading(met, "OutputPowerWatts")
        assert got[(dev(p), "input_voltage_v")] == reading(met, "InputVoltage")
        assert got[(dev(p), "input_current_a")] == reading(met, "InputCurrentAmps")
        assert got[(dev(p), "energy_kwh")] == reading(met, "EnergykWh")
        assert got[(dev(p), "temp_c")] == reading(met, "TemperatureCelsius")
    for o in members(m, "PowerEquipment/PowerShelves/1/Outlets"):
        assert got[(dev(o), "power_w")] == reading(mockup_json(m, o), "PowerWatts")
    shelf = mockup_json(m, "PowerEquipment/PowerShelves/1/Metrics")
    assert got[(dev("PowerEquipment/PowerShelves/1"), "power_w")] == reading(shelf, "PowerWatts")


def test_pdu_outlet_power():
    m = "public-pdu"
    with MockupServer(m, auth="session") as srv:
        src = make_source(srv)
        got = values(src.read())
        src.close()
    props = {
        "PowerWatts": "power_w",
        "CurrentAmps": "current_a",
        "Voltage": "voltage_v",
        "EnergykWh": "energy_kwh",
        "FrequencyHz": "frequency_hz",
    }
    metered = 0
    for o in members(m, "PowerEquipment/RackPDUs/1/Outlets"):
        doc = mockup_json(m, o)
        for prop, metric in props.items():  # some outlets report no readings at all
            if prop in doc:
                assert got[(dev(o), metric)] == reading(doc, prop), (o, prop)
            else:
                assert (dev(o), metric) not in got
        if "PowerWatts" in doc:
            metered += 1
            assert got[(dev(o), "power_factor")] == reading(doc, "PowerWatts", "PowerFactor")
    assert metered >= 9
    pdu = mockup_json(m, "PowerEquipment/RackPDUs/1/Metrics")
    assert got[(dev("PowerEquipment/RackPDUs/1"), "power_w")] == reading(pdu, "PowerWatts")
    assert got[(dev("PowerEquipment/RackPDUs/1"), "energy_kwh")] == reading(pdu, "EnergykWh")


def test_liquid_cooled_server_coolant_readings():
    m = "public-liquid-cooled-server"
    with MockupServer(m) as srv:
        src = make_source(srv, auth="none")
        got = values(src.read())
        src.close()
    conns = members(m, "Chassis/1U/ThermalSubsystem/CoolantConnectors")
    assert len(conns) == 2
    for c in conns:
        doc = mockup_json(m, c)
        assert got[(dev(c), "supply_temp_c")] == reading(doc, "SupplyTemperatureCelsius")
        assert got[(dev(c), "return_temp_c")] == reading(doc, "ReturnTemperatureCelsius")
    for p in members(m, "Chassis/1U/ThermalSubsystem/Pumps"):
        assert got[(dev(p), "pump_speed_pct")] == reading(mockup_json(m, p), "PumpSpeedPercent")
    env = mockup_json(m, "Chassis/1U/EnvironmentMetrics")
    assert got[(dev("Chassis/1U"), "power_w")] == reading(env, "PowerWatts")
    # a chassis sensor that nothing cites is read on its own, typed by ReadingType
    amb = mockup_json(m, "Chassis/1U/Sensors/AmbientTemp")
    assert got[(dev("Chassis/1U/Sensors/AmbientTemp"), "temp_c")] == amb["Reading"]
    # an absent PSU's null sensors are not sent
    assert not [k for k in got if "PS2" in k[0]]


def test_psu_predictive_failure_becomes_psu_fault():
    m = "public-rackmount1"
    with MockupServer(m, auth="basic") as srv:
        src = make_source(srv)
        r = src.read()
        src.close()
    psu = mockup_json(m, "Chassis/1U/PowerSubsystem/PowerSupplies/Bay1")
    faults = [e for e in r.events if e.kind == EventKind.psu_fault]
    assert [(e.device_id, e.severity, e.message) for e in faults] == [
        (
            dev("Chassis/1U/PowerSubsystem/PowerSupplies/Bay1"),
            "warning",
            psu["Status"]["Conditions"][0]["Message"],
        )
    ]


@pytest.mark.parametrize(
    "mockup",
    [
        "public-cooling-unit",
        "public-power-shelf",
        "public-pdu",
        "public-liquid-cooled-server",
        "public-rackmount1",
        "public-telemetry",
    ],
)
def test_every_reading_passes_the_wire_contract(mockup):
    with MockupServer(mockup) as srv:
        src = make_source(srv, auth="none")
        r = src.read()
        src.close()
    assert len(r) > 20
    batches = Batcher("rf-test", "sv1", 1.0).batches(r)
    decoded = [decode(encode(b)) for b in batches]  # raises on any unknown metric name
    assert sum(len(b.samples) for b in decoded if b.type == "telemetry") == len(r)


def test_steady_reads_get_only_planned_resources_and_events_fire_once(cdu_server):
    src = make_source(cdu_server)
    first = src.read()
    walked = sum(cdu_server.requests.values())
    cdu_server.requests.clear()
    second = src.read()
    steady = sum(cdu_server.requests.values())
    src.close()
    assert values(second) == values(first)
    assert second.events == []  # the failed pump was reported once, when it appeared
    assert steady < walked
    # sensors that the connectors cite are not read on their own
    assert not [k for k in cdu_server.requests if "/Sensors/PrimaryFlow" in k]
    assert not [
        k
        for k in cdu_server.requests
        if k.startswith("GET") and k.rstrip("/").endswith(("/Pumps", "/Chassis", "/redfish/v1"))
    ]


def test_cleared_condition_sends_an_info_event_and_removed_resource_is_rediscovered(tmp_path):
    root = tmp_path / "cdu"
    shutil.copytree(MOCKUPS / "public-cooling-unit", root)
    with MockupServer(root) as srv:
        src = make_source(srv, auth="none")
        assert [e.kind for e in src.read().events].count(EventKind.pump_failed) == 1
        for path in ("ThermalEquipment/CDUs/1/Pumps/2", "ThermalEquipment/CDUs/1"):
            f = root / path / "index.json"
            doc = json.loads(f.read_text())
            doc["Status"] = {"State": "Enabled", "Health": "OK"}
            f.write_text(json.dumps(doc))
        r = src.read()
        cleared = {e.device_id for e in r.events if e.attrs.get("cleared")}
        assert dev("ThermalEquipment/CDUs/1/Pumps/2") in cleared
        assert {e.severity for e in r.events} == {"info"}
        shutil.rmtree(root / "ThermalEquipment/CDUs/1/Pumps/1")
        partial = values(src.read())  # 404: skipped now, walk again next time
        assert (dev("ThermalEquipment/CDUs/1/Pumps/1"), "pump_speed_pct") not in partial
        again = values(src.read())
        src.close()
    assert (dev("ThermalEquipment/CDUs/1/Pumps/2"), "pump_speed_pct") in again
    assert (dev("ThermalEquipment/CDUs/1/Pumps/1"), "pump_speed_pct") not in again


def test_session_login_relogin_after_expiry_and_logout(cdu_server):
    src = make_source(cdu_server)
    src.read()
    cdu_server.expire_sessions()  # BMC restarted: the token is refused
    assert len(src.read()) > 0
    assert cdu_server.requests["POST /redfish/v1/SessionService/Sessions"] == 2
    src.close()
    assert cdu_server.tokens == {}  # the session was deleted on close


@pytest.mark.parametrize("auth", ["session", "basic"])
def test_wrong_credentials_fail_clearly(auth):
    with MockupServer("public-pdu", auth=auth) as srv:
        src = make_source(srv, password="wrong")
        with pytest.raises(RedfishError, match="login failed|HTTP 401"):
            src.read()
        src.close()


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_verify_settings(tls_cert):
    with MockupServer("public-power-shelf", auth="session", tls=tls_cert) as srv:
        assert srv.url.startswith("https://")
        strict = make_source(srv)  # system CAs do not know this self-signed cert
        with pytest.raises(RedfishError, match="CERTIFICATE_VERIFY_FAILED"):
            strict.read()
        strict.close()
        pinned = make_source(srv, verify_tls=tls_cert[0])
        assert len(pinned.read()) > 20
        pinned.close()
        unverified = make_source(srv, verify_tls=False)
        assert len(unverified.read()) > 20
        unverified.close()


def test_unreachable_and_stalled_services_raise():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    src = RedfishSource(
        RedfishSourceConfig(
            base_url=f"http://127.0.0.1:{port}",
            auth="none",
            device_prefix=PREFIX,
            rack="h1",
            timeout_s=0.5,
        )
    )
    with pytest.raises(RedfishError, match="ConnectError"):
        src.read()
    src.close()

    with silent_listener() as port:
        src = RedfishSource(
            RedfishSourceConfig(
                base_url=f"http://127.0.0.1:{port}",
                auth="none",
                device_prefix=PREFIX,
                rack="h1",
                timeout_s=0.3,
            )
        )
        try:
            with pytest.raises(RedfishError, match="Timeout"):
                src.read()
        finally:
            src.close()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"sources\[2\] \(redfish\): base_url: .*not an http"):
        build_source(
            {
                "type": "redfish",
                "base_url": "ftp://x",
                "device_prefix": "a",
                "rack": "h1",
                "auth": "none",
            },
            2,
        )
    with pytest.raises(ValueError, match="username is required"):
        build_source(
            {"type": "redfish", "base_url": "https://bmc", "device_prefix": "a", "rack": "h1"}, 0
        )
    with pytest.raises(ValueError, match="sections.0"):
        build_source(
            {
                "type": "redfish",
                "base_url": "https://bmc",
                "device_prefix": "a",
                "rack": "h1",
                "auth": "none",
                "sections": ["nope"],
            },
            0,
        )


def test_one_broken_resource_is_reported_and_the_rest_still_read(tmp_path):
    root = tmp_path / "shelf"
    shutil.copytree(MOCKUPS / "public-power-shelf", root)
    with MockupServer(root) as srv:
        src = make_source(srv, auth="none")
        first = src.read()
        outlet = root / "PowerEquipment/PowerShelves/1/Outlets/A1/index.json"
        outlet.write_text("{not json")  # a BMC bug in one resource, found mid-stream
        (root / "PowerEquipment/PowerShelves/1/Metrics/index.json").write_text("[]")
        r = src.read()
        src.close()
    got = values(r)
    assert (dev("PowerEquipment/PowerShelves/1/Outlets/A1"), "power_w") not in got
    assert (dev("PowerEquipment/PowerShelves/1"), "power_w") not in got
    psu = "Chassis/PowerShelf/PowerSubsystem/PowerSupplies/Bay1"
    assert got[(dev(psu), "input_power_w")] == values(first)[(dev(psu), "input_power_w")]
    [err] = [e for e in r.events if e.kind == EventKind.source_error]
    assert err.attrs["failed"] == 2
    assert "invalid JSON" in err.message


def test_cdu_through_the_daemon_into_duckdb(settings, unique):
    """dctwin's daemon built from config: the CDU's readings and its failed pump arrive in
    DuckDB with the mockup's values."""
    m = "public-cooling-unit"
    cdu = f"sv1/h1/cdu-{unique}"
    with MockupServer(m, auth="session") as srv:
        cfg = CollectorConfig(
            name=f"rf-{unique}",
            site="sv1",
            interval_s=1.0,
            kafka={"bootstrap": settings.kafka_bootstrap},
            sources=[
                {
                    "type": "redfish",
                    "base_url": srv.url,
                    "username": srv.username,
                    "password": srv.password,
                    "device_prefix": cdu,
                    "rack": "h1",
                    "chassis_kind": "cooling",
                    "sections": ["cdus"],
                    "devices": {"ThermalEquipment/CDUs/1": cdu},
                }
            ],
        )
        daemon = CollectorDaemon(cfg)
        daemon.run_once()
        daemon.close()
    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)
    cur = store.cursor()
    try:
        ingest_until(
            ingestor,
            lambda: (
                cur.execute(
                    "SELECT count(*) FROM ingested_batches WHERE collector = ?", [cfg.name]
                ).fetchone()[0]
                >= daemon.stats.batches_delivered
            ),
        )
        latest = dict(
            ((d, mt), v)
            for d, mt, v in cur.execute(
                "SELECT device_id, metric, value FROM latest WHERE device_id LIKE ?", [f"{cdu}%"]
            ).fetchall()
        )
        events = cur.execute(
            "SELECT device_id, kind, severity FROM events WHERE collector = ?", [cfg.name]
        ).fetchall()
    finally:
        ingestor.close()
        store.close()
    sec = mockup_json(m, "ThermalEquipment/CDUs/1/SecondaryCoolantConnectors/1")
    assert latest[(cdu, "supply_temp_c")] == reading(sec, "SupplyTemperatureCelsius")
    assert latest[(cdu, "return_temp_c")] == reading(sec, "ReturnTemperatureCelsius")
    assert latest[(cdu, "flow_lpm")] == reading(sec, "FlowLitersPerMinute")
    assert latest[(f"{cdu}/Pumps/2", "pump_running")] == 0.0
    assert (f"{cdu}/Pumps/2", "pump_failed", "critical") in events


# -- issue 22: fans, legacy Power/Thermal, Sensors, events ------------------------------


def edit_json(root, path: str, change) -> None:
    f = root / path / "index.json"
    doc = json.loads(f.read_text())
    change(doc)
    f.write_text(json.dumps(doc))


def test_fans_from_thermal_subsystem_and_legacy_resources_not_read_twice():
    m = "public-rackmount1"
    with MockupServer(m) as srv:
        src = make_source(srv, auth="none")
        r = src.read()
        src.close()
        legacy_gets = [k for k in srv.requests if k.endswith(("/1U/Power", "/1U/Thermal"))]
    got = values(r)
    fans = members(m, "Chassis/1U/ThermalSubsystem/Fans")
    assert len(fans) == 4
    for f in fans:
        doc = mockup_json(m, f)
        assert got[(dev(f), "fan_speed_pct")] == doc["SpeedPercent"]["Reading"]
        assert got[(dev(f), "fan_speed_rpm")] == doc["SpeedPercent"]["SpeedRPM"]
        i = r.device_id.index(dev(f))
        assert r.kind[i] == Kind.power  # the server chassis's kind, not "cooling"
        # the fan cites its tachometer sensor: that sensor is not read on its own
        cited = doc["SpeedPercent"]["DataSourceUri"].removeprefix("/redfish/v1/")
        assert not [k for k in got if k[0] == dev(cited)]
    # PowerSubsystem and ThermalSubsystem exist: the deprecated Power/Thermal are skipped
    assert legacy_gets == []
    assert not [k for k in got if "/1U/Power/" in k[0] or "/1U/Thermal/" in k[0]]
    env = mockup_json(m, "Chassis/1U/EnvironmentMetrics")
    assert got[(dev("Chassis/1U"), "power_w")] == env["PowerWatts"]["Reading"]


def test_failed_and_absent_fans_are_fan_failed_events(tmp_path):
    root = tmp_path / "rm"
    shutil.copytree(MOCKUPS / "public-rackmount1", root)
    fans = "Chassis/1U/ThermalSubsystem/Fans"
    edit_json(root, f"{fans}/Bay2", lambda d: d["Status"].update(Health="Critical"))

    def pull(d: dict) -> None:
        d["Status"] = {"State": "Absent"}
        del d["SpeedPercent"]

    edit_json(root, f"{fans}/CPU2", pull)
    with MockupServer(root) as srv:
        src = make_source(srv, auth="none")
        r = src.read()
        failed = {(e.device_id, e.severity) for e in r.events if e.kind == EventKind.fan_failed}
        assert failed == {(dev(f"{fans}/Bay2"), "critical"), (dev(f"{fans}/CPU2"), "warning")}
        assert not [k for k in values(r) if k[0] == dev(f"{fans}/CPU2")]
        assert not [e for e in src.read().events if e.kind == EventKind.fan_failed]  # once
        edit_json(root, f"{fans}/Bay2", lambda d: d["Status"].update(Health="OK"))
        cleared = [e for e in src.read().events if e.attrs.get("cleared")]
        src.close()
    assert [e.device_id for e in cleared] == [dev(f"{fans}/Bay2")]


def test_legacy_power_and_thermal_values_equal_the_mockup():
    """DMTF's telemetry mockup serves only the deprecated Chassis/{id}/Power and Thermal."""
    m = "public-telemetry"
    with MockupServer(m, auth="basic") as srv:
        src = make_source(srv)
        r = src.read()
        src.close()
    got = values(r)
    chassis = members(m, "Chassis")
    assert len(chassis) == 4
    for c in chassis:
        power = mockup_json(m, f"{c}/Power")
        [ctl] = power["PowerControl"]
        assert got[(dev(c), "power_w")] == ctl["PowerConsumedWatts"]
        for psu in power["PowerSupplies"]:
            d = dev(f"{c}/Power/PowerSupplies/{psu['MemberId']}")
            if psu["Status"]["State"] == "Absent":
                assert not [k for k in got if k[0] == d]
                continue
            assert got[(d, "output_power_w")] == psu["LastPowerOutputWatts"]
            assert got[(d, "input_voltage_v")] == psu["LineInputVoltage"]
        for v in power["Voltages"]:
            assert (
                got[(dev(f"{c}/Power/Voltages/{v['MemberId']}"), "voltage_v")] == v["ReadingVolts"]
            )
        thermal = mockup_json(m, f"{c}/Thermal")
        for t in thermal["Temperatures"]:
            d = dev(f"{c}/Thermal/Temperatures/{t['MemberId']}")
            assert got[(d, "temp_c")] == t["ReadingCelsius"]
        for fan in thermal["Fans"]:
            assert fan["ReadingUnits"] == "RPM"
            assert (
                got[(dev(f"{c}/Thermal/Fans/{fan['MemberId']}"), "fan_speed_rpm")] == fan["Reading"]
            )
    # both present PSUs of each chassis report Health: Warning
    faults = {e.device_id for e in r.events if e.kind == EventKind.psu_fault}
    assert faults == {dev(f"{c}/Power/PowerSupplies/{i}") for c in chassis for i in "01"}


def test_legacy_resources_are_read_when_the_newer_ones_are_absent(tmp_path):
    root = tmp_path / "rm"
    shutil.copytree(MOCKUPS / "public-rackmount1", root)

    def legacy_only(d: dict) -> None:
        del d["PowerSubsystem"], d["ThermalSubsystem"]
        # and a mislinked EnvironmentMetrics (the power-shelf mockup's quirk): found late,
        # at its conventional URI, after Power was queued
        d["EnvironmentMetrics"] = d["Sensors"]

    edit_json(root, "Chassis/1U", legacy_only)
    with MockupServer(root) as srv:
        src = make_source(srv, auth="none")
        got = values(src.read())
        src.close()
    m = "public-rackmount1"
    power, thermal = mockup_json(m, "Chassis/1U/Power"), mockup_json(m, "Chassis/1U/Thermal")
    psu = power["PowerSupplies"][0]
    assert (
        got[(dev("Chassis/1U/Power/PowerSupplies/0"), "output_power_w")]
        == psu["LastPowerOutputWatts"]
    )
    assert got[(dev("Chassis/1U/Thermal/Fans/1"), "fan_speed_rpm")] == thermal["Fans"][1]["Reading"]
    # CPU2 Temp is disabled and has no reading: nothing is made up
    assert (dev("Chassis/1U/Thermal/Temperatures/1"), "temp_c") not in got
    # the chassis power: EnvironmentMetrics (newer) wins over PowerControl; sent once
    env = mockup_json(m, "Chassis/1U/EnvironmentMetrics")
    assert got[(dev("Chassis/1U"), "power_w")] == env["PowerWatts"]["Reading"]
    assert env["PowerWatts"]["Reading"] != power["PowerControl"][0]["PowerConsumedWatts"]


# ReadingType -> metric, as documented in the README (the test's own copy of the table)
SENSOR_METRICS = {
    "Temperature": "temp_c",
    "Power": "power_w",
    "EnergykWh": "energy_kwh",
    "Current": "current_a",
    "Voltage": "voltage_v",
    "Frequency": "frequency_hz",
}


@pytest.mark.parametrize("mockup", ["public-rackmount1", "public-liquid-cooled-server"])
def test_sensors_by_reading_type(mockup):
    with MockupServer(mockup) as srv:
        # sensors alone: nothing cites them, so each is read on its own
        src = make_source(srv, auth="none", sections=["sensors"])
        got = values(src.read())
        src.close()
    checked = fans = 0
    for s in members(mockup, "Chassis/1U/Sensors"):
        doc = mockup_json(mockup, s)
        rtype: str = doc.get("ReadingType") or {"Cel": "Temperature"}[doc["ReadingUnits"]]
        sent = {mt: v for (d, mt), v in got.items() if d == dev(s)}
        if doc.get("Reading") is None:
            assert sent == {}, s  # absent PSU: null readings are not sent
        elif rtype == "Percent":
            if "Fan" in doc["Id"]:
                assert sent == {"fan_speed_pct": doc["Reading"]}
                fans += 1
            else:
                assert sent == {}, s  # battery state of health: no contract metric
        else:
            assert sent == {SENSOR_METRICS[rtype]: doc["Reading"]}, s
            checked += 1
    assert checked > 20 and fans == 4


def events_source(srv: MockupServer, **over) -> RedfishSource:
    return make_source(
        srv, events="auto", event_retry_s=0.1, event_retry_max_s=0.4, event_poll_s=0.2, **over
    )


def read_until(src: RedfishSource, pred, timeout_s: float = 10.0) -> list[Readings]:
    """Reads on a 0.1 s schedule until `pred(all events so far)`; every read has samples."""
    reads: list[Readings] = []
    deadline = time.monotonic() + timeout_s
    while True:
        reads.append(src.read())
        assert len(reads[-1]) > 20, "a read without samples"
        if pred([e for r in reads for e in r.events]):
            return reads
        assert time.monotonic() < deadline, [e for r in reads for e in r.events]
        time.sleep(0.1)


def fan_record(n: int, severity: str = "Critical") -> dict:
    return {
        "EventType": "Alert",
        "EventId": f"ev-{n}",
        "EventTimestamp": "2026-12-07T02:40:00+00:00",
        "MessageSeverity": severity,
        "Message": f"Fan Bay2 errors detected ({n}).",
        "MessageId": "ResourceEvent.1.3.ResourceErrorsDetected",
        "MessageArgs": ["Fan Bay2", "tachometer"],
        "OriginOfCondition": {"@odata.id": "/redfish/v1/Chassis/1U/ThermalSubsystem/Fans/Bay2"},
    }


def test_sse_events_arrive_as_contract_events():
    with MockupServer("public-rackmount1", auth="session", sse=True) as srv:
        src = events_source(srv)
        src.read()
        wait_for(lambda: srv.sse_connections == 1, 5, "SSE subscription")
        assert src.events is not None and src.events.stats.mode == "sse"
        srv.push_event(
            [
                fan_record(1),
                {
                    "EventType": "Alert",
                    "MessageSeverity": "Warning",
                    "Message": "The resource property Chassis 1U has changed to Warning.",
                    "MessageId": "ResourceEvent.1.3.ResourceStatusChangedWarning",
                    "OriginOfCondition": {"@odata.id": "/redfish/v1/Chassis/1U"},
                },
            ]
        )
        srv.push_event([{"MessageId": "Base.1.19.Success", "Message": "ok"}])  # no origin
        reads = read_until(src, lambda evs: len([e for e in evs if "message_id" in e.attrs]) >= 3)
        src.close()
    got = [e for r in reads for e in r.events if "message_id" in e.attrs]
    fan, chassis, plain = got
    assert (fan.kind, fan.severity, fan.device_id) == (
        EventKind.fan_failed,
        "critical",
        dev("Chassis/1U/ThermalSubsystem/Fans/Bay2"),
    )
    assert fan.message == fan_record(1)["Message"]
    assert fan.attrs["message_id"] == "ResourceEvent.1.3.ResourceErrorsDetected"
    assert fan.attrs["origin"] == "/redfish/v1/Chassis/1U/ThermalSubsystem/Fans/Bay2"
    assert fan.attrs["event_id"] == "ev-1"
    assert (chassis.kind, chassis.severity, chassis.device_id) == (
        EventKind.health_changed,
        "warning",
        dev("Chassis/1U"),
    )
    assert (plain.kind, plain.severity, plain.device_id) == (
        EventKind.health_changed,
        "info",
        PREFIX,
    )
    assert srv.tokens == {}  # the stream shared the read's session, deleted on close


def test_sse_drop_is_counted_reconnects_and_reads_keep_their_schedule():
    with MockupServer("public-rackmount1", sse=True) as srv:
        src = events_source(srv, auth="none")
        src.read()
        wait_for(lambda: srv.sse_connections == 1, 5, "SSE subscription")
        srv.push_event([fan_record(1)])
        read_until(src, lambda evs: any(e.kind == EventKind.fan_failed for e in evs))
        srv.sse_status = 503  # the BMC reboots: the stream drops, reconnects are refused
        srv.drop_streams()
        t0 = time.monotonic()
        during = read_until(
            src,
            lambda evs: (
                sum(e.attrs.get("failed", 0) for e in evs if e.kind == EventKind.source_error) >= 3
            ),
        )
        assert all(len(r) > 20 for r in during)
        assert time.monotonic() - t0 < 5
        missed = srv.push_event([fan_record(2)])  # while no stream is open
        srv.push_raw(b"data: {not json\n\n")  # goes nowhere: nobody is connected
        srv.sse_status = 200
        after = read_until(src, lambda evs: any(e.attrs.get("event_id") == "ev-2" for e in evs))
        assert src.events is not None
        stats = src.events.stats
        src.close()
    errors = [e for r in during for e in r.events if e.kind == EventKind.source_error]
    # the daemon counts them too (dctwin_collector_source_errors_total{reason="partial"})
    assert sum(r.failed_parts for r in during) == sum(e.attrs["failed"] for e in errors) >= 3
    assert "/redfish/v1/EventService/SSE dropped: RemoteProtocolError" in errors[0].message
    assert any("SSE: HTTP 503" in e.message for e in errors)
    assert stats.errors >= 3 and stats.connects == 2
    # the reconnect asked for what it missed and got it, once
    assert srv.sse_last_event_ids == [None, str(missed - 1)]
    assert [e.attrs.get("event_id") for r in after for e in r.events if "event_id" in e.attrs] == [
        "ev-2"
    ]


def test_bad_sse_payload_is_a_counted_error_and_the_stream_goes_on():
    with MockupServer("public-rackmount1", sse=True) as srv:
        src = events_source(srv, auth="none")
        src.read()
        wait_for(lambda: srv.sse_connections == 1, 5, "SSE subscription")
        srv.push_raw(b": keep-alive\n\n")
        srv.push_raw(b"data: {not json\n\n")
        srv.push_event([fan_record(3)])
        reads = read_until(src, lambda evs: any(e.kind == EventKind.fan_failed for e in evs))
        src.close()
        assert srv.sse_connections == 1  # not reconnected: the payload was bad, not the link
    [err] = [e for r in reads for e in r.events if e.kind == EventKind.source_error]
    assert "not JSON" in err.message and err.attrs["reason"] == "events"


def test_silent_stream_is_redone_after_the_idle_timeout():
    with MockupServer("public-rackmount1", sse=True) as srv:
        src = events_source(srv, auth="none", event_idle_timeout_s=0.3)
        src.read()
        wait_for(lambda: srv.sse_connections >= 2, 5, "a reconnect after silence")
        r = src.read()
        src.close()
    [err] = [e for e in r.events if e.kind == EventKind.source_error]
    assert "dropped: ReadTimeout" in err.message


def test_without_event_service_the_logs_are_polled(tmp_path):
    root = tmp_path / "tel"
    shutil.copytree(MOCKUPS / "public-telemetry", root)  # no EventService at all
    entries = "Managers/1/LogServices/Log1/Entries"
    base = f"/redfish/v1/{entries}"

    def entry(n: int, **kw) -> dict:
        return {"@odata.id": f"{base}/{n}", "@odata.type": "#LogEntry.v1_21_0.LogEntry",
                "Id": str(n), "Name": f"Log Entry {n}", "EntryType": "Event",
                "Created": "2026-12-07T02:40:00Z", **kw}  # fmt: skip

    old = entry(1, Severity="Critical", Message="history", MessageId="Event.1.0.Old")
    edit_json(root, entries, lambda d: d["Members"].append(old))
    with MockupServer(root) as srv:
        src = events_source(srv, auth="none")
        reads = [src.read()]
        assert src.events is not None
        wait_for(lambda: src.events is not None and src.events.stats.polls >= 1, 5, "a poll")
        assert src.events.stats.mode == "poll"
        fan = entry(
            2,
            Severity="Critical",
            Message="Fan 0 stopped",
            MessageId="ResourceEvent.1.3.ResourceErrorsDetected",
            Links={"OriginOfCondition": {"@odata.id": "/redfish/v1/Chassis/1/Thermal#/Fans/0"}},
        )
        warn = entry(
            3,
            Severity="Warning",
            Message="Chassis intrusion",
            MessageId="Event.1.0.Intrusion",
            Links={"OriginOfCondition": {"@odata.id": "/redfish/v1/Chassis/1"}},
        )
        (root / entries / "3").mkdir()
        (root / entries / "3" / "index.json").write_text(json.dumps(warn))
        # a BMC lists members by link only; the listener fetches new ones itself
        edit_json(root, entries, lambda d: d["Members"].extend([fan, {"@odata.id": f"{base}/3"}]))
        reads += read_until(src, lambda evs: len([e for e in evs if "log_entry" in e.attrs]) >= 2)
        src.close()
    got = sorted(
        (e.attrs["log_entry"], e.kind, e.severity, e.device_id, e.message)
        for r in reads
        for e in r.events
        if "log_entry" in e.attrs
    )
    fan_dev = dev("Chassis/1/Thermal/Fans/0")
    assert got == [
        (f"{base}/2", EventKind.fan_failed, "critical", fan_dev, "Fan 0 stopped"),
        (f"{base}/3", EventKind.health_changed, "warning", dev("Chassis/1"), "Chassis intrusion"),
    ]
    # the entry already in the log at the first poll is history, not an event


def test_event_config_errors_name_the_field():
    with pytest.raises(ValueError, match="events"):
        build_source(
            {"type": "redfish", "base_url": "https://bmc", "device_prefix": "a", "rack": "h1",
             "auth": "none", "events": "push"}, 0)  # fmt: skip
