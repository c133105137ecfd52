"""Twin state read from the store: latest readings per device and metric."""

from __future__ import annotations

from datetime import datetime

from ingest.site import Site
from ingest.store import Store
from twin.pue import MeterReading, PueFigure, instantaneous_pue


class Twin:
    def __init__(self, site: Site, store: Store, stale_after_s: float = 30.0) -> None:
        self.site = site
        self.store = store
        self.stale_after_s = stale_after_s
        self.known_devices = {d.id: d for d in site.devices()}

    def latest_for(self, device_ids: list[str]) -> dict[tuple[str, str], MeterReading]:
        rows = self.store.cursor().execute(
            "SELECT device_id, metric, value, read_time FROM latest "
            "WHERE list_contains(?, device_id)", [device_ids]).fetchall()
        return {(d, m): MeterReading(d, m, v, t) for d, m, v, t in rows}

    def pue(self, now: datetime | None = None) -> PueFigure:
        meters = [self.site.meter_id(m) for m in self.site.meters]
        return instantaneous_pue(self.site, self.latest_for(meters), now, self.stale_after_s)

    def device(self, device_id: str) -> list[MeterReading]:
        rows = self.store.cursor().execute(
            "SELECT device_id, metric, value, read_time FROM latest WHERE device_id = ? "
            "ORDER BY metric", [device_id]).fetchall()
        return [MeterReading(d, m, v, t) for d, m, v, t in rows]
