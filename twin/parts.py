"""Which part is in which slot: GPU and PSU identity, swaps, and per-part risk history.

A device id names a *slot* (sv1/h1/row1/rk101/n01/gpu3); the NVML, Redfish and simulated
sources report the *part* in it (NVML UUID, board serial, part number) as an `inventory`
event at start and whenever it changes. `PartHistory` turns those events into:

- `part_tenures`: one row per (slot, part) stay, with `installed_at` (first report of the
  part in the slot), `last_reported` (newest report) and `removed_at` (another part
  reported in the slot, or this part reported in another slot; NULL while it is there);
- a `part_swapped` event in the `events` table (collector `twin`) when a slot's part
  changes, with the old and new identity and `moved_from` when the new part was last seen
  in another slot: the live stream and alert rules (`events: [part_swapped]`) see it;
- `failure_risk_history`: the failure-risk table of each scoring tick, keyed by part, so
  a new part in a slot starts a fresh history and a part's history follows it.

Two reports are the same part when their UUIDs match, or, when one lacks a UUID, their
serials match; a report without either is ignored (counted in `unidentified`).

Incremental: each round reads only the inventory events stored since the last (a rowid
cursor kept in `part_history_cursor`, in the same transaction as the tenures, so a restart
neither repeats nor loses a swap), at most `MAX_EVENTS` per round. Repeated identical
reports are collapsed per slot in polars; only real changes (first sightings, swaps,
moves) are walked in Python. The slot -> part map is held in memory (one entry per slot).

Risk history is written only when something changed for the slot's part (status, model
version, risk by at least `RISK_STEP`, a new part) or `HEARTBEAT_S` after its last row:
a fleet of 100k GPUs whose risks stay put writes ~100k rows per heartbeat, not per tick.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import polars as pl

from ingest.store import Store
from twin.health import ComponentHealth
from twin.periodic import Periodic

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS part_tenures (
    device_id VARCHAR NOT NULL,
    part_key VARCHAR NOT NULL,
    uuid VARCHAR,
    serial VARCHAR,
    part_number VARCHAR,
    name VARCHAR,
    installed_at TIMESTAMP NOT NULL,
    last_reported TIMESTAMP NOT NULL,
    removed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS part_history_cursor (
    id INTEGER PRIMARY KEY,
    last_rowid BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS failure_risk_history (
    time TIMESTAMP NOT NULL,
    device_id VARCHAR NOT NULL,
    part_key VARCHAR NOT NULL,
    uuid VARCHAR,
    serial VARCHAR,
    risk DOUBLE NOT NULL,
    status VARCHAR NOT NULL,
    model_version VARCHAR
);
"""
MAX_EVENTS = 100_000  # inventory events read per round: a fleet's start-up in one or two
EVERY_S = 5.0
RISK_STEP = 0.05  # a risk change smaller than this is not written...
HEARTBEAT_S = 6 * 3600.0  # ...unless the part's last row is this old
# what a source sends when it does not know (NVML "[N/A]", Redfish empty strings)
_UNKNOWN = {"", "n/a", "[n/a]", "not available", "unknown", "none", "null"}


