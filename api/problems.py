"""RFC 9457 problem details for every error the API returns.

Every 4xx/5xx body is `application/problem+json` with `type`, `title`, `status`, `detail`
and `instance` (the request path). Validation failures add `errors`: one entry per
offending parameter, saying where it was (`query`, `path`, `header`, `body`), its name
and what was wrong. Unknown paths (404) and wrong methods (405) from the router itself
are problems too, so a client never has to parse two error shapes.

`type` is a relative URI reference under `/problems/` (documented in docs/api.md), or
`about:blank` when the HTTP status says all there is to say.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"


class FieldError(BaseModel):
    location: str = Field(description="where the parameter is: query, path, header or body")
    parameter: str = Field(description="parameter name, dotted for nested body fields")
    message: str
    type: str = Field(description="machine-readable error type (pydantic's)")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/not-found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "unknown device id 'sv1/h1/row1/rk999': not in the site model "
                    "and never reported",
                    "instance": "/v1/devices/sv1/h1/row1/rk999",
                }
            ]
        }
    )

    type: str = Field("about:blank", description="URI reference naming the problem type")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(None, description="the request path that failed")
    errors: list[FieldError] | None = Field(
        None, description="per-parameter validation errors (status 422 only)"
    )


class ProblemError(Exception):
    """Raise from a handler for a problem with a specific type and extra members."""

    def __init__(
        self,
        status: int,
        detail: str,
        type_slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = PROBLEM_BASE + type_slug if type_slug else "about:blank"
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers


_SLUG_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    422: "validation",
    500: "internal",
}


def problem_response(
    status: int,
    detail: str | None,
    instance: str | None,
    type_: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_
        or (PROBLEM_BASE + _SLUG_BY_STATUS[status] if status in _SLUG_BY_STATUS else "about:blank"),
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc else "request"
        name = ".".join(loc[1:]) or where
        out.append(
            {
                "location": where,
                "parameter": name,
                "message": err.get("msg", ""),
                "type": err.get("type", "invalid"),
            }
        )
    return out


def install(app: FastAPI) -> None:
    """Register handlers so that every error leaves as a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, request.url.path, exc.type, exc.title, exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(
            exc.status_code, detail, request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        detail = "; ".join(f"{e['location']}.{e['parameter']}: {e['message']}" for e in errors)
        return problem_response(
            422,
            f"{len(errors)} invalid parameter(s): {detail}",
            request.url.path,
            title="Request validation failed",
            errors=errors,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.exception(
            "unhandled error on %s %s (ref %s)", request.method, request.url.path, ref, exc_info=exc
        )
        return problem_response(
            500, f"unexpected server error; logged with reference {ref}", request.url.path
        )


def problem_content(
    example: dict[str, Any] | None = None, schema: str = "Problem"
) -> dict[str, Any]:
    """An OpenAPI `content` map for a problem response."""
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    if example is not None:
        media["example"] = example
    return {PROBLEM_MEDIA_TYPE: media}


def problem_example(status: int, detail: str, instance: str = "/v1/...") -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE + _SLUG_BY_STATUS.get(status, "error"),
        "title": _phrase(status),
        "status": status,
        "detail": detail,
        "instance": instance,
    }


def problem_responses(*codes: int, **details: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each code documented as a problem with an example.

    `details` maps `e404="..."` style keys to the example detail text."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        detail = details.get(f"e{code}", _phrase(code))
        out[code] = {
            "description": _phrase(code),
            "content": problem_content(problem_example(code, detail)),
        }
    return out
