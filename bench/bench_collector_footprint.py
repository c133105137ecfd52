"""Collector footprint, measured from outside with psutil (resident memory and CPU time
of the daemon process alone), producing to a real broker. Targets (issues 4 and 22):
< 100 MB RSS, < 3 % of one core.

1. One HGX node: 8 simulated GPUs and one Redfish CDU (DMTF's mockup over loopback HTTP)
   every second.
2. Every protocol in one daemon (issue 22), the example rack's devices: NVML (8 GPUs)
   and Redfish (the CDU) every second, Modbus TCP (a CRAH, the shipped map) and BACnet/IP
   (the chiller plant's point list) every 5 s, SNMP v3 authPriv (the UPS, UPS-MIB) every
   10 s (per-source `interval_s`: facility controllers are polled at 5-60 s), each
   against a real server on loopback. Without an NVIDIA driver the daemon runs on
   tests/fake_pynvml.py (the pynvml API; a fake only for the absent hardware); the note
   says which. The daemon runs as a collector install does, without dev-only packages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.harness import Result
from dctwin.broker import DevBroker, stop_process
from dctwin.redfish_mockup import MockupServer
from domain.topics import ensure_topics

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SITE = HERE / "sites" / "one-node.toml"
WARMUP_S = 4.0  # imports, the first Redfish walk, Kafka metadata


def _config(bootstrap: str, redfish_url: str) -> str:
    return f"""
name = "footprint-bench"
site = "bench"
interval_s = 1.0

[kafka]
bootstrap = "{bootstrap}"
compression = "zstd"

[[sources]]
type = "simulated"
site_file = "{SITE}"
racks = ["rk1"]

[[sources]]
type = "redfish"
name = "cdu"
base_url = "{redfish_url}"
auth = "session"
username = "admin"
password = "secret"
device_prefix = "bench/h1/cdu-row1"
rack = "h1"
chassis_kind = "cooling"
"""


def _measure(
    config_text: str,
    tmp: Path,
    window_s: float,
    argv: list[str],
    env_extra: dict[str, str],
    warmup_s: float = WARMUP_S,
) -> tuple[float, float, float]:
    """Start `dctwin collect` with the config, wait out the warm-up, then sample RSS and
    CPU over the window: (peak RSS MB, CPU % of one core, seconds measured)."""
    cfg = tmp / "collector.toml"
    cfg.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # own broker
    env.update(env_extra)
    log_path = tmp / "daemon.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*argv, "collect", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    try:
        p = psutil.Process(proc.pid)
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {log_path.read_text()}")
        cpu0, t0 = p.cpu_times(), time.monotonic()
        rss = []
        while time.monotonic() - t0 < window_s:
            rss.append(p.memory_info().rss / 2**20)
            time.sleep(0.5)
        cpu1, t1 = p.cpu_times(), time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {log_path.read_text()}")
    finally:
        stop_process(proc)
        log.close()
    if proc.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"daemon failed ({proc.returncode}): {log_path.read_text()[-2000:]}")
    cpu_pct = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0) * 100
    return max(rss), cpu_pct, t1 - t0


CLI = [sys.executable, "-c", "from dctwin.cli.main import app; app()"]
# As a collector install (`pip install dctwin[collector]`) runs it: the dev venv also has
# pysmi (snmpsim's dependency), which pysnmp imports when present (~15 MB); hidden here.
COLLECTOR_INSTALL = "import sys\nsys.modules['pysmi'] = None\n"
# with pynvml replaced by the fake where no driver is loaded (see the docstring)
FAKE_NVML = "from tests.fake_pynvml import FakeNvml\nsys.modules['pynvml'] = FakeNvml()\n"
ALL_PROTOCOLS_WARMUP_S = 12.0  # + SNMP engine, BACnet application, first walks


def _one_node(bootstrap: str, window_s: float) -> list[Result]:
    with (
        MockupServer("public-cooling-unit", auth="session") as bmc,
        tempfile.TemporaryDirectory() as tmp,
    ):
        gets0 = sum(n for k, n in bmc.requests.items() if k.startswith("GET"))
        peak, cpu_pct, seconds = _measure(_config(bootstrap, bmc.url), Path(tmp), window_s, CLI, {})
        gets = sum(n for k, n in bmc.requests.items() if k.startswith("GET")) - gets0
    if gets < round(seconds):  # the daemon must really have been reading
        raise RuntimeError(f"only {gets} Redfish requests in {seconds:.0f} s")
    note = f"{window_s:.0f} s window, {gets} Redfish GETs (~{gets / seconds:.0f}/s)"
    name = "collector daemon: 8 sim GPUs + 1 Redfish CDU @ 1 s"
    return [
        Result(name, "peak RSS MB", peak, "< 100", peak < 100, note=note),
        Result(name, "CPU % of one core", cpu_pct, "< 3", cpu_pct < 3, note=note),
    ]


def _real_nvml() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def _all_protocols_config(
    bootstrap: str, redfish_url: str, modbus_port: int, snmp_port: int, bacnet_port: int
) -> str:
    from tests.snmp_agent import V3_AUTH_KEY, V3_PRIV_KEY, V3_USER

    return f"""