@dataclass(frozen=True, slots=True)
class Part:
    key: str  # the UUID, else the serial
    uuid: str | None
    serial: str | None
    part_number: str | None = None
    name: str | None = None

    def same_part(self, other: Part) -> bool:
        if self.uuid and other.uuid:
            return self.uuid == other.uuid
        if self.serial and other.serial:
            return self.serial == other.serial
        return False  # no common identifier: two reports of different kinds

    def as_dict(self) -> dict[str, str | None]:
        return {
            "uuid": self.uuid,
            "serial": self.serial,
            "part_number": self.part_number,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class Tenure:
    part: Part
    installed_at: datetime
    removed_at: datetime | None = None


class PartHistory:
    """Slot -> part history over a store; one per process (the server runs `start()`)."""

    def __init__(self, store: Store, every_s: float = EVERY_S) -> None:
        self.store = store
        self.every_s = every_s
        self._lock = threading.Lock()
        self._ready = False
        self._slot: dict[str, Tenure] = {}  # latest tenure per slot (removed_at: moved away)
        self._where: dict[str, str] = {}  # uuid or serial -> slot it is in now
        self._cursor = -1
        self._last_risk: pl.DataFrame | None = None  # latest risk row written per slot
        self.unidentified = 0  # inventory events without a UUID or serial
        self.swaps = 0  # swaps and moves recorded by this process
        self._background: Periodic | None = None

    # -- setup ------------------------------------------------------------------------------

    def _ensure(self) -> None:
        if self._ready:
            return
        cur = self.store.cursor()
        cur.execute(SCHEMA)
        row = cur.execute("SELECT last_rowid FROM part_history_cursor WHERE id = 0").fetchone()
        self._cursor = int(row[0]) if row else -1  # rowids start at 0
        rows = cur.execute(
            "SELECT device_id, part_key, uuid, serial, part_number, name, installed_at, "
            "removed_at FROM part_tenures QUALIFY row_number() OVER "
            "(PARTITION BY device_id ORDER BY installed_at DESC, removed_at DESC NULLS FIRST) = 1"
        ).fetchall()
        for dev, key, uuid, serial, pn, name, installed, removed in rows:
            tenure = Tenure(Part(key, uuid, serial, pn, name), installed, removed)
            self._slot[dev] = tenure
            if removed is None:
                self._index(dev, tenure.part)
        self._ready = True

    def _index(self, device_id: str, part: Part) -> None:
        for k in (part.uuid, part.serial):
            if k:
                self._where[k] = device_id

    def _unindex(self, device_id: str, part: Part) -> None:
        for k in (part.uuid, part.serial):
            if k and self._where.get(k) == device_id:
                del self._where[k]

    # -- the round ------------------------------------------------------------------------

    def update(self) -> int:
        """Apply the inventory events stored since the last round; the number of slot
        changes (first sightings, swaps, moves) recorded."""
        with self._lock:
            self._ensure()
            cur = self.store.cursor()
            frame = cur.sql(
                "SELECT rowid AS rid, read_time AS t, device_id, attrs->>'uuid' AS uuid, "
                "attrs->>'serial' AS serial, "
                "coalesce(attrs->>'board_part_number', attrs->>'part_number') AS part_number, "
                "coalesce(attrs->>'name', attrs->>'model') AS name "
                "FROM events WHERE kind = 'inventory' AND rowid > ? ORDER BY rowid LIMIT ?",
                params=[self._cursor, MAX_EVENTS],
            ).pl()
            if frame.is_empty():
                return 0
            last_rowid = int(frame["rid"].max())
            frame = frame.with_columns(
                _cleaned(c) for c in ("uuid", "serial", "part_number", "name")
            )
            ok = pl.col("uuid").is_not_null() | pl.col("serial").is_not_null()
            self.unidentified += int(frame.filter(~ok).height)
            frame = frame.filter(ok)
            # a slot re-reporting what it reported just before is no change: drop it
            frame = frame.with_columns(
                pl.col(c).shift(1).over("device_id").alias(f"{c}_before")
                for c in ("uuid", "serial", "rid")
            )
            same_as_before = (
                pl.col("rid_before").is_not_null()
                & pl.col("uuid").eq_missing(pl.col("uuid_before"))
                & pl.col("serial").eq_missing(pl.col("serial_before"))
            )
            changes = frame.filter(~same_as_before).select(
                "rid", "t", "device_id", "uuid", "serial", "part_number", "name"
            )
            closed: list[tuple[str, str, datetime]] = []  # (slot, part key, removed_at)
            # tenures opened this round: [slot, part, installed_at, removed_at]
            opened: list[list[Any]] = []
            new_at: dict[tuple[str, str], int] = {}  # (slot, part key) -> index in opened
            enriched: list[tuple[str, Part]] = []  # same part, an identifier more
            swapped: list[dict[str, Any]] = []

            def close(dev: str, key: str, t: datetime) -> None:
                i = new_at.pop((dev, key), None)
                if i is None:
                    closed.append((dev, key, t))
                else:  # opened and closed in the same round
                    opened[i][3] = t

            for _rid, t, dev, uuid, serial, pn, name in changes.iter_rows():
                part = Part(uuid or serial, uuid, serial, pn, name)
                prev = self._slot.get(dev)
                if prev is not None and prev.removed_at is None and prev.part.same_part(part):
                    if (part.uuid and not prev.part.uuid) or (part.serial and not prev.part.serial):
                        merged = replace(
                            prev.part,
                            uuid=prev.part.uuid or part.uuid,
                            serial=prev.part.serial or part.serial,
                        )
                        self._slot[dev] = replace(prev, part=merged)
                        self._index(dev, merged)
                        i = new_at.get((dev, merged.key))
                        if i is None:
                            enriched.append((dev, merged))
                        else:
                            opened[i][1] = merged
                    continue
                moved_from = next(
                    (self._where[k] for k in (uuid, serial) if k and k in self._where), None
                )
                if moved_from is not None and moved_from != dev:
                    other = self._slot[moved_from]
                    close(moved_from, other.part.key, t)
                    self._slot[moved_from] = replace(other, removed_at=t)
                    self._unindex(moved_from, other.part)
                else:
                    moved_from = None
                if prev is not None and prev.removed_at is None:
                    close(dev, prev.part.key, t)
                    self._unindex(dev, prev.part)
                if prev is not None or moved_from is not None:
                    old = prev.part if prev else None
                    swapped.append(_swap_event(t, dev, old, part, moved_from))
                self._slot[dev] = Tenure(part, t)
                self._index(dev, part)
                new_at[(dev, part.key)] = len(opened)
                opened.append([dev, part, t, None])
            # newest report per slot confirms the current part (last_reported)
            seen = frame.group_by("device_id").agg(pl.col("t").max())
            self._write(cur, closed, opened, enriched, swapped, seen, last_rowid)
            self._cursor = last_rowid
            self.swaps += len(swapped)
            if swapped:
                log.info("parts: %d swap(s) or move(s) recorded", len(swapped))
            return len(opened)

    def _write(
        self,
        cur: Any,
        closed: list[tuple[str, str, datetime]],
        opened: list[list[Any]],
        enriched: list[tuple[str, Part]],
        swapped: list[dict[str, Any]],
        seen: pl.DataFrame,
        last_rowid: int,
    ) -> None:
        cur.begin()
        try:
            if closed:
                c = pl.DataFrame(  # noqa: F841 - referenced by SQL below
                    closed, schema=["device_id", "part_key", "t"], orient="row"
                )
                cur.execute(
                    "UPDATE part_tenures p SET removed_at = c.t FROM c "
                    "WHERE p.device_id = c.device_id AND p.part_key = c.part_key "
                    "AND p.removed_at IS NULL"
                )
            if opened:
                o = pl.DataFrame(  # noqa: F841 - referenced by SQL below
                    [
                        (d, p.key, p.uuid, p.serial, p.part_number, p.name, t, t, r)
                        for d, p, t, r in opened
                    ],
                    schema={
                        "device_id": pl.String,
                        "part_key": pl.String,
                        "uuid": pl.String,
                        "serial": pl.String,
                        "part_number": pl.String,
                        "name": pl.String,
                        "installed_at": pl.Datetime("us"),
                        "last_reported": pl.Datetime("us"),
                        "removed_at": pl.Datetime("us"),
                    },
                    orient="row",
                )
                cur.execute("INSERT INTO part_tenures SELECT * FROM o")
            for dev, p in enriched:
                cur.execute(
                    "UPDATE part_tenures SET uuid = ?, serial = ? "
                    "WHERE device_id = ? AND part_key = ? AND removed_at IS NULL",
                    [p.uuid, p.serial, dev, p.key],
                )
            if swapped:
                s = pl.DataFrame(swapped)  # noqa: F841 - referenced by SQL below
                cur.execute(
                    "INSERT INTO events SELECT t, device_id, 'part_swapped', 'info', message, "
                    "attrs::JSON, 'twin', NULL FROM s"
                )
            cur.execute(
                "UPDATE part_tenures p SET last_reported = greatest(p.last_reported, seen.t) "
                "FROM seen WHERE p.device_id = seen.device_id AND p.removed_at IS NULL"
            )
            cur.execute("INSERT OR REPLACE INTO part_history_cursor VALUES (0, ?)", [last_rowid])
            cur.commit()
        except BaseException:
            cur.rollback()
            self._ready = False  # reload the in-memory map from what was committed
            self._slot.clear()
            self._where.clear()
            raise

    # -- reads ----------------------------------------------------------------------------

    def current(self, device_id: str) -> dict[str, Any] | None:
        """The part in a slot now (device state): uuid, serial, part_number, name,
        installed_at; None when the slot never reported an identity or its part moved."""
        tenure = self._slot.get(device_id)
        if tenure is None or tenure.removed_at is not None:
            return None
        return {**tenure.part.as_dict(), "installed_at": tenure.installed_at}

    def current_frame(self) -> pl.DataFrame:
        """device_id, part_key, uuid, serial of every slot with a part now."""
        rows = [
            (d, t.part.key, t.part.uuid, t.part.serial)
            for d, t in list(self._slot.items())
            if t.removed_at is None
        ]
        return pl.DataFrame(
            rows,
            schema={
                "device_id": pl.String,
                "part_key": pl.String,
                "uuid": pl.String,
                "serial": pl.String,
            },
            orient="row",
        )

    def slot_history(self, device_id: str) -> list[dict[str, Any]]:
        """Every part the slot held, oldest first."""
        with self._lock:
            self._ensure()
        return _dicts(
            self.store.cursor().execute(
                "SELECT part_key, uuid, serial, part_number, name, installed_at, "
                "last_reported, removed_at FROM part_tenures WHERE device_id = ? "
                "ORDER BY installed_at, removed_at NULLS LAST",
                [device_id],
            )
        )

    def part(self, ident: str, event_limit: int = 200) -> dict[str, Any] | None:
        """A part by UUID or serial: where it is (or was last), every slot it held, its
        risk history summary and the events of its slots while it was there; None if the
        twin never saw it."""
        with self._lock:
            self._ensure()
        cur = self.store.cursor()
        tenures = _dicts(
            cur.execute(
                "SELECT device_id, part_key, uuid, serial, part_number, name, installed_at, "
                "last_reported, removed_at FROM part_tenures "
                "WHERE uuid = $i OR serial = $i OR lower(uuid) = lower($i) "
                "ORDER BY installed_at, removed_at NULLS LAST",
                {"i": ident},
            )
        )
        if not tenures:
            return None
        latest = tenures[-1]
        keys = sorted({t["part_key"] for t in tenures})
        risk = _dicts(
            cur.execute(
                "SELECT count(*) AS points, min(time) AS first_time, max(time) AS last_time, "
                "max(risk) AS max_risk, arg_max(time, risk) AS max_risk_time, "
                "arg_max(risk, time) AS latest_risk, arg_max(status, time) AS latest_status, "
                "arg_max(model_version, time) AS model_version "
                "FROM failure_risk_history WHERE list_contains($k, part_key)",
                {"k": keys},
            )
        )[0]
        windows = pl.DataFrame(  # noqa: F841 - referenced by SQL below
            [(t["device_id"], t["installed_at"], t["removed_at"]) for t in tenures],
            schema={"device_id": pl.String, "s": pl.Datetime("us"), "e": pl.Datetime("us")},
            orient="row",
        )
        events = _dicts(
            cur.execute(
                "SELECT e.read_time AS time, e.device_id, e.kind, e.severity, e.message, "
                "CAST(e.attrs AS VARCHAR) AS attrs FROM events e JOIN windows w "
                "ON e.device_id = w.device_id AND e.read_time >= w.s AND (w.e IS NULL "
                "OR e.read_time < w.e OR (e.kind = 'part_swapped' AND e.read_time = w.e)) "
                "WHERE e.kind <> 'inventory' ORDER BY e.read_time DESC LIMIT ?",
                [event_limit],
            )
        )
        for e in events:
            e["attrs"] = orjson.loads(e["attrs"]) if e["attrs"] else {}
        return {
            "part": {k: latest[k] for k in ("uuid", "serial", "part_number", "name")},
            "slot": latest["device_id"] if latest["removed_at"] is None else None,
            "last_slot": latest["device_id"],
            "slots": tenures,
            "risk": risk if risk["points"] else None,
            "events": events,
        }

    # -- risk history -----------------------------------------------------------------------

    def record_risk(self, table: pl.DataFrame, as_of: datetime) -> int:
        """Persist a scoring tick's risks keyed by the part in each slot (the failure-risk
        service calls this once per rescoring); only what changed, or HEARTBEAT_S after a
        part's last row. Slots without a known part are skipped. The rows written."""
        with self._lock:
            self._ensure()
            if table.is_empty():
                return 0
            cur = self.store.cursor()
            if self._last_risk is None:
                self._last_risk = cur.sql(
                    "SELECT device_id, part_key, risk, status, model_version, time "
                    "FROM failure_risk_history QUALIFY row_number() OVER "
                    "(PARTITION BY device_id ORDER BY time DESC) = 1"
                ).pl()
            now = (
                pl.DataFrame({"device_id": table["device_id"]})
                .with_columns(
                    table["risk"].cast(pl.Float64).alias("risk"),
                    table["status"].cast(pl.String).alias("status"),
                    table["model_version"].cast(pl.String).alias("model_version"),
                )
                .join(self.current_frame(), on="device_id", how="inner")
            )
            if now.is_empty():
                return 0
            prev = self._last_risk.rename(
                {c: f"{c}_prev" for c in self._last_risk.columns if c != "device_id"}
            )
            j = now.join(prev, on="device_id", how="left")
            heartbeat = as_of - timedelta(seconds=HEARTBEAT_S)
            due = (
                pl.col("part_key_prev").is_null()
                | (pl.col("part_key") != pl.col("part_key_prev"))
                | (pl.col("status") != pl.col("status_prev"))
                | ~pl.col("model_version").eq_missing(pl.col("model_version_prev"))
                | ((pl.col("risk") - pl.col("risk_prev")).abs() >= RISK_STEP)
                | (pl.col("time_prev") <= heartbeat)
            )
            rows = j.filter(due).select(
                pl.lit(as_of).cast(pl.Datetime("us")).alias("time"),
                "device_id",
                "part_key",
                "uuid",
                "serial",
                "risk",
                "status",
                "model_version",
            )
            if rows.is_empty():
                return 0
            cur.execute("INSERT INTO failure_risk_history SELECT * FROM rows")
            written = rows.select(
                "device_id", "part_key", "risk", "status", "model_version", "time"
            )
            self._last_risk = pl.concat(
                [
                    self._last_risk.join(written, on="device_id", how="anti"),
                    written.cast(dict(self._last_risk.schema)),  # type: ignore[arg-type]
                ]
            )
            return rows.height

    def risk_history(self, ident: str, limit: int = 1000) -> list[dict[str, Any]]:
        """A part's risk rows (by UUID or serial), oldest first."""
        with self._lock:
            self._ensure()
        return _dicts(
            self.store.cursor().execute(
                "SELECT * FROM (SELECT time, device_id, risk, status, model_version "
                "FROM failure_risk_history WHERE uuid = $i OR serial = $i OR part_key = $i "
                "ORDER BY time DESC LIMIT $n) ORDER BY time",
                {"i": ident, "n": limit},
            )
        )

    # -- background -------------------------------------------------------------------------

    def health(self, stale_after_s: float) -> ComponentHealth:
        if self._background is None:
            return ComponentHealth("not_running")
        h = self._background.health(stale_after_s)
        extra = {"slots": len(self._slot), "swaps": self.swaps, "unidentified": self.unidentified}
        return replace(h, extra={**h.extra, **extra})

    @property
    def running(self) -> bool:
        return self._background is not None and self._background.running

    def start(self) -> None:
        """Apply new inventory events every `every_s` in a background thread (the server
        starts it, and stops it before closing the store)."""
        if self._background is None:
            self._background = Periodic(self.update, self.every_s, "parts")
        self._background.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._background is not None:
            self._background.stop(timeout_s)


def _swap_event(
    t: datetime, device_id: str, old: Part | None, new: Part, moved_from: str | None
) -> dict[str, Any]:
    what = f"serial {new.serial} uuid {new.uuid}"
    if old is None:
        message = f"part moved in from {moved_from}: {what}"
    else:
        message = f"part swapped: serial {old.serial} uuid {old.uuid} -> {what}"
        if moved_from:
            message += f" (moved in from {moved_from})"
    attrs: dict[str, Any] = {
        "old_uuid": old.uuid if old else None,
        "old_serial": old.serial if old else None,
        "new_uuid": new.uuid,
        "new_serial": new.serial,
        "moved_from": moved_from,
    }
    return {
        "t": t,
        "device_id": device_id,
        "message": message,
        "attrs": orjson.dumps(attrs).decode(),
    }


def _cleaned(col: str) -> pl.Expr:
    """An identity column with the sources' "unknown" spellings as null."""
    text = pl.col(col).cast(pl.String).str.strip_chars()
    return (
        pl.when(text.str.to_lowercase().is_in(list(_UNKNOWN))).then(None).otherwise(text).alias(col)
    )


def _dicts(result: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, row, strict=True)) for row in result.fetchall()]
