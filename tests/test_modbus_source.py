"""Modbus TCP source against pymodbus's own TCP server on loopback.

Register contents are encoded with pymodbus's encoder (`convert_to_registers`), an
implementation independent of the source's decoder.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path
from typing import Literal

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes

from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.reader import SourceReader
from collectors.sources import build_source
from collectors.sources.modbus.source import (
    SHIPPED_MAPS,
    ModbusError,
    ModbusSource,
    ModbusSourceConfig,
    plan_blocks,
)
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from collectors.stats import DaemonStats
from domain.contract import EventKind, Kind
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.helpers import ingest_until, silent_listener
from tests.modbus_server import Fault, ModbusTestServer, free_port

DT = ModbusTcpClient.DATATYPE
TYPES = {
    "int16": DT.INT16,
    "uint16": DT.UINT16,
    "int32": DT.INT32,
    "uint32": DT.UINT32,
    "int64": DT.INT64,
    "uint64": DT.UINT64,
    "float32": DT.FLOAT32,
    "float64": DT.FLOAT64,
}


def encode(
    value: float, data_type: str, word_order: str | None = "big", byte_order: str = "big"
) -> list[int]:
    v = float(value) if data_type.startswith("float") else int(value)
    order: Literal["big", "little"] = "little" if word_order == "little" else "big"
    words = ModbusTcpClient.convert_to_registers(v, TYPES[data_type], word_order=order)
    if byte_order == "little":  # pymodbus has no byte-order option: swap each register
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def load(regs: dict[int, int], address: int, words: list[int]) -> None:
    for i, w in enumerate(words):
        regs[address + i] = w


# (data type, word order, byte order, raw value): extremes that a wrong decoder gets wrong;
# every word and byte order for the 32- and 64-bit types
CASES = [
    ("int16", None, "big", -12345),
    ("int16", None, "big", 32767),
    ("int16", None, "little", -2),
    ("uint16", None, "big", 65535),
    ("uint16", None, "little", 0x1234),
    ("int32", "big", "big", -2_000_000_001),
    ("int32", "little", "big", -7),
    ("int32", "big", "little", 123_456_789),
    ("uint32", "big", "big", 4_000_000_000),
    ("uint32", "little", "little", 70_000),
    ("float32", "big", "big", -273.15),
    ("float32", "little", "big", 1.0e-3),
    ("float32", "big", "little", 6.02e23),
    ("float32", "little", "little", -0.5),
    ("int64", "big", "big", -(2**62) - 12345),
    ("int64", "little", "big", -1),
    ("int64", "big", "little", 2**53 - 1),
    ("uint64", "big", "big", 2**64 - 1),
    ("uint64", "little", "little", 1_000_000_000_123),
    ("float64", "big", "big", 1.0e300),
    ("float64", "little", "big", -123456.789012345),
    ("float64", "big", "little", 2.0**-1000),
    ("float64", "little", "little", 3.141592653589793),
]


def test_every_data_type_word_and_byte_order_decodes():
    holding: dict[int, int] = {}
    inputs: dict[int, int] = {}
    registers = []
    address = 0
    for i, (dtype, order, border, raw) in enumerate(CASES):
        function = "holding" if i % 2 == 0 else "input"
        words = encode(raw, dtype, order, border)
        load(holding if function == "holding" else inputs, address, words)
        reg = dict(
            metric="power_w",
            address=address,
            function=function,
            data_type=dtype,
            count=len(words),
            byte_order=border,
            device_id=f"sv1/h1/meter/case{i}",
        )
        if order is not None:
            reg["word_order"] = order
        registers.append(reg)
        address += len(words) + 1  # leave a gap so blocks must span unused registers
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
    for i, (dtype, _, _, raw) in enumerate(CASES):
        want = float(raw)
        if dtype == "float32":  # what a float32 register pair can hold
            want = struct.unpack(">f", struct.pack(">f", raw))[0]
        assert got[f"sv1/h1/meter/case{i}"] == want, CASES[i]
    assert got["sv1/h1/meter/scaled"] == pytest.approx(2301 * 0.1 - 5.0, rel=1e-15)
    assert set(r.kind) == {Kind.power} and set(r.rack) == {"h1"}
    assert len(r.read_time_ms) == len(CASES) + 1


def test_source_level_orders_are_the_default_and_a_register_overrides_them():
    value = -1234567.5
    holding: dict[int, int] = {}
    load(holding, 0, encode(value, "float64", "little", "little"))
    load(holding, 10, encode(value, "float64", "big", "little"))
    load(holding, 20, encode(513, "uint16", None, "little"))  # 0x0201 sent as 0x0102
    registers = [
        dict(metric="power_w", address=0, data_type="float64", device_id="sv1/h1/m/a"),
        dict(
            metric="power_w",
            address=10,
            data_type="float64",
            word_order="big",
            device_id="sv1/h1/m/b",
        ),
        dict(metric="power_w", address=20, device_id="sv1/h1/m/c"),
    ]
    with ModbusTestServer({1: (holding, {})}) as srv:
        src = ModbusSource(
            ModbusSourceConfig(
                host="127.0.0.1",
                port=srv.port,
                device_id="sv1/h1/m",
                kind="power",
                rack="h1",
                word_order="little",
                byte_order="little",
                registers=registers,
            )
        )
        r = src.read()
        src.close()
    assert dict(zip(r.device_id, r.value, strict=True)) == {
        "sv1/h1/m/a": value,
        "sv1/h1/m/b": value,
        "sv1/h1/m/c": 513.0,
    }


def test_coils_and_discrete_inputs_read_as_zero_or_one():
    coils = {0: True, 1: False, 2: True, 40: True}
    discrete = {3: True, 4: False}
    registers = [
        dict(metric="fan_running", function="coil", address=a, device_id=f"sv1/h1/c/{a}")
        for a in coils
    ] + [
        dict(
            metric="alarm_active",
            function="discrete_input",
            address=a,
            device_id=f"sv1/h1/d/{a}",
        )
        for a in discrete
    ]
    # an active-low alarm contact, inverted by scale/offset
    registers.append(
        dict(
            metric="alarm_active",
            function="discrete_input",
            address=5,
            scale=-1.0,
            offset=1.0,
            device_id="sv1/h1/d/inverted",
        )
    )
    with ModbusTestServer({1: ({}, {}, coils, discrete)}) as srv:
        src = ModbusSource(
            ModbusSourceConfig(
                host="127.0.0.1",
                port=srv.port,
                device_id="sv1/h1/crah1",
                kind="air",
                rack="h1",
                registers=registers,
                max_gap=40,
            )
        )
        r = src.read()
        src.close()
    got = dict(zip(r.device_id, r.value, strict=True))
    assert got == {
        "sv1/h1/c/0": 1.0,
        "sv1/h1/c/1": 0.0,
        "sv1/h1/c/2": 1.0,
        "sv1/h1/c/40": 1.0,
        "sv1/h1/d/3": 1.0,
        "sv1/h1/d/4": 0.0,
        "sv1/h1/d/inverted": 1.0,  # contact open (0): alarm
    }
    # one request per function: coils 0...40 and discrete inputs 3...5
    assert srv.requests == [(1, 0, 41), (2, 3, 3)]


def _pt(address: int, function: str = "holding", data_type: str = "uint16"):
    cfg = ModbusSourceConfig(
        host="x",
        device_id="d",
        rack="r",
        kind="power",
        registers=[dict(metric="power_w", address=address, function=function, data_type=data_type)]
        if function in ("holding", "input")
        else [dict(metric="breaker_closed", address=address, function=function)],
    )
    return ModbusSource(cfg).blocks[0].points[0][1]


def test_blocks_join_nearby_registers_and_respect_the_protocol_limit():
    points = [_pt(a, data_type="uint32") for a in (0, 2, 10, 200)]
    points += [_pt(a, "input") for a in range(0, 300, 2)]
    points += [_pt(a, "input", "uint64") for a in (400, 520)]
    points += [_pt(a, "coil") for a in range(0, 4100, 5)]
    blocks = plan_blocks(points, max_gap=8)
    holding = [(b.start, b.count) for b in blocks if b.function == "holding"]
    assert holding == [(0, 12), (200, 2)]
    assert all(b.count <= 125 for b in blocks if b.function in ("holding", "input"))
    covered = [b.start + off for b in blocks if b.function == "input" for off, _ in b.points]
    assert sorted(covered) == [*range(0, 300, 2), 400, 520]
    # a 64-bit value is never split across two requests
    assert [(b.start, b.count) for b in blocks if b.function == "input"][-2:] == [
        (400, 4),
        (520, 4),
    ]
    coils = [(b.start, b.count) for b in blocks if b.function == "coil"]
    assert coils == [(0, 1996), (2000, 1996), (4000, 96)]  # at most 2000 bits a request


def test_reads_coalesce_into_as_few_requests_as_the_limit_allows():
    """130 adjacent registers and 2100 adjacent coils: two requests each, all values right."""
    holding = {a: a * 3 for a in range(130)}
    coils = {a: a % 3 == 0 for a in range(2100)}
    registers = [
        dict(metric="power_w", address=a, device_id=f"sv1/h1/m/r{a}") for a in range(130)
    ] + [
        dict(metric="breaker_closed", function="coil", address=a, device_id=f"sv1/h1/m/c{a}")
        for a in range(2100)
    ]
    with ModbusTestServer({1: (holding, {}, coils, {})}) as srv:
        src = ModbusSource(
            ModbusSourceConfig(
                host="127.0.0.1",
                port=srv.port,
                device_id="sv1/h1/m",
                kind="power",
                rack="h1",
                registers=registers,
            )
        )
        r = src.read()
        src.close()
    assert sorted(srv.requests) == [(1, 0, 2000), (1, 2000, 100), (3, 0, 125), (3, 125, 5)]
    got = dict(zip(r.device_id, r.value, strict=True))
    assert all(got[f"sv1/h1/m/r{a}"] == a * 3 for a in range(130))
    assert all(got[f"sv1/h1/m/c{a}"] == float(a % 3 == 0) for a in range(2100))


Tables = tuple[dict[int, int], dict[int, int], dict[int, bool], dict[int, bool]]


def _read_map(regmap: Path, spec: dict, device_id: str, rack: str):
    """Serve `spec`'s raw values per `regmap` from a real Modbus server; read them back."""
    with ModbusTestServer({1: _values(spec, regmap)}) as srv:
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


