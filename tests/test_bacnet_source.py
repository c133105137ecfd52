"""BACnet/IP source against a BACnet device simulated by bacpypes3 in its own process
(tests/bacnet_device.py) on loopback UDP. The device's state is checked through its
stdin/stdout, not through the client under test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from collectors.daemon import CollectorDaemon
from collectors.daemon_config import CollectorConfig
from collectors.reader import SourceReader
from collectors.sources import build_source
from collectors.sources.bacnet.source import (
    SHIPPED_LISTS,
    BacnetError,
    BacnetSource,
    BacnetSourceConfig,
)
from collectors.sources.bacnet.writer import WriteRefusedError
from collectors.stats import DaemonStats
from domain.contract import EventKind, Kind
from ingest.consumer import Ingestor
from ingest.store import Store
from tests.conftest import REPO
from tests.helpers import ingest_until, wait_for


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Device:
    """tests/bacnet_device.py as a subprocess; `get`/`set` talk to it over stdin/stdout."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_udp_port()
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Device:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bacnet_device", "--port", str(self.port), *self.extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until bound (or the process died)
        assert line.strip() == "ready", f"device did not start: {line!r}"
        return self

    def _ask(self, line: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def get(self, obj: str) -> dict[str, Any]:
        return self._ask(f"get {obj}")

    def set(self, obj: str, value: float | str) -> None:
        self._ask(f"set {obj} {value}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the device exits at end of input
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@pytest.fixture
def device() -> Iterator[Device]:
    d = Device().start()
    try:
        yield d
    finally:
        d.stop()


def make_source(dev: Device, points: list[dict[str, Any]], **extra: Any) -> BacnetSource:
    raw: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": dev.port,
        "local_address": f"127.0.0.1:{free_udp_port()}",
        "timeout_s": 0.3,
        "device_id": "sv1/facility/chiller-plant",
        "kind": "facility",
        "rack": "facility",
        "points": points,
        **extra,
    }
    return BacnetSource(BacnetSourceConfig.model_validate(raw))


def by_metric(r: Any) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for d, m, v in zip(r.device_id, r.metric, r.value, strict=True):
        out.setdefault((d, m), []).append(v)
    return out


PLANT = "sv1/facility/chiller-plant"
# the shipped chiller-plant list against the simulated plant: metric -> expected reading
EXPECTED = {
    "chw_supply_temp_c": 6.5,
    "chw_return_temp_c": 12.25,
    "chiller_power_kw": 312.5,  # 312500 W x 0.001
    "cw_supply_temp_c": 29.5,
    "tower_power_kw": 41.25,
    "pump_power_kw": 18.5,
    "cooling_load_kw": 950.0,
    "chw_supply_setpoint_c": 7.0,
    "cw_supply_setpoint_c": 29.0,
    "chiller_running": 1.0,  # binary-input active
}


@pytest.mark.parametrize("rpm_on_device", [True, False], ids=["rpm", "no-rpm-device"])
def test_shipped_chiller_plant_list_reads_every_point(rpm_on_device):
    """ReadPropertyMultiple where the device has it; a device without it rejects the
    service and the source goes on with ReadProperty per point, same values."""
    dev = Device(None, *([] if rpm_on_device else ["--no-rpm"])).start()
    src = build_source(
        {
            "type": "bacnet",
            "host": "127.0.0.1",
            "port": dev.port,
            "local_address": f"127.0.0.1:{free_udp_port()}",
            "timeout_s": 0.3,
            "device_id": PLANT,
            "rack": "facility",
            "point_list": "chiller-plant",
        },
        0,
    )
    assert isinstance(src, BacnetSource)
    try:
        r = src.read()
    finally:
        src.close()
        dev.stop()
    got = {m: v[0] for (d, m), v in by_metric(r).items() if d == PLANT}
    oat = got.pop("outdoor_drybulb_c")  # the ramping point
    assert oat >= 20.0
    assert got == pytest.approx(EXPECTED, rel=1e-6)
    assert set(r.kind) == {Kind.facility} and set(r.rack) == {"facility"}
    assert src.use_rpm is rpm_on_device
    assert not src.errors and not r.events


def test_scale_offset_kinds_and_device_ids(device):
    src = make_source(
        device,
        [
            {"object": "analog-input,1", "metric": "chw_supply_temp_c", "offset": -0.5},
            {"object": "analog-input,3", "metric": "chiller_power_kw", "scale": 0.001},
            {
                "object": "analog-output,1",
                "metric": "chw_valve_pct",
                "kind": "air",
                "device_id": "sv1/h1/crah1",
            },
            {"object": "binary-value,1", "metric": "chiller_running", "device_suffix": "ch1"},
        ],
        max_points_per_request=2,  # two RPM requests
    )
    try:
        r = src.read()
    finally:
        src.close()
    assert by_metric(r) == {
        (PLANT, "chw_supply_temp_c"): [6.0],
        (PLANT, "chiller_power_kw"): [pytest.approx(312.5)],
        ("sv1/h1/crah1", "chw_valve_pct"): [40.0],
        (f"{PLANT}/ch1", "chiller_running"): [1.0],
    }
    kinds = dict(zip(r.metric, r.kind, strict=True))
    assert kinds["chw_valve_pct"] == Kind.air and kinds["chiller_running"] == Kind.facility


@pytest.mark.parametrize("confirmed", [False, True], ids=["unconfirmed", "confirmed"])
def test_cov_notifications_are_reported_with_their_arrival_times(device, confirmed):
    src = make_source(
        device,
        [
            {"object": "analog-input,4", "metric": "outdoor_drybulb_c", "cov": True},
            {"object": "analog-input,1", "metric": "chw_supply_temp_c", "cov": True},
            {"object": "analog-input,2", "metric": "chw_return_temp_c"},
        ],
        cov_confirmed=confirmed,
    )
    try:
        first = src.read()  # polls everything, then subscribes
        assert all(s.active for s in src.subs.values())
        wait_for(lambda: src.subs["analog-input,4"].notifications >= 4, timeout_s=5)
        device.set("analog-input,1", 5.75)
        wait_for(lambda: src.subs["analog-input,1"].last == 5.75, timeout_s=5)
        second = src.read()
    finally:
        src.close()
    assert len(first) == 3
    rows = [
        (t, v)
        for m, t, v in zip(second.metric, second.read_time_ms, second.value, strict=True)
        if m == "outdoor_drybulb_c"
    ]
    # the device steps it by 0.5 every 0.2 s: several notified values between two reads,
    # each with its own time, which polling once per read cannot produce
    assert len(rows) >= 3
    assert [v for _, v in rows] == sorted(v for _, v in rows)
    assert len({t for t, _ in rows}) == len(rows)
    got = by_metric(second)
    assert got[(PLANT, "chw_supply_temp_c")][-1] == 5.75
    assert got[(PLANT, "chw_return_temp_c")] == [12.25]  # polled


def test_write_at_priority_and_relinquish(device):
    src = make_source(
        device,
        [
            {
                "object": "analog-value,1",
                "metric": "chw_supply_setpoint_c",
                "writable": True,
                "min": 5.0,
                "max": 14.0,
            },
            {"object": "binary-value,1", "metric": "chiller_running", "writable": True},
            {"object": "analog-input,1", "metric": "chw_supply_temp_c"},
        ],
    )
    writer = src.writer()
    try:
        writer.write_setpoint("analog-value,1", 6.0)  # the source's default priority 8
        state = device.get("analog-value,1")
        assert state["present_value"] == 6.0
        assert state["priority_array"][7] == 6.0
        assert state["priority_array"][:7] == [None] * 7
        assert by_metric(src.read())[(PLANT, "chw_supply_setpoint_c")] == [6.0]

        writer.write_setpoint("analog-value,1", 9.5, priority=4)  # a higher priority wins
        state = device.get("analog-value,1")
        assert state["present_value"] == 9.5 and state["priority_array"][3] == 9.5
        writer.relinquish("analog-value,1", priority=4)
        assert device.get("analog-value,1")["present_value"] == 6.0  # back to priority 8
        writer.relinquish("analog-value,1")
        state = device.get("analog-value,1")
        assert state["present_value"] == 7.0  # relinquish-default
        assert state["priority_array"] == [None] * 16

        writer.write_setpoint("binary-value,1", 0)
        assert device.get("binary-value,1")["present_value"] == "inactive"
        writer.relinquish("binary-value,1")
        assert device.get("binary-value,1")["present_value"] == "active"

        limits = r"14\.5 outside the point's limits \[5\.0, 14\.0\]"
        with pytest.raises(WriteRefusedError, match=limits):
            writer.write_setpoint("analog-value,1", 14.5)
        with pytest.raises(WriteRefusedError, match="not marked writable"):
            writer.write_setpoint("analog-input,1", 6.0)
        with pytest.raises(WriteRefusedError, match="not in the point list"):
            writer.write_setpoint("analog-value,2", 20.0)
        with pytest.raises(WriteRefusedError, match="reserved"):
            writer.write_setpoint("analog-value,1", 6.0, priority=6)
        assert device.get("analog-value,1")["present_value"] == 7.0  # nothing was sent
        assert device.get("analog-input,1")["present_value"] == 6.5
    finally:
        src.close()


def test_unknown_object_and_wrong_type_are_counted_and_the_rest_is_read(device):
    for rpm in (True, False):
        src = make_source(
            device,
            [
                {"object": "analog-input,1", "metric": "chw_supply_temp_c"},
                {"object": "analog-input,77", "metric": "chw_return_temp_c"},
                {"object": "analog-value,9", "metric": "cw_supply_temp_c"},
                {"object": "analog-input,5", "metric": "cw_supply_setpoint_c"},
            ],
            read_multiple=rpm,
        )
        try:
            first = src.read()
            second = src.read()
        finally:
            src.close()
        assert (
            by_metric(first)
            == by_metric(second)
            == {
                (PLANT, "chw_supply_temp_c"): [6.5],
                (PLANT, "cw_supply_setpoint_c"): [29.5],
            }
        )
        assert src.errors == {"unknown_object": 2, "wrong_type": 2}, rpm
        assert first.failed_parts == second.failed_parts == 2  # the daemon counts them too
        # one event when the problem appears, not one per read
        assert [e.kind for e in first.events] == [EventKind.source_error]
        assert "analog-input,77 (chw_return_temp_c): unknown-object" in first.events[0].message
        assert "analog-value,9 (cw_supply_temp_c): wrong type" in first.events[0].message
        assert second.events == []


def test_device_killed_mid_schedule_then_restarted(device):
    """The daemon's reader with the source: a killed device gives counted timeouts (no
    crash, no hang past the deadline); restarted on its port, the source reads again and
    subscribes to COV again. Every point is COV: once subscribed, none is polled but one is
    read as a heartbeat, so a dead device never leaves its last values repeating."""
    src = make_source(
        device,
        [
            {"object": "analog-input,1", "metric": "chw_supply_temp_c", "cov": True},
            {"object": "analog-input,2", "metric": "chw_return_temp_c", "cov": True},
        ],
    )
    stats = DaemonStats()
    reader = SourceReader([src], [3.0], stats, "sv1/collector/test", error_event_interval_s=60)
    st = stats.sources[src.name]
    try:
        assert len(reader.read_tick()) == 2  # polled, then subscribed
        wait_for(lambda: all(s.last is not None for s in src.subs.values()), timeout_s=5)
        assert by_metric(reader.read_tick()) == {  # from the notifications
            (PLANT, "chw_supply_temp_c"): [6.5],
            (PLANT, "chw_return_temp_c"): [12.25],
        }
        assert all(s.active for s in src.subs.values())
        device.kill()
        t0 = time.monotonic()
        failed = [reader.read_tick(), reader.read_tick()]
        assert time.monotonic() - t0 < 3.0  # timeout_s 0.3 per request, not the deadline
        assert [len(r) for r in failed] == [0, 0]
        assert st.errors["exception"] == 2 and st.failing
        assert src.errors["timeout"] == 2
        assert [e.kind for e in failed[0].events] == [EventKind.source_error]
        assert "no response" in failed[0].events[0].message
        assert not src.subs["analog-input,1"].active

        device.start()  # same port
        back = reader.read_tick()
        assert by_metric(back) == {
            (PLANT, "chw_supply_temp_c"): [6.5],
            (PLANT, "chw_return_temp_c"): [12.25],
        }
        assert not st.failing and st.reads_ok == 3
        assert all(s.active for s in src.subs.values())  # subscribed again
        device.set("analog-input,1", 8.0)
        wait_for(lambda: src.subs["analog-input,1"].last == 8.0, timeout_s=5)
    finally:
        reader.close()


def test_config_errors_name_the_field(tmp_path):
    base = {"type": "bacnet", "host": "h", "device_id": "d", "rack": "r", "kind": "facility"}
    with pytest.raises(ValueError, match=r"points\.0\.object: .*'analog-input;1' is not"):
        build_source({**base, "points": [{"object": "analog-input;1", "metric": "power_kw"}]}, 0)
    with pytest.raises(ValueError, match=r"object type 'multi-state-value' not supported"):
        build_source(
            {**base, "points": [{"object": "multi-state-value,1", "metric": "power_kw"}]}, 0
        )
    with pytest.raises(ValueError, match=r"points\[0\]\.metric: 'nope' is not a facility"):
        build_source({**base, "points": [{"object": "analog-input,1", "metric": "nope"}]}, 0)
    with pytest.raises(ValueError, match=r"points\[0\]\.unit: 'F' but chw_supply_temp_c"):
        build_source(
            {
                **base,
                "points": [
                    {"object": "analog-input,1", "metric": "chw_supply_temp_c", "unit": "F"}
                ],
            },
            0,
        )
    with pytest.raises(ValueError, match="writable: analog-input has no commandable"):
        build_source(
            {**base, "points": [{"object": "analog-input,1", "metric": "power_kw", "writable": 1}]},
            0,
        )
    with pytest.raises(ValueError, match=r"points\[1\]\.object: analog-input,1 listed twice"):
        build_source(
            {
                **base,
                "points": [
                    {"object": "analog-input,1", "metric": "power_kw"},
                    {"object": "analog-input, 1", "metric": "chiller_power_kw"},
                ],
            },
            0,
        )
    bad = tmp_path / "points.toml"
    bad.write_text('[[points]]\nobject = "analog-input,1"\nmetric = "power_kw"\nscale = 0\n')
    with pytest.raises(ValueError, match=r"points\.toml: points\.0\.scale"):
        build_source({**base, "point_list": str(bad)}, 0)
    with pytest.raises(ValueError, match="none configured"):
        build_source(base, 0)
    for shipped in SHIPPED_LISTS.glob("*.toml"):  # each shipped list validates
        cfg = BacnetSourceConfig.model_validate({**base, "kind": None, "point_list": shipped})
        assert cfg.points


def test_unreachable_device_raises_a_clear_error():
    dead = Device()  # a port nobody listens on
    src = make_source(dead, [{"object": "analog-input,1", "metric": "chw_supply_temp_c"}])
    try:
        with pytest.raises(BacnetError, match=r"127\.0\.0\.1:\d+: no response"):
            src.read()
        with pytest.raises(BacnetError, match="no response"):
            src.read()
    finally:
        src.close()
    assert src.errors == {"timeout": 2}


def test_local_address_that_cannot_be_bound_is_a_counted_error():
    src = make_source(
        Device(),
        [{"object": "analog-input,1", "metric": "chw_supply_temp_c"}],
        local_address="192.0.2.1:0",  # TEST-NET-1: on no host
    )
    try:
        with pytest.raises(BacnetError, match=r"cannot bind local address 192\.0\.2\.1:0"):
            src.read()
    finally:
        src.close()
    assert src.errors == {"error": 1}


def test_device_without_cov_keeps_the_point_polled():
    dev = Device(None, "--no-cov").start()
    src = make_source(
        dev, [{"object": "analog-input,1", "metric": "chw_supply_temp_c", "cov": True}]
    )
    try:
        reads = [src.read() for _ in range(3)]
        dev.set("analog-input,1", 7.25)
        last = src.read()
    finally:
        src.close()
        dev.stop()
    assert [r.value for r in reads] == [[6.5]] * 3
    assert last.value == [7.25]  # polled: the change is seen at the next read
    assert not src.subs["analog-input,1"].active
    assert src.errors == {"cov_reject": 1}  # tried again only after cov_retry_s


def test_daemon_delivers_the_live_device_and_reports_the_dead_one(device, settings, unique):
    """run_once with a dead BACnet device and a live one that has an unknown object: the
    live points reach DuckDB, with a source_error event for each problem."""
    points = [
        {"object": "analog-input,1", "metric": "chw_supply_temp_c"},
        {"object": "analog-input,77", "metric": "chw_return_temp_c"},
    ]
    cfg = CollectorConfig(
        name=f"bac-{unique}",
        site="sv1",
        interval_s=1.0,
        kafka={"bootstrap": settings.kafka_bootstrap},
        sources=[{"type": "simulated"}],
    )
    alive = make_source(device, points, name="plant-alive", device_id=f"sv1/plant/chiller-{unique}")
    dead = make_source(
        Device(), points, name="plant-dead", device_id=f"sv1/plant/chiller-{unique}-dead"
    )
    daemon = CollectorDaemon(cfg, sources=[dead, alive])
    sent = daemon.run_once()
    daemon.close()
    assert sent == 1
    store = Store(settings.db_path)
    ingestor = Ingestor(store, settings.kafka_bootstrap, settings.consumer_group)
    cur = store.cursor()
    try:

        def stored_batches() -> int:
            row = cur.execute(
                "SELECT count(*) FROM ingested_batches WHERE collector = ?", [cfg.name]
            ).fetchone()
            return int(row[0]) if row else 0

        ingest_until(ingestor, lambda: stored_batches() >= daemon.stats.batches_delivered)
        rows = cur.execute(
            "SELECT device_id, metric, value FROM samples WHERE device_id LIKE ?",
            [f"sv1/plant/chiller-{unique}%"],
        ).fetchall()
        events = cur.execute(
            "SELECT message FROM events WHERE collector = ? ORDER BY message", [cfg.name]
        ).fetchall()
    finally:
        ingestor.close()
        store.close()
    assert rows == [(f"sv1/plant/chiller-{unique}", "chw_supply_temp_c", 6.5)]
    messages = [m for (m,) in events]
    assert len(messages) == 2
    assert any("analog-input,77 (chw_return_temp_c): unknown-object" in m for m in messages)
    assert any("plant-dead" in m and "no response" in m for m in messages)
    assert daemon.stats.sources["plant-dead"].errors["exception"] == 1
    assert dead.errors == {"timeout": 1} and alive.errors == {"unknown_object": 1}
