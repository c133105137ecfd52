"""Modbus TCP source against pymodbus's own TCP server on loopback.

Register contents are encoded with pymodbus's encoder (`convert_to_registers`), an
implementation independent of the source's decoder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.sources import build_source
from collectors.sources.modbus.source import (
    SHIPPED_MAPS,
    ModbusError,
    ModbusSource,
    ModbusSourceConfig,
    Register,
    plan_blocks,
)
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import EventKind, Kind
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.helpers import ingest_until, silent_listener
from tests.modbus_server import ModbusTestServer, free_port

DT = ModbusTcpClient.DATATYPE
TYPES = {
    "int16": DT.INT16,
    "uint16": DT.UINT16,
    "int32": DT.INT32,
    "uint32": DT.UINT32,
    "float32": DT.FLOAT32,
}


def encode(value: float, data_type: str, word_order: str = "big") -> list[int]:
    v = float(value) if data_type == "float32" else int(value)
    return ModbusTcpClient.convert_to_registers(v, TYPES[data_type], word_order=word_order)


def load(regs: dict[int, int], address: int, words: list[int]) -> None:
    for i, w in enumerate(words):
        regs[address + i] = w


# (data type, word order, raw value): extremes that a wrong decoder gets wrong
CASES = [
    ("int16", "big", -12345),
    ("int16", "big", 32767),
    ("uint16", "big", 65535),
    ("uint16", "big", 40000),
    ("int32", "big", -2_000_000_001),
    ("int32", "little", -7),
    ("uint32", "big", 4_000_000_000),
    ("uint32", "little", 70_000),
    ("float32", "big", -273.15),
    ("float32", "little", 1.0e-3),
]


def test_every_data_type_and_word_order_decodes():
    holding: dict[int, int] = {}
    inputs: dict[int, int] = {}
    registers = []
    address = 0
    for i, (dtype, order, raw) in enumerate(CASES):
        function = "holding" if i % 2 == 0 else "input"
        load(holding if function == "holding" else inputs, address, encode(raw, dtype, order))
        registers.append(
            dict(
                metric="power_w",
                address=address,
                function=function,
                data_type=dtype,
                word_order=order,
                device_id=f"sv1/h1/meter/case{i}",
            )
        )
        address += 3  # leave a gap so blocks must span unused registers
    registers.append(
        dict(
            metric="voltage_v",
            address=200,
            data_type="int16",
            scale=0.1,
            offset=-5.0,
            device_id="sv1/h1/meter/scaled",
        )
    )
    load(holding, 200, encode(2301, "int16"))
    with ModbusTestServer({5: (holding, inputs)}) as srv:
        src = ModbusSource(
            ModbusSourceConfig(
                host="127.0.0.1",
                port=srv.port,
                unit_id=5,
                device_id="sv1/h1/meter",
                kind="power",
                rack="h1",
                registers=registers,
            )
        )
        r = src.read()
        src.close()
    got = dict(zip(r.device_id, r.value, strict=True))
    for i, (dtype, order, raw) in enumerate(CASES):
        want = float(raw)
        if dtype == "float32":  # what a float32 register pair can hold
            want = ModbusTcpClient.convert_from_registers(encode(raw, dtype), DT.FLOAT32)
        assert got[f"sv1/h1/meter/case{i}"] == want, (dtype, order, raw)
    assert got["sv1/h1/meter/scaled"] == pytest.approx(2301 * 0.1 - 5.0, rel=1e-15)
    assert set(r.kind) == {Kind.power} and set(r.rack) == {"h1"}
    assert len(r.read_time_ms) == len(CASES) + 1


def test_blocks_join_nearby_registers_and_respect_the_protocol_limit():
    regs = [Register(metric="power_w", address=a, data_type="uint32") for a in (0, 2, 10, 200)]
    regs += [Register(metric="power_w", address=a, function="input") for a in range(0, 300, 2)]
    blocks = plan_blocks(regs, max_gap=8)
    holding = [(b.start, b.count) for b in blocks if b.function == "holding"]
    assert holding == [(0, 12), (200, 2)]
    assert all(b.count <= 125 for b in blocks)
    covered = [b.start + off for b in blocks if b.function == "input" for off, _ in b.registers]
    assert sorted(covered) == list(range(0, 300, 2))


def _read_map(regmap: Path, spec: dict, device_id: str, rack: str):
    """Serve `spec`'s raw values per `regmap` from a real Modbus server; read them back."""
    holding, inputs = _values(spec, regmap)
    with ModbusTestServer({1: (holding, inputs)}) as srv:
        src = build_source(
            {
                "type": "modbus",
                "host": "127.0.0.1",
                "port": srv.port,
                "device_id": device_id,
                "rack": rack,
                "register_map": str(regmap),
            },
            0,
        )
        try:
            return src.read()
        finally:
            src.close()


