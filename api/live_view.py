"""The API's live view of the twin: one snapshot per tick, changes published to the bus.

Every `interval_s` a background thread reads the twin once (PUE, site power split, one
summary per rack from the twin's rollups, new device events) into an immutable
`Snapshot`. Endpoints that NOC tools poll all day (`/v1/pue`, `/v1/racks`, `/metrics`)
answer from that snapshot instead of querying DuckDB per request; what changed is
published to the event bus for `GET /v1/stream`.

Rack scores from later features (anomaly score, failure risk) plug in as `RackScorer`s:
a name and a callable returning `{rack: value}`, read once per tick. Feeds (top
anomalies, recommendations) plug in as `Feed`s: an event type and a callable returning
JSON-able data, read once per tick and published when it differs from the last.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from api.shape import now_naive_utc
from domain.site import MeterRole
from twin.events import EventBus
from twin.health import ComponentHealth
from twin.periodic import Periodic
from twin.pue import MeterReading, PueFigure
from twin.state import Twin

log = logging.getLogger(__name__)

RackScorer = tuple[str, Callable[[], dict[str, float]]]  # ("anomaly_score", fn)
Feed = tuple[str, Callable[[], Any]]  # ("anomalies", fn): published when its value changes


@dataclass(frozen=True, slots=True)
class RackSummary:
    rack: str
    hall: str
    row: str
    path: str  # device id prefix site/hall/row/rack
    gpu_max_temp_c: float | None
    gpu_mean_temp_c: float | None
    gpus_reporting: int
    gpus_total: int
    power_kw: float | None  # PSU input power, the rack's electrical draw
    scores: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SitePower:
    facility_kw: float | None
    it_kw: float | None
    cooling_kw: float | None


class LatestTable:
    """The whole `latest` table as columns sorted by (device, metric), read once per tick:
    a device lookup is a dict hit and a slice instead of a DuckDB query per request."""

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        self.device_id = cols["device_id"]
        self.metric = cols["metric"]
        self.value = cols["value"]
        self.read_time = cols["read_time"]  # datetime64[us], naive UTC
        # rows arrive sorted by device: run starts by comparing neighbours (no dict build,
        # no re-sort while holding the GIL), binary search per lookup
        dev = self.device_id
        starts = (
            np.flatnonzero(np.r_[True, dev[1:] != dev[:-1]])
            if len(dev)
            else np.array([], dtype=np.int64)
        )
        self._ids = dev[starts]
        self._bounds = np.r_[starts, len(dev)]

    def __len__(self) -> int:
        return len(self.device_id)

    def device(self, device_id: str) -> list[MeterReading]:
        i = int(np.searchsorted(self._ids, device_id))
        if i >= len(self._ids) or self._ids[i] != device_id:
            return []
        lo, hi = int(self._bounds[i]), int(self._bounds[i + 1])
        times = self.read_time[lo:hi].astype("datetime64[us]").tolist()
        return [
            MeterReading(device_id, str(m), float(v), t)
            for m, v, t in zip(self.metric[lo:hi], self.value[lo:hi], times, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    time: datetime  # naive UTC, when the tick ran
    pue: PueFigure
    power: SitePower
    racks: list[RackSummary]
    tick_s: float  # how long the tick took
    latest: LatestTable | None = None


class LiveView:
    def __init__(
        self,
        twin: Twin,
        bus: EventBus,
        interval_s: float = 1.0,
        scorers: list[RackScorer] | None = None,
        feeds: list[Feed] | None = None,
    ) -> None:
        self.twin = twin
        self.bus = bus
        self.interval_s = interval_s
        self.scorers: list[RackScorer] = list(scorers or [])
        self.feeds: list[Feed] = list(feeds or [])
        self._published_feeds: dict[str, Any] = {}
        self.snapshot: Snapshot | None = None
        self.ticks = 0
        self.tick_seconds_total = 0.0
        self._ticker = Periodic(self.tick, interval_s, "live")
        self._last_event_rowid = -1
        self._published_pue: tuple | None = None
        self._published_racks: tuple | None = None
        site = twin.site
        self._racks = site.racks()
        self._meter_ids = {m.role: site.meter_id(m) for m in site.meters}

    # -- computing -------------------------------------------------------------------

    def compute(self) -> Snapshot:
        t0 = time.perf_counter()
        now = now_naive_utc()
        # the twin's own tick (rollups, heat balance, PUE per scope) runs at most once per
        # its tick interval; this loop is what drives it in a server
        tick = self.twin.current()
        pue = tick.pue["site"]
        cur = self.twin.store.cursor()
        meters = {
            d: v
            for d, v in cur.execute(
                "SELECT device_id, value FROM latest WHERE metric = 'power_kw' AND "
                "list_contains(?, device_id)",
                [list(self._meter_ids.values())],
            ).fetchall()
        }
        it_role = next(
            (
                r
                for r in (MeterRole.it_input, MeterRole.pdu_output, MeterRole.ups_output)
                if r in self._meter_ids
            ),
            None,
        )
        power = SitePower(
            meters.get(self._meter_ids.get(MeterRole.facility_input, "")),
            meters.get(self._meter_ids[it_role]) if it_role else None,
            meters.get(self._meter_ids.get(MeterRole.cooling_plant, "")),
        )
        # per-rack GPU temperatures and PSU power are the twin's rollups (its staleness and
        # completeness rules), so the heat map and `/v1/rollups` agree
        roll = tick.rollups
        rack_row = self.twin.scope_index.index  # scope id -> row of the rollup arrays
        scores = {}
        for name, fn in self.scorers:
            try:
                scores[name] = fn()
            except Exception:  # a broken plug-in must not stop the live view
                log.exception("rack scorer %s failed", name)
                scores[name] = {}
        racks = []
        for r in self._racks:
            i = rack_row.get(r.prefix)
            racks.append(
                RackSummary(
                    r.rack,
                    r.hall,
                    r.row,
                    r.prefix,
                    _fin(roll["gpu_temp_max_c"], i),
                    _fin(roll["gpu_temp_mean_c"], i),
                    int(_fin(roll["gpus_reporting"], i) or 0),
                    r.template.nodes * r.template.gpus_per_node,
                    _fin(roll["power_kw"], i),
                    {name: s.get(r.rack) for name, s in scores.items()},
                )
            )
        latest = LatestTable(
            cur.execute(
                "SELECT device_id, metric, value, read_time FROM latest ORDER BY device_id, metric"
            ).fetchnumpy()
        )
        return Snapshot(now, pue, power, racks, time.perf_counter() - t0, latest)

    def tick(self) -> Snapshot:
        snap = self.compute()
        self.snapshot = snap
        self.ticks += 1
        self.tick_seconds_total += snap.tick_s
        self._publish(snap)
        return snap

    def fresh_snapshot(self) -> Snapshot | None:
        """The current snapshot unless the loop has stalled (older than 3 ticks)."""
        snap = self.snapshot
        if snap is None or (now_naive_utc() - snap.time).total_seconds() > 3 * self.interval_s:
            return None
        return snap

    # -- publishing changes ------------------------------------------------------------

    def _publish(self, snap: Snapshot) -> None:
        p = snap.pue
        key = (
            None if p.value is None else round(p.value, 4),
            p.reason,
            tuple(p.stale_inputs),
            _r(snap.power.it_kw),
            _r(snap.power.facility_kw),
        )
        if key != self._published_pue:
            self._published_pue = key
            self.bus.publish("pue", pue_event(snap))
        racks = {
            r.rack: [_r(r.gpu_max_temp_c), _r(r.power_kw), *(_r(v, 3) for v in r.scores.values())]
            for r in snap.racks
        }
        rkey = tuple((k, tuple(v)) for k, v in racks.items())
        if rkey != self._published_racks:
            self._published_racks = rkey
            self.bus.publish(
                "racks",
                {
                    "time": _iso(snap.time),
                    "fields": ["gpu_max_temp_c", "power_kw", *(n for n, _ in self.scorers)],
                    "racks": racks,
                },
            )
        self._publish_device_events()
        self._publish_feeds()

    def _publish_feeds(self) -> None:
        for type_, fn in self.feeds:
            try:
                data = fn()
            except Exception:  # a broken feed must not stop the live view
                log.exception("live feed %s failed", type_)
                continue
            if data != self._published_feeds.get(type_):
                self._published_feeds[type_] = data
                self.bus.publish(type_, data)

    def _publish_device_events(self) -> None:
        """New rows of the events table (XID, leak, pump or PSU failure) as they land."""
        rows = (
            self.twin.store.cursor()
            .execute(
                "SELECT rowid, read_time, device_id, kind, severity, message FROM events "
                # identity reports come by the thousand at start; a swap is `part_swapped`
                "WHERE rowid > ? AND kind <> 'inventory' ORDER BY rowid LIMIT 500",
                [self._last_event_rowid],
            )
            .fetchall()
        )
        for rowid, t, device, kind, severity, message in rows:
            self._last_event_rowid = rowid
            self.bus.publish(
                "device_event",
                {
                    "time": _iso(t),
                    "device_id": device,
                    "kind": kind,
                    "severity": severity,
                    "message": message,
                },
            )

    # -- thread ------------------------------------------------------------------------

    def start(self) -> LiveView:
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._ticker.stop(10)

    def health(self, stale_after_s: float) -> ComponentHealth:
        """The live loop's health (not_running unless started)."""
        return self._ticker.health(stale_after_s)


def pue_event(snap: Snapshot) -> dict:
    p = snap.pue
    return {
        "time": _iso(snap.time),
        "value": p.value,
        "dcie": p.dcie,
        "category": p.category,
        "reason": p.reason,
        "stale_inputs": p.stale_inputs,
        "facility_kw": snap.power.facility_kw,
        "it_kw": snap.power.it_kw,
        "cooling_kw": snap.power.cooling_kw,
    }


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _fin(col: np.ndarray, i: int | None) -> float | None:
    """Row `i` of a rollup column; None for an unknown (NaN) value or a missing row."""
    if i is None:
        return None
    v = float(col[i])
    return v if math.isfinite(v) else None


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)