name = "footprint-all"
site = "sv1"
interval_s = 1.0

[kafka]
bootstrap = "{bootstrap}"
compression = "zstd"

[[sources]]
type = "nvml"
node_id = "sv1/h1/row1/rk101/n01"

[[sources]]
type = "redfish"
name = "cdu"
base_url = "{redfish_url}"
auth = "session"
username = "admin"
password = "secret"
device_prefix = "sv1/h1/cdu-row1"
rack = "h1"
chassis_kind = "cooling"

[[sources]]
type = "modbus"
name = "crah1"
host = "127.0.0.1"
port = {modbus_port}
unit_id = 1
timeout_s = 0.5
device_id = "sv1/h1/crah1"
rack = "h1"
register_map = "crah"
interval_s = 5.0

[[sources]]
type = "snmp"
name = "ups"
host = "127.0.0.1"
port = {snmp_port}
version = "3"
user = "{V3_USER}"
auth_protocol = "sha256"
auth_key = "{V3_AUTH_KEY}"
priv_protocol = "aes"
priv_key = "{V3_PRIV_KEY}"
context_name = "ups"
timeout_s = 0.5
retries = 0
device_id = "sv1/facility/ups"
rack = "facility"
map = "ups-mib"
interval_s = 10.0

[[sources]]
type = "bacnet"
name = "chiller-plant"
host = "127.0.0.1"
port = {bacnet_port}
local_address = "127.0.0.1:0"
timeout_s = 0.5
device_id = "sv1/plant/chiller-plant"
rack = "facility"
point_list = "chiller-plant"
interval_s = 5.0
"""


def _all_protocols(bootstrap: str, window_s: float) -> list[Result]:
    from tests.modbus_server import ModbusTestServer
    from tests.snmp_agent import SnmpAgent, free_udp_port

    registers = dict.fromkeys(range(64), 0)
    bits = dict.fromkeys(range(16), False)
    bacnet_port = free_udp_port()
    device = subprocess.Popen(  # tests/bacnet_device.py: a bacpypes3 device process
        [sys.executable, "-m", "tests.bacnet_device", "--port", str(bacnet_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert device.stdout is not None
        if device.stdout.readline().strip() != "ready":
            raise RuntimeError("the BACnet device did not start")
        with (
            MockupServer("public-cooling-unit", auth="session") as bmc,
            ModbusTestServer({1: (registers, registers, bits, bits)}) as modbus,
            SnmpAgent() as agent,
            tempfile.TemporaryDirectory() as tmp,
        ):
            text = _all_protocols_config(bootstrap, bmc.url, modbus.port, agent.port, bacnet_port)
            real = _real_nvml()
            code = COLLECTOR_INSTALL + ("" if real else FAKE_NVML)
            argv = [sys.executable, "-c", code + "from dctwin.cli.main import app\napp()"]
            gets0 = sum(n for k, n in bmc.requests.items() if k.startswith("GET"))
            requests0 = len(modbus.requests)
            peak, cpu_pct, seconds = _measure(
                text, Path(tmp), window_s, argv, {"PYTHONPATH": str(REPO)}, ALL_PROTOCOLS_WARMUP_S
            )
            gets = sum(n for k, n in bmc.requests.items() if k.startswith("GET")) - gets0
            modbus_requests = len(modbus.requests) - requests0
    finally:
        device.kill()
        device.wait(5)
    if gets < round(seconds) or modbus_requests < round(seconds) // 5:
        raise RuntimeError(f"too few reads: {gets} Redfish GETs, {modbus_requests} Modbus")
    note = (
        f"{window_s:.0f} s window; NVML {'driver' if real else 'fake (no driver)'}; pysmi hidden; "
        f"{gets} Redfish GETs, {modbus_requests} Modbus requests"
    )
    name = "collector daemon: NVML 8 GPUs + Redfish + Modbus + SNMPv3 + BACnet @ 1 s"
    return [
        Result(name, "peak RSS MB", peak, "< 100", peak < 100, note=note),
        Result(name, "CPU % of one core", cpu_pct, "< 3", cpu_pct < 3, note=note),
    ]


def run(quick: bool = False) -> list[Result]:
    window_s = 8.0 if quick else 30.0
    with DevBroker() as broker:
        ensure_topics(broker.bootstrap, 4)
        return _one_node(broker.bootstrap, window_s) + _all_protocols(broker.bootstrap, window_s)


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.figure}: {r.value:.2f} (target {r.target}) {r.note}")