def _values(spec: dict[str, tuple[float, float]], regmap: Path) -> Tables:
    """Coils, discrete inputs and registers holding each metric's raw value, per the map."""
    cfg = ModbusSourceConfig(host="x", device_id="d", rack="r", register_map=regmap)
    tables: Tables = ({}, {}, {}, {})
    for reg in cfg.registers:
        raw = spec[f"{reg.device_suffix or ''}:{reg.metric}"][0]
        if reg.function == "coil":
            tables[2][reg.address] = bool(raw)
        elif reg.function == "discrete_input":
            tables[3][reg.address] = bool(raw)
        else:
            assert reg.data_type is not None
            words = encode(raw, reg.data_type, reg.word_order, reg.byte_order or "big")
            load(tables[0] if reg.function == "holding" else tables[1], reg.address, words)
    return tables


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
        ":fan_running": (1, 1.0),
        ":alarm_active": (0, 0.0),
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
        ":energy_kwh": (88_412_500, 88412.5),  # the int64 register counts Wh
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
    assert got[":energy_kwh"][1] == Kind.facility


def test_meter_energy_keeps_full_resolution_near_1e9_kwh():
    """Two reads one 1 s interval apart at 1.8 MW (0.5 kWh) on a count near 1e9 kWh: the
    shipped int64 Wh register gives the exact difference; a float32 kWh register cannot
    even tell the two counts apart (it moves in 64 kWh steps there)."""
    regmap = SHIPPED_MAPS / "power-meter-3phase.toml"
    spec = {k: (1.0, 1.0) for k in _metric_keys(regmap)}
    readings = []
    for wh in (1_000_000_000_125, 1_000_000_000_625, 987_654_321_987_654, 987_654_321_988_154):
        spec[":energy_kwh"] = (wh, wh / 1000)
        r = _read_map(regmap, spec, "sv1/facility/utility", "facility")
        (kwh,) = [v for m, v in zip(r.metric, r.value, strict=True) if m == "energy_kwh"]
        readings.append(kwh)
    assert readings[0] == 1_000_000_000.125 and readings[1] - readings[0] == 0.5  # exact
    # any count: the difference is right to far below 1 Wh
    assert abs((readings[3] - readings[2]) - 0.5) < 1e-6
    as_float32 = [struct.unpack(">f", struct.pack(">f", v))[0] for v in readings[:2]]
    assert as_float32[1] - as_float32[0] == 0.0  # what the old float32 register gave


