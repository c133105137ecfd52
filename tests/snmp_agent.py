"""A real SNMP agent for tests: snmpsim's command responder as a subprocess on loopback.

It serves the `.snmprec` recordings in tests/data/snmp/; each file's name is its v2c
community (`ups.snmprec` -> community "ups") and its v3 context name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data" / "snmp"
V3_USER = "opsuser"
V3_AUTH_KEY = "auth-key-0123"
V3_PRIV_KEY = "priv-key-0123"


# BER of an SNMPv2c GetRequest for sysDescr.0 with community "ups", request id 1
_PROBE = bytes.fromhex(
    "30230201010403" + b"ups".hex() + "a019020101020100020100300e300c06082b060102010101000500"
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _responder() -> str:
    exe = Path(sys.executable).parent / "snmpsim-command-responder"
    found = str(exe) if exe.exists() else shutil.which("snmpsim-command-responder")
    if not found:
        raise RuntimeError("snmpsim-command-responder not found: pip install snmpsim (dev extra)")
    return found


class SnmpAgent:
    """snmpsim on 127.0.0.1:<port>, v2c and one v3 user (SHA-256 auth, AES-128 privacy)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_udp_port()
        self.cache_dir = tempfile.mkdtemp(prefix="snmpsim-cache-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.cache_dir) / "agent.log"

    def start(self, timeout_s: float = 20.0) -> SnmpAgent:
        cmd = [
            _responder(),
            f"--data-dir={DATA_DIR}",
            f"--cache-dir={self.cache_dir}",
            f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
            f"--v3-user={V3_USER}",
            f"--v3-auth-key={V3_AUTH_KEY}",
            "--v3-auth-proto=SHA256",
            f"--v3-priv-key={V3_PRIV_KEY}",
            "--v3-priv-proto=AES",
        ]
        # snmpsim refuses to run as root unless told to (it would drop privileges to a
        # user that cannot read this Python); tests and CI run as root
        env = {**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"snmpsim did not start: {self.log_path.read_text()[-2000:]}")

    def _answers(self) -> bool:
        """True once the agent answers a v2c GET of sysDescr.0 (community "ups")."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(_PROBE, ("127.0.0.1", self.port))
                return len(s.recv(4096)) > 0
            except OSError:  # timeout, or ICMP port unreachable before it binds
                return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> SnmpAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