def _values(spec: dict[str, tuple[float, str]], regmap: Path) -> tuple[dict, dict]:
    """Holding/input registers holding each metric's raw value, per the shipped map."""
    cfg = ModbusSourceConfig(host="x", device_id="d", rack="r", register_map=regmap)
    holding: dict[int, int] = {}
    inputs: dict[int, int] = {}
    for reg in cfg.registers:
        key = f"{reg.device_suffix or ''}:{reg.metric}"
        raw = spec[key][0]
        load(
            holding if reg.function == "holding" else inputs,
            reg.address,
            encode(raw, reg.data_type, reg.word_order),
        )
    return holding, inputs


def test_shipped_crah_map():
    regmap = SHIPPED_MAPS / "crah.toml"
    # metric: (raw register value, expected reading)
    spec = {
        ":supply_air_temp_c": (-15, -1.5),
        ":return_air_temp_c": (352, 35.2),
        ":humidity_pct": (455, 45.5),
        ":fan_speed_pct": (812, 81.2),
        ":chw_valve_pct": (1000, 100.0),
        ":fan_power_w": (70_123, 70123.0),
        ":airflow_m3h": (41_000, 41000.0),
        ":cooling_kw": (187.25, 187.25),
        ":supply_air_setpoint_c": (220, 22.0),
    }
    r = _read_map(regmap, spec, "sv1/h1/crah1", "h1")
    got = {
        m: v for d, m, v in zip(r.device_id, r.metric, r.value, strict=True) if d == "sv1/h1/crah1"
    }
    assert got == pytest.approx({k[1:]: v[1] for k, v in spec.items()}, rel=1e-12)
    assert set(r.kind) == {Kind.air}


def test_shipped_three_phase_meter_map():
    regmap = SHIPPED_MAPS / "power-meter-3phase.toml"
    spec = {
        ":power_kw": (1630.5, 1630.5),
        ":energy_kwh": (88412.5, 88412.5),
        ":power_factor": (0.96875, 0.96875),
        ":frequency_hz": (50.0, 50.0),
    }
    for ph, (a, v, kw) in {
        "L1": (812.5, 230.5, 187.25),
        "L2": (800.0, 231.0, 184.5),
        "L3": (790.25, 229.5, 181.0),
    }.items():
        spec[f"{ph}:current_a"] = (a, a)
        spec[f"{ph}:voltage_v"] = (v, v)
        spec[f"{ph}:power_w"] = (kw, kw * 1000)
    r = _read_map(regmap, spec, "sv1/facility/utility", "facility")
    got = {}
    for d, m, v, k in zip(r.device_id, r.metric, r.value, r.kind, strict=True):
        phase = d.removeprefix("sv1/facility/utility").strip("/")
        got[f"{phase}:{m}"] = (v, k)
    assert {k: v for k, (v, _) in got.items()} == {k: v[1] for k, v in spec.items()}
    assert got[":power_kw"][1] == Kind.facility and got["L2:voltage_v"][1] == Kind.power


def test_device_exception_names_the_registers():
    with ModbusTestServer({1: ({0: 1}, {})}) as srv:
        src = ModbusSource(
            ModbusSourceConfig(
                host="127.0.0.1",
                port=srv.port,
                device_id="d",
                kind="air",
                rack="h1",
                registers=[{"metric": "fan_speed_pct", "address": 500}],
            )
        )
        with pytest.raises(ModbusError, match=r"holding registers 500\.\.\.500: device answered"):
            src.read()
        src.close()