def _metric_keys(regmap: Path) -> list[str]:
    cfg = ModbusSourceConfig(host="x", device_id="d", rack="r", register_map=regmap)
    return [f"{r.device_suffix or ''}:{r.metric}" for r in cfg.registers]


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
            row = cur.execute(
                "SELECT count(*) FROM ingested_batches WHERE collector = ?", [cfg.name]
            ).fetchone()
            assert row is not None
            return int(row[0])

        ingest_until(ingestor, lambda: stored_batches() >= daemon.stats.batches_delivered)
        crah = cur.execute(
            "SELECT device_id, metric, value FROM samples WHERE device_id LIKE ?",
            [f"sv1/h1/crah-{unique}%"],
        ).fetchall()
        events = cur.execute(
            # the simulated rack also announces its parts (inventory): not what is tested
            "SELECT kind, message FROM events WHERE collector = ? AND kind <> 'inventory'",
            [cfg.name],
        ).fetchall()
    finally:
        ingestor.close()
        store.close()
    assert crah == [(f"sv1/h1/crah-{unique}", "supply_air_temp_c", -1.5)]
    assert [k for k, _ in events] == [EventKind.source_error.value]
    assert "crah-dead" in events[0][1] and "cannot connect" in events[0][1]


def _three_blocks(port: int, **kw) -> ModbusSource:
    """Holding 0...1, input 10 (a different request each) and discrete input 0."""
    return ModbusSource(
        ModbusSourceConfig(
            host="127.0.0.1",
            port=port,
            device_id="sv1/h1/crah1",
            kind="air",
            rack="h1",
            timeout_s=0.3,
            registers=[
                dict(metric="supply_air_temp_c", address=0, data_type="int16", scale=0.1),
                dict(metric="fan_speed_pct", address=1),
                dict(metric="humidity_pct", address=10, function="input"),
                dict(metric="fan_running", address=0, function="discrete_input"),
            ],
            **kw,
        )
    )


