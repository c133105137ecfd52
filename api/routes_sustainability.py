"""Carbon and water (issue 27, item 4).

GET /v1/sustainability?period=day|month[&start=&end=]

Per day or month: IT and facility energy, emissions, CUE (ISO/IEC 30134-8, kgCO2e/kWh)
from the grid carbon-intensity series (DCTWIN_CARBON_INTENSITY), make-up water and WUE
(ISO/IEC 30134-9, L/kWh) from the plant's `makeup_water_lpm` meter; and, with a flexible
load configured (DCTWIN_FLEX_LOAD_*), per day the start hour that cuts its emissions and
the kgCO2e saved. Default window: the last 7 days (day) or 90 days (month), to now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import SustainabilityDep
from api.examples import SUSTAINABILITY, ok_example
from api.problems import ProblemError
from twin.sustainability import IntensityError

router = APIRouter(prefix="/v1", tags=["sustainability"])
MAX_SPAN = timedelta(days=400)


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


@router.get(
    "/sustainability",
    summary="Daily or monthly CUE and WUE, flexible-load advice",
    responses=ok_example(SUSTAINABILITY),
)
def sustainability(
    svc: SustainabilityDep,
    period: Annotated[Literal["day", "month"], Query()] = "day",
    start: Annotated[datetime | None, Query(description="RFC 3339; default per period")] = None,
    end: Annotated[datetime | None, Query(description="RFC 3339; default now")] = None,
) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        end_t = _naive(end) if end else now
        start_t = _naive(start) if start else end_t - timedelta(days=7 if period == "day" else 90)
    except OverflowError as exc:  # year 1 minus a week
        raise ProblemError(422, f"start/end out of range: {exc}", "validation") from exc
    if end_t <= start_t:
        raise ProblemError(422, "end must be after start", "validation")
    if end_t - start_t > MAX_SPAN:
        raise ProblemError(422, f"the window may span at most {MAX_SPAN.days} days", "validation")
    try:
        return svc.figures(period, start_t, end_t)
    except IntensityError as exc:
        raise ProblemError(
            503, f"the carbon-intensity series cannot be read: {exc}", "carbon-intensity"
        ) from exc
