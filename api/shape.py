"""Shared API shape: RFC 3339 UTC times and opaque-cursor pagination.

Times: every time the API returns is RFC 3339 in UTC with a `Z` suffix
(`2025-06-01T12:00:00Z`). Every time it accepts must carry an offset (`Z` or `+02:00`);
it is converted to UTC. A naive time (`2025-06-01T12:00:00`) is rejected with 422, since
guessing its zone would silently shift the answer by hours.

Pagination: list endpoints take `limit` and `cursor` and return `{items, next_cursor}`.
The cursor is opaque (base64url of the last item's sort key, bound to the list and its
filters): pass it back unchanged to get the next page; `next_cursor` null means the end.
A cursor from another list or with other filters is rejected with 400, not misread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from api.problems import ProblemError

T = TypeVar("T")


# Times the API accepts. Python's datetime ends at years 1 and 9999, so arithmetic near
# either end (UTC conversion, `end - 24h`, a bucket past `end`) raised OverflowError and
# answered 500; nothing the platform stores is outside this range (ingest keeps read times
# within years of now).
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
TIME_RANGE_TEXT = "1970-01-01T00:00:00Z .. 2200-01-01T00:00:00Z"


def _to_utc(t: datetime) -> datetime:
    out_of_range = ValueError(f"time outside the supported range {TIME_RANGE_TEXT}")
    try:
        u = t.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+02:00 is in year 0 in UTC
        raise out_of_range from None
    if not MIN_TIME <= u < MAX_TIME:
        raise out_of_range
    return u


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""Input time: RFC 3339 with an offset, normalized to UTC, within [MIN_TIME, MAX_TIME);
naive or out-of-range times fail validation (422 naming the parameter)."""


def utc(t: datetime | None) -> datetime | None:
    """Stored naive-UTC (DuckDB) -> aware UTC for output."""
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def now_naive_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


Limit = Annotated[int, Query(ge=1, le=1000, description="page size (1..1000)")]
Cursor = Annotated[
    str | None,
    Query(max_length=2000, description="opaque cursor from the previous page's `next_cursor`"),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` for the next page; null on the last page"
    )


def _scope_tag(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:8]


def encode_cursor(key: Any, scope: str) -> str:
    raw = orjson.dumps({"v": 1, "s": _scope_tag(scope), "k": key})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, scope: str) -> Any:
    """The sort key inside a cursor; 400 if it is not one of ours for this list."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = orjson.loads(raw)
        ok = isinstance(body, dict) and body.get("v") == 1 and "k" in body
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        ok = False
    if not ok:
        raise ProblemError(
            400,
            "cursor is not valid: pass `next_cursor` from the previous page unchanged",
            "invalid-cursor",
        )
    if body.get("s") != _scope_tag(scope):
        raise ProblemError(
            400,
            "cursor belongs to another list or other filters: restart without `cursor`",
            "invalid-cursor",
        )
    return body["k"]


def paginate(
    items: Sequence[T], key: Callable[[T], Any], limit: int, cursor: str | None, scope: str
) -> Page[T]:
    """One page of `items`, which must be sorted by `key` (unique, JSON-able)."""
    start = 0
    if cursor:
        after = decode_cursor(cursor, scope)
        keys = [key(i) for i in items]
        try:
            start = bisect_right(keys, _comparable(after))
        except TypeError as exc:
            raise ProblemError(400, "cursor does not fit this list", "invalid-cursor") from exc
    page = list(items[start : start + limit])
    more = start + limit < len(items)
    return Page[Any](
        items=page, next_cursor=encode_cursor(key(page[-1]), scope) if more and page else None
    )


def _comparable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k