TABLES: Tables = ({0: 215, 1: 80}, {10: 45}, {}, {0: True})


@pytest.mark.parametrize(
    "fault, reason, message",
    [
        (
            Fault("holding", 0, 1, ExcCodes.ILLEGAL_ADDRESS),
            "exception",
            "holding registers 0...1: device answered exception 2 (illegal data address)",
        ),
        (  # a device without input registers
            Fault("input", 0, 65535, ExcCodes.ILLEGAL_FUNCTION),
            "exception",
            "input registers 10...10: device answered exception 1 (illegal function)",
        ),
        (
            Fault("discrete_input", 0, 0, ExcCodes.DEVICE_BUSY),
            "exception",
            "discrete inputs 0...0: device answered exception 6 (server device busy)",
        ),
        (
            Fault("holding", 0, 1, "short"),
            "short",
            "holding registers 0...1: short response: 1 of 2 registers",
        ),
        (
            Fault("holding", 0, 1, "silent"),
            "timeout",
            "holding registers 0...1: no answer within 0.3 s",
        ),
    ],
    ids=["illegal-address", "illegal-function", "busy", "short", "timeout"],
)
def test_a_failing_block_is_counted_and_reported_and_the_others_still_read(
    fault, reason, message, caplog
):
    caplog.set_level(logging.INFO, logger="collectors.sources.modbus.source")
    with ModbusTestServer({1: TABLES}, faults=[fault]) as srv:
        src = _three_blocks(srv.port)
        first = src.read()
        again = src.read()
        srv.faults.clear()  # the device recovers
        healed = src.read()
        src.close()
    everything = {
        "supply_air_temp_c": 21.5,
        "fan_speed_pct": 80.0,
        "humidity_pct": 45.0,
        "fan_running": 1.0,
    }
    failed = {"holding": ["supply_air_temp_c", "fan_speed_pct"], "input": ["humidity_pct"]}.get(
        fault.function, ["fan_running"]
    )
    for r in (first, again):
        assert dict(zip(r.metric, r.value, strict=True)) == {
            m: v for m, v in everything.items() if m not in failed
        }
    assert dict(zip(healed.metric, healed.value, strict=True)) == everything
    assert src.errors == {reason: 2}  # every failed read counted
    # one event and one warning when the block starts failing, not on every read
    (event,) = first.events
    assert event.kind == EventKind.source_error and event.device_id == "sv1/h1/crah1"
    assert message in event.message and "1 of 3 register block(s) failed" in event.message
    assert event.attrs["reason"] == reason
    assert again.events == [] and healed.events == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0]
    assert any("read again" in r.getMessage() for r in caplog.records)


