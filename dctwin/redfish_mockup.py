"""A real HTTP(S) server on loopback that serves a DMTF Redfish mockup directory unchanged.

`GET /redfish/v1/<path>` returns the bytes of `<mockup>/<path>/index.json` as they are on
disk (query strings such as `$expand` are ignored, as a service without that feature
would). Optional auth mirrors a BMC: HTTP basic, or Redfish sessions
(`POST /redfish/v1/SessionService/Sessions` -> `X-Auth-Token` + `Location`, `DELETE`
to log out). The service root stays readable without credentials, as the spec requires.
With `sse=True` the EventService document gains `ServerSentEventUri` (the one change
made to a mockup) and that URI streams `text/event-stream` (chunked, as BMCs do): the
test pushes Redfish Event payloads with `push_event`, cuts every open stream with
`drop_streams` (the socket is shut mid-body, as a rebooting BMC does) and can refuse new
streams (`sse_status`). A reconnect carrying `Last-Event-ID` gets the events it missed.
Used by the Redfish tests and by bench/bench_collector_footprint.py; stdlib only
(besides the settings).
Mockups are looked up in `$DCTWIN_REDFISH_MOCKUPS`, else `../shared/data/redfish` beside
the repository clone.
"""

from __future__ import annotations

import base64
import json
import queue
import secrets
import socket
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from dctwin.settings import Settings

MOCKUPS = Settings().redfish_mockups
SESSIONS = "/redfish/v1/SessionService/Sessions"
SSE_URI = "/redfish/v1/EventService/SSE"
_DROP, _END = object(), object()  # stream-queue sentinels


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up (as the SSE tests make it) is not worth a traceback


class MockupServer:
    def __init__(
        self,
        mockup: str | Path,
        auth: Literal["none", "basic", "session"] = "none",
        username: str = "admin",
        password: str = "secret",
        tls: tuple[Path, Path] | None = None,
        sse: bool = False,
    ) -> None:
        self.root = Path(mockup) if Path(mockup).is_absolute() else MOCKUPS / mockup
        if not (self.root / "index.json").is_file():
            raise FileNotFoundError(f"no Redfish mockup at {self.root}")
        self.auth, self.username, self.password = auth, username, password
        self.tokens: dict[str, str] = {}  # token -> session uri
        self.requests: Counter[str] = Counter()  # "METHOD path" -> count
        self.sse = sse
        self.sse_status = 200  # set to e.g. 503 to refuse new streams
        self.sse_connections = 0  # streams opened so far
        self.sse_last_event_ids: list[str | None] = []  # Last-Event-ID of each stream
        self._sse_lock = threading.Lock()
        self._sse_queues: list[queue.Queue[object]] = []
        self._sse_history: list[tuple[int, bytes]] = []
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> MockupServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._to_streams(_END)
        self.httpd.shutdown()
        self.httpd.server_close()

    def file_for(self, path: str) -> Path | None:
        rel = path.split("?", 1)[0].rstrip("/").removeprefix("/redfish/v1").strip("/")
        if ".." in rel.split("/"):
            return None
        f = self.root / rel / "index.json"
        return f if f.is_file() else None

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        if self.auth == "basic":
            want = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return h.headers.get("Authorization") == f"Basic {want}"
        if self.auth == "session":
            return h.headers.get("X-Auth-Token") in self.tokens
        return True

    # -- server-sent events ----------------------------------------------------------------
    def push_event(self, records: list[dict], **extra: object) -> int:
        """Send one Redfish Event (`Events` = records) to every open stream; its SSE id."""
        with self._sse_lock:
            event_id = len(self._sse_history) + 1
            payload = {
                "@odata.type": "#Event.v1_7_0.Event",
                "Id": str(event_id),
                "Name": "Event",
                "Events": records,
                **extra,
            }
            message = f"id: {event_id}\ndata: {json.dumps(payload)}\n\n".encode()
            self._sse_history.append((event_id, message))
            for q in self._sse_queues:
                q.put(message)
        return event_id

    def push_raw(self, message: bytes) -> None:
        """Bytes as they are (a malformed payload, a keep-alive comment)."""
        self._to_streams(message)

    def drop_streams(self) -> None:
        """Cut every open stream mid-body."""
        self._to_streams(_DROP)

    def _to_streams(self, item: object) -> None:
        with self._sse_lock:
            for q in self._sse_queues:
                q.put(item)

    def _serve_stream(self, h: BaseHTTPRequestHandler) -> None:
        q: queue.Queue[object] = queue.Queue()
        last = h.headers.get("Last-Event-ID")
        with self._sse_lock:
            self.sse_connections += 1
            self.sse_last_event_ids.append(last)
            missed = [m for i, m in self._sse_history if last is not None and i > int(last)]
            self._sse_queues.append(q)
        try:
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Cache-Control", "no-cache")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()

            def chunk(data: bytes) -> None:
                h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

            chunk(b": stream open\n\n")
            for m in missed:
                chunk(m)
            while True:
                item = q.get()
                if item is _DROP:
                    h.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk
                    break
                if item is _END:
                    h.wfile.write(b"0\r\n\r\n")
                    break
                assert isinstance(item, bytes)
                chunk(item)
        except OSError:
            pass  # the client went away
        finally:
            h.close_connection = True
            with self._sse_lock:
                self._sse_queues.remove(q)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as BMCs do; every reply has a length
            disable_nagle_algorithm = True  # headers and body are separate small writes

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                server.requests[f"GET {self.path}"] += 1
                is_root = self.path.split("?")[0].rstrip("/") in ("/redfish/v1", "/redfish")
                if not is_root and not server._authorized(self):
                    self._send(401, b'{"error": "unauthorized"}')
                    return
                path = self.path.split("?", 1)[0].rstrip("/")
                if server.sse and path == SSE_URI:
                    if server.sse_status != 200:
                        self._send(server.sse_status, b'{"error": "unavailable"}')
                    else:
                        server._serve_stream(self)
                    return
                f = server.file_for(self.path)
                if f is None:
                    self._send(404, b'{"error": "not found"}')
                    return
                body = f.read_bytes()
                if server.sse and path == "/redfish/v1/EventService":
                    doc = json.loads(body)
                    doc["ServerSentEventUri"] = SSE_URI
                    body = json.dumps(doc).encode()
                self._send(200, body)

            def do_POST(self) -> None:
                server.requests[f"POST {self.path}"] += 1
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != SESSIONS or server.auth != "session":
                    self._send(405)
                    return
                if (body.get("UserName"), body.get("Password")) != (
                    server.username,
                    server.password,
                ):
                    self._send(401, b'{"error": "bad credentials"}')
                    return
                token = secrets.token_hex(16)
                uri = f"{SESSIONS}/{secrets.token_hex(4)}"
                server.tokens[token] = uri
                self._send(
                    201,
                    json.dumps({"@odata.id": uri, "UserName": body["UserName"]}).encode(),
                    {"X-Auth-Token": token, "Location": uri},
                )

            def do_DELETE(self) -> None:
                server.requests[f"DELETE {self.path}"] += 1
                token = self.headers.get("X-Auth-Token")
                if token is not None and server.tokens.get(token) == self.path:
                    del server.tokens[token]
                    self._send(204)
                else:
                    self._send(401)

        return Handler

    def expire_sessions(self) -> None:
        """What a BMC reboot does: every token stops working."""
        self.tokens.clear()


def mockup_json(mockup: str, path: str) -> dict:
    """The mockup's own JSON for `path` (below /redfish/v1), read from disk for assertions."""
    return json.loads((MOCKUPS / mockup / path / "index.json").read_text())
