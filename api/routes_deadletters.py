"""Dead letters for operators: what ingest refused, why, and examples.

Read from the store's `dead_letters` table, which ingest writes in the same transaction as
the offsets past each message (ingest/deadletters.py, docs/ingest.md "Poison messages").
The originals are on the dead-letter topic (or, where it refused them, in the quarantine
file); this endpoint carries their size, sha256 and a short excerpt.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import TwinDep
from api.shape import now_naive_utc, utc
from ingest.deadletters import dead_letter_summary

router = APIRouter(tags=["ingest"])


class ReasonCount(BaseModel):
    reason: str = Field(description="why it was dead-lettered (docs/ingest.md, reasons)")
    count: int = Field(ge=0, description="messages in the window")
    quarantined: int = Field(ge=0, description="of them, kept in the local quarantine file")
    truncated: int = Field(ge=0, description="of them, sent to the topic as a prefix only")
    last: datetime = Field(description="newest, UTC")


class DeadLetterExample(BaseModel):
    time: datetime = Field(description="when ingest dead-lettered it (UTC)")
    reason: str
    detail: str | None = Field(description="what was wrong, for people")
    topic: str
    partition: int
    offset: int
    size_bytes: int = Field(ge=0, description="size of the original value")
    sha256: str = Field(description="sha256 of the original value, hex")
    excerpt: str | None = Field(description="the first bytes of the value, as text")
    outcome: str = Field(description="dlq, dlq_truncated or quarantined")


class DeadLettersOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "since": "2026-12-06T00:00:00Z",
                    "total": 1,
                    "by_reason": [
                        {
                            "reason": "too_large",
                            "count": 1,
                            "quarantined": 0,
                            "truncated": 1,
                            "last": "2026-12-06T09:14:03Z",
                        }
                    ],
                    "recent": [
                        {
                            "time": "2026-12-06T09:14:03Z",
                            "reason": "too_large",
                            "detail": "message of 17825792 bytes exceeds the 16777216-byte limit",
                            "topic": "telemetry.gpu",
                            "partition": 3,
                            "offset": 18211,
                            "size_bytes": 17825792,
                            "sha256": "5f1c…",
                            "excerpt": "ZZZZZZZZ",
                            "outcome": "dlq_truncated",
                        }
                    ],
                }
            ]
        }
    )

    since: datetime = Field(description="start of the window (UTC)")
    total: int = Field(ge=0)
    by_reason: list[ReasonCount]
    recent: list[DeadLetterExample] = Field(description="newest first")


@router.get(
    "/v1/dead-letters",
    response_model=DeadLettersOut,
    summary="Dead letters: counts per reason and recent examples",
)
def dead_letters(
    twin: TwinDep,
    window_s: float = Query(
        86400.0, gt=0, le=30 * 86400.0, description="how far back to count, seconds"
    ),
    limit: int = Query(20, ge=0, le=500, description="recent examples returned"),
) -> DeadLettersOut:
    since = now_naive_utc() - timedelta(seconds=window_s)
    out = dead_letter_summary(twin.store.cursor(), since, limit)
    # stored naive UTC; the API answers RFC 3339 with Z (api/shape.py)
    return DeadLettersOut(
        since=utc(since),
        total=out["total"],
        by_reason=[r | {"last": utc(r["last"])} for r in out["by_reason"]],
        recent=[r | {"time": utc(r["time"])} for r in out["recent"]],
    )