def test_a_late_answer_is_not_taken_for_the_next_request():
    """The holding block answers after the timeout: that late answer must not be read as
    the answer to a later request, in this pass or the next."""
    fault = Fault("holding", 0, 1, "slow", delay_s=0.5)
    with ModbusTestServer({1: TABLES}, faults=[fault]) as srv:
        src = _three_blocks(srv.port)
        reads = [src.read()]
        time.sleep(0.4)  # the late answer arrives
        reads.append(src.read())
        src.close()
    for r in reads:
        assert dict(zip(r.metric, r.value, strict=True)) == {
            "humidity_pct": 45.0,
            "fan_running": 1.0,
        }
    assert src.errors == {"timeout": 2}


def test_a_device_vanishing_mid_read_keeps_what_was_read():
    """The server shuts down on the holding-register request: the block read before it is
    kept, the rest of the pass is skipped (not waited for); the next read raises."""
    with ModbusTestServer({1: TABLES}, faults=[Fault("holding", 0, 1, "vanish")]) as srv:
        src = _three_blocks(srv.port)
        r = src.read()
        srv.stop()
        with pytest.raises(ModbusError, match="cannot connect|connection lost"):
            src.read()
        src.close()
    assert dict(zip(r.metric, r.value, strict=True)) == {"fan_running": 1.0}
    (event,) = r.events
    assert "holding registers 0...1: connection lost" in event.message
    assert "cannot reconnect; skipped input registers 10...10" in event.message
    assert src.errors["connection"] >= 1


def test_a_silent_device_costs_two_timeouts_not_one_per_block():
    with silent_listener() as port:
        src = _three_blocks(port)
        with pytest.raises(ModbusError, match=r"no answer within 0\.3 s \(and 2 more\)"):
            src.read()
        src.close()
    assert src.errors == {"timeout": 2}


def test_the_daemon_reader_counts_whole_and_partial_failures():
    """Through the daemon's SourceReader: a partial failure delivers the good blocks and the
    source's event; a device that stops answering is counted as a failed read, not a crash."""
    with ModbusTestServer(
        {1: TABLES}, faults=[Fault("input", 10, 10, ExcCodes.DEVICE_BUSY)]
    ) as srv:
        src = _three_blocks(srv.port)
        stats = DaemonStats()
        reader = SourceReader([src], [2.0], stats, "sv1/collector/c1")
        partial = reader.read_tick()
        srv.stop()
        down = reader.read_tick()
        reader.close()
    st = stats.sources[src.name]
    assert sorted(partial.metric) == ["fan_running", "fan_speed_pct", "supply_air_temp_c"]
    assert [e.attrs["reason"] for e in partial.events] == ["exception"]
    assert len(down) == 0 and [e.attrs["reason"] for e in down.events] == ["exception"]
    assert "ModbusError" in down.events[0].message
    assert st.reads_ok == 1 and st.errors == {"partial": 1, "exception": 1} and st.failing


