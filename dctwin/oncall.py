"""The demo's on-call receiver (issue 26): what a pager bridge would get, verified and kept.

A loopback HTTP server taking the Alertmanager v4 webhook JSON that the alert engine's
webhook receiver sends (twin/alerts/webhook.py). Each request's HMAC-SHA256 signature
and timestamp are checked with `verify`, exactly as a real receiver would, and the page is
kept (newest first, bounded) with the verdict; the API lists them at `/v1/oncall/pages`
and the dashboard's on-call page shows them. The demo writes the receivers file that
points the engine here, with a per-run secret.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

from api.scenarios import ReceivedPage
from twin.alerts.webhook import verify

MAX_PAGES = 500
MAX_BODY_BYTES = 4 * 1024 * 1024


class PageLog:
    """Received pages, newest first; thread-safe (HTTP threads add, the API reads)."""

    def __init__(self, secret: bytes, max_pages: int = MAX_PAGES) -> None:
        self.secret = secret
        self._pages: deque[ReceivedPage] = deque(maxlen=max_pages)
        self._lock = threading.Lock()

    def receive(self, headers: dict[str, str], body: bytes) -> ReceivedPage:
        """Raises ValueError when the body is not an Alertmanager webhook document."""
        doc = orjson.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list):
            raise ValueError("not an Alertmanager webhook payload: no alerts list")
        page = ReceivedPage(
            received_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            signature_valid=verify(self.secret, headers, body),
            status=str(doc.get("status", "")),
            receiver=str(doc.get("receiver", "")),
            alerts=[a for a in doc["alerts"] if isinstance(a, dict)],
        )
        with self._lock:
            self._pages.appendleft(page)
        return page

    def pages(self) -> list[ReceivedPage]:
        with self._lock:
            return list(self._pages)


class OnCallReceiver:
    """The HTTP side: POST / with a webhook payload; 204 kept, 400 unreadable, 401 when the
    signature does not verify (kept all the same, so the demo shows the refusal)."""

    def __init__(self, log: PageLog, host: str = "127.0.0.1", port: int = 0) -> None:
        self.log = log
        page_log = log

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                body = self.rfile.read(length)
                try:
                    page = page_log.receive(dict(self.headers.items()), body)
                except ValueError as exc:  # orjson's JSONDecodeError included
                    self.send_error(400, str(exc)[:200])
                    return
                self.send_response(204 if page.signature_valid else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass  # the page log is the record

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self._thread: threading.Thread | None = None

    def start(self) -> OnCallReceiver:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="oncall"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


def receivers_file(path: Path, url: str, secret: bytes) -> Path:
    """The receivers YAML pointing the alert engine's webhook at the demo's receiver."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by dctwin demo: the local on-call receiver (dctwin/oncall.py)\n"
        "receivers:\n"
        "  - name: demo-oncall\n"
        "    type: webhook\n"
        f"    url: {url}\n"
        f'    secret: "{secret.decode()}"\n'
        "    group_by: [alertname]\n"
        "    retry_max: 5s\n"
        "    give_up_after: 10m\n"
    )
    path.chmod(0o600)
    return path


def new_secret() -> bytes:
    return secrets.token_hex(24).encode()