def test_unreachable_and_silent_devices_raise():
    src = ModbusSource(
        ModbusSourceConfig(
            host="127.0.0.1",
            port=free_port(),
            device_id="d",
            kind="air",
            rack="h1",
            timeout_s=0.3,
            registers=[{"metric": "fan_speed_pct", "address": 0}],
        )
    )
    with pytest.raises(ModbusError, match="cannot connect"):
        src.read()
    src.close()

    # accepts the connection, never answers: the read times out instead of hanging
    with silent_listener() as port:
        src = ModbusSource(
            ModbusSourceConfig(
                host="127.0.0.1",
                port=port,
                device_id="d",
                kind="air",
                rack="h1",
                timeout_s=0.3,
                registers=[{"metric": "fan_speed_pct", "address": 0}],
            )
        )
        try:
            with pytest.raises(ModbusError, match="holding registers 0"):
                src.read()
        finally:
            src.close()


def test_unreachable_device_does_not_stop_the_daemon(settings, unique):
    """run_once with a dead Modbus device and a working one: the working device's readings
    and a source_error event naming the dead one both reach DuckDB."""
    good = {"metric": "supply_air_temp_c", "address": 0, "data_type": "int16", "scale": 0.1}
    with ModbusTestServer({1: ({0: encode(-15, "int16")[0]}, {})}) as srv:
        cfg = CollectorConfig(
            name=f"mb-{unique}",
            site="sv1",
            interval_s=1.0,
            kafka={"bootstrap": settings.kafka_bootstrap},
            sources=[{"type": "simulated"}],
        )
        dead = ModbusSource(
            ModbusSourceConfig(
                name="crah-dead",
                host="127.0.0.1",
                port=free_port(),
                timeout_s=0.3,
                device_id=f"sv1/h1/crah-{unique}-dead",
                kind="air",
                rack="h1",
                registers=[good],
            )
        )
        alive = ModbusSource(
            ModbusSourceConfig(
                name="crah-alive",
                host="127.0.0.1",
                port=srv.port,
                device_id=f"sv1/h1/crah-{unique}",
                kind="air",
                rack="h1",
                registers=[good],
            )
        )
        sim = SimulatedSource(SimulatedSourceConfig(racks=["rk101"]))
        daemon = CollectorDaemon(cfg, sources=[dead, alive, sim])
        sent = daemon.run_once()
        daemon.close()
    assert sent == 1 + len(sim.snapshot(0))  # the live CRAH and the simulated rack
    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)
    cur = store.cursor()
    try:

        def stored_batches() -> int:
            return cur.execute(
                "SELECT count(*) FROM ingested_batches WHERE collector = ?", [cfg.name]
            ).fetchone()[0]

        ingest_until(ingestor, lambda: stored_batches() >= daemon.stats.batches_delivered)
        crah = cur.execute(
            "SELECT device_id, metric, value FROM samples WHERE device_id LIKE ?",
            [f"sv1/h1/crah-{unique}%"],
        ).fetchall()
        events = cur.execute(
            "SELECT kind, message FROM events WHERE collector = ?", [cfg.name]
        ).fetchall()
    finally:
        ingestor.close()
        store.close()
    assert crah == [(f"sv1/h1/crah-{unique}", "supply_air_temp_c", -1.5)]
    assert [k for k, _ in events] == [EventKind.source_error.value]
    assert "crah-dead" in events[0][1] and "cannot connect" in events[0][1]


def test_config_errors_name_the_field(tmp_path):
    base = {"type": "modbus", "host": "h", "device_id": "d", "rack": "r", "kind": "air"}
    with pytest.raises(ValueError, match=r"registers\[0\]\.metric: 'nope' is not a air metric"):
        build_source({**base, "registers": [{"metric": "nope", "address": 0}]}, 0)
    with pytest.raises(ValueError, match=r"registers\[0\]\.unit: 'F' but supply_air_temp_c"):
        build_source(
            {**base, "registers": [{"metric": "supply_air_temp_c", "address": 0, "unit": "F"}]}, 0
        )
    with pytest.raises(ValueError, match=r"sources\[3\] \(modbus\): registers\.0\.data_type"):
        build_source(
            {
                **base,
                "registers": [{"metric": "fan_speed_pct", "address": 0, "data_type": "int64"}],
            },
            3,
        )
    bad = tmp_path / "map.toml"
    bad.write_text('[[registers]]\nmetric = "fan_speed_pct"\naddress = -1\n')
    with pytest.raises(ValueError, match=r"map\.toml: registers\.0\.address"):
        build_source({**base, "register_map": str(bad)}, 0)
    with pytest.raises(ValueError, match="none configured"):
        build_source(base, 0)