def test_config_errors_name_the_register(tmp_path):
    base = {"type": "modbus", "host": "h", "device_id": "d", "rack": "r", "kind": "air"}

    def error(*registers: dict) -> str:
        with pytest.raises(ValueError) as exc:
            build_source({**base, "registers": list(registers)}, 3)
        return str(exc.value)

    assert "registers[0].metric: 'nope' is not a air metric" in error(
        {"metric": "nope", "address": 0}
    )
    assert "registers[0].unit: 'F' but supply_air_temp_c" in error(
        {"metric": "supply_air_temp_c", "address": 0, "unit": "F"}
    )
    msg = error({"metric": "fan_speed_pct", "address": 0, "data_type": "int128"})
    assert msg.startswith("sources[3] (modbus): registers.0.data_type: Input should be")
    assert "'float64'" in msg
    msg = error(
        {"metric": "fan_speed_pct", "address": 7, "data_type": "int16", "word_order": "big"}
    )
    assert (
        "registers.0: Value error, fan_speed_pct at holding 7: word_order given for 16-bit" in msg
    )
    msg = error({"metric": "fan_power_w", "address": 7, "data_type": "float64", "count": 2})
    assert "fan_power_w at holding 7: count = 2 but float64 spans 4 registers" in msg
    msg = error({"metric": "fan_running", "address": 0, "function": "coil", "data_type": "uint16"})
    assert "fan_running at coil 0: data_type 'uint16' on a single bit" in msg
    msg = error({"metric": "fan_running", "address": 0, "data_type": "bool"})
    assert "data_type 'bool' is for coils and discrete inputs" in msg
    msg = error({"metric": "fan_power_w", "address": 65535, "data_type": "uint32"})
    assert "runs past address 65535" in msg
    msg = error(
        {"metric": "fan_power_w", "address": 10, "data_type": "uint32"},
        {"metric": "fan_running", "address": 10, "function": "coil"},  # another table: fine
        {"metric": "cooling_kw", "address": 11, "data_type": "float32"},
    )
    assert (
        "registers[2] (cooling_kw, holding 11...12) overlaps registers[0] "
        "(fan_power_w, holding 10...11)"
    ) in msg
    # in a map file: the file and the register are named
    bad = tmp_path / "map.toml"
    bad.write_text(
        '[[registers]]\nmetric = "fan_power_w"\naddress = 0\ndata_type = "int64"\n'
        '[[registers]]\nmetric = "fan_speed_pct"\naddress = 3\n'
    )
    with pytest.raises(
        ValueError,
        match=r"map\.toml: .*registers\[1\] \(fan_speed_pct, holding 3\.\.\.3\) overlaps",
    ):
        build_source({**base, "register_map": str(bad)}, 0)
    # a map register and an inline one on the same address
    bad.write_text('[[registers]]\nmetric = "fan_power_w"\naddress = 0\n')
    with pytest.raises(
        ValueError,
        match=r"registers\[0\] \(fan_speed_pct, holding 0\.\.\.0\) overlaps "
        r"register_map \S*map\.toml registers\[0\] \(fan_power_w, holding 0\.\.\.0\)",
    ):
        build_source(
            {
                **base,
                "register_map": str(bad),
                "registers": [{"metric": "fan_speed_pct", "address": 0}],
            },
            0,
        )
    bad.write_text('[[registers]]\nmetric = "fan_speed_pct"\naddress = -1\n')
    with pytest.raises(ValueError, match=r"map\.toml: registers\.0\.address"):
        build_source({**base, "register_map": str(bad)}, 0)
    with pytest.raises(ValueError, match="none configured"):
        build_source(base, 0)
