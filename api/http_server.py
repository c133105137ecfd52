"""uvicorn, configured so that even requests the HTTP parser rejects get a problem document.

A request uvicorn cannot parse never reaches the app: its HTTP protocol answers
`400 text/plain` ("Invalid HTTP request received.") itself. That happens to a URL over
65,535 bytes (httptools' URL parser limit: a 100 kB query string, 5,000 parameters),
to a request head over h11's buffer limit, and to malformed requests. The protocol
classes here answer those with `application/problem+json` and the status that says what
is wrong: 414 (URI too long), 431 (request head too large) or 400 (malformed), with
`connection: close`, like uvicorn does.

`uvicorn_config(app, host, port)` is what `dctwin serve` and the tests use.
"""

from __future__ import annotations

import asyncio
import sys
from http import HTTPStatus
from typing import Any

import h11
import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE

MAX_URL_BYTES = 65_535  # httptools' parse_url limit; longer URLs are 414


def _problem(status: int, detail: str) -> bytes:
    slug = {414: "uri-too-long", 431: "headers-too-large"}.get(status, "bad-request")
    return orjson.dumps(
        {
            "type": PROBLEM_BASE + slug,
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "instance": None,
        }
    )


def _classify(exc: BaseException | None, url_bytes: int) -> tuple[int, str]:
    """(status, detail) for a request the HTTP parser rejected."""
    text = str(exc or "")
    if url_bytes > MAX_URL_BYTES or "url is too long" in text.lower():
        return 414, (
            f"the request URL is longer than {MAX_URL_BYTES} bytes (path and query string); "
            "send fewer or shorter query parameters"
        )
    if getattr(exc, "error_status_hint", 400) == 431:  # h11: request head over its buffer
        return 431, "the request line and headers are too large; send fewer or smaller headers"
    return 400, "malformed HTTP request: the server could not parse it"


def _current_exception() -> BaseException | None:
    # uvicorn calls send_400_response inside its `except <parser error>:` block
    return sys.exc_info()[1]


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: h11 only
        return None

    class ProblemHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            status, detail = _classify(_current_exception(), len(self.url))
            body = _problem(status, detail)
            head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
            for name, value in self.server_state.default_headers:
                head.append(name + b": " + value + b"\r\n")
            head += [
                f"content-type: {PROBLEM_MEDIA_TYPE}\r\n".encode(),
                f"content-length: {len(body)}\r\n".encode(),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return ProblemHttpToolsProtocol


class ProblemH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        status, detail = _classify(_current_exception(), 0)
        body = _problem(status, detail)
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(
                status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode()
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


def http_protocol() -> type[asyncio.Protocol]:
    """What uvicorn's `http="auto"` would pick (httptools if installed, else h11), with
    problem-document answers for unparseable requests."""
    return _httptools_protocol() or ProblemH11Protocol


def uvicorn_config(app: Any, host: str, port: int, **kw: Any) -> uvicorn.Config:
    kw.setdefault("http", http_protocol())
    kw.setdefault("log_level", "warning")
    kw.setdefault("lifespan", "off")
    return uvicorn.Config(app, host=host, port=port, **kw)
