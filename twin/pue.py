"""Power usage effectiveness (The Green Grid; ISO/IEC 30134-2).

PUE = total facility energy / IT equipment energy. The category follows from where IT
energy is metered: UPS output -> PUE1, PDU output -> PUE2, IT equipment input -> PUE3.
A figure whose inputs are missing is returned as unknown with the reason, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest.site import MeterRole, Site

# Most specific IT metering first: PUE3 is closest to the IT load.
IT_METER_PREFERENCE = (
    (MeterRole.it_input, "PUE3"),
    (MeterRole.pdu_output, "PUE2"),
    (MeterRole.ups_output, "PUE1"),
)


@dataclass(frozen=True, slots=True)
class MeterReading:
    device_id: str
    metric: str
    value: float
    read_time: datetime

    def age_s(self, now: datetime) -> float:
        return (now - self.read_time).total_seconds()


@dataclass
class PueFigure:
    value: float | None
    category: str | None
    time: datetime | None
    inputs: list[MeterReading] = field(default_factory=list)
    stale_inputs: list[str] = field(default_factory=list)
    reason: str | None = None  # why value is None

    @property
    def dcie(self) -> float | None:
        return None if not self.value else 1.0 / self.value


def instantaneous_pue(site: Site, latest: dict[tuple[str, str], MeterReading],
                      now: datetime | None = None, stale_after_s: float = 30.0) -> PueFigure:
    """PUE from the latest facility and IT meter power readings."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    facility_meter = site.meter(MeterRole.facility_input)
    if facility_meter is None:
        return PueFigure(None, None, None,
                         reason="site declares no facility_input meter (total facility energy)")
    it = next(((site.meter(role), cat) for role, cat in IT_METER_PREFERENCE if site.meter(role)),
              None)
    if it is None:
        return PueFigure(None, None, None, reason="site declares no IT energy meter "
                         "(it_input, pdu_output or ups_output)")
    it_meter, category = it
    facility = latest.get((site.meter_id(facility_meter), "power_kw"))
    it_power = latest.get((site.meter_id(it_meter), "power_kw"))
    missing = [mid for mid, r in ((site.meter_id(facility_meter), facility),
                                  (site.meter_id(it_meter), it_power)) if r is None]
    if missing:
        return PueFigure(None, category, None,
                         reason=f"no power_kw reading yet from meter(s) {missing}")
    assert facility is not None and it_power is not None
    inputs = [facility, it_power]
    stale = [r.device_id for r in inputs if r.age_s(now) > stale_after_s]
    if it_power.value <= 0:
        return PueFigure(None, category, None, inputs, stale,
                         reason=f"IT power is {it_power.value} kW; PUE undefined")
    return PueFigure(facility.value / it_power.value, category,
                     min(facility.read_time, it_power.read_time), inputs, stale)
