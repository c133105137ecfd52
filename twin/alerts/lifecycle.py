"""Alert lifecycle storage in DuckDB: alerts, every transition, silences; and queries.

One row per alert instance in `alerts` (a fingerprint that fires again after resolving is
a new instance); `alert_transitions` keeps every change (fired, resolved, acknowledged,
silenced/unsilenced, inhibited/uninhibited, flapping) with who and when.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from ingest.store import Store
from twin.alerts.yaml_files import Matcher

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS alert_id_seq START 1;
CREATE TABLE IF NOT EXISTS alerts (
    id BIGINT NOT NULL,
    fingerprint VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    series_key VARCHAR NOT NULL,
    status VARCHAR NOT NULL,             -- firing | resolved
    severity VARCHAR NOT NULL,
    labels JSON NOT NULL,
    annotations JSON NOT NULL,
    value DOUBLE,
    starts_at TIMESTAMP NOT NULL,        -- when the condition began
    fired_at TIMESTAMP NOT NULL,         -- when it became an alert (after `for`)
    ends_at TIMESTAMP,
    updated_at TIMESTAMP NOT NULL,
    silenced_by VARCHAR[] NOT NULL DEFAULT [],
    inhibited_by VARCHAR,
    flapping BOOLEAN NOT NULL DEFAULT false,
    notified BOOLEAN NOT NULL DEFAULT false,
    acked_by VARCHAR,
    acked_at TIMESTAMP,
    ack_comment VARCHAR
);
CREATE TABLE IF NOT EXISTS alert_transitions (
    alert_id BIGINT NOT NULL,
    fingerprint VARCHAR NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    transition VARCHAR NOT NULL,
    actor VARCHAR,
    comment VARCHAR,
    value DOUBLE
);
CREATE TABLE IF NOT EXISTS silences (
    id VARCHAR NOT NULL,
    matchers JSON NOT NULL,
    starts_at TIMESTAMP NOT NULL,
    ends_at TIMESTAMP NOT NULL,
    created_by VARCHAR NOT NULL,
    comment VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expired_at TIMESTAMP
);
"""

ALERT_COLUMNS = (
    "id",
    "fingerprint",
    "rule",
    "series_key",
    "status",
    "severity",
    "labels",
    "annotations",
    "value",
    "starts_at",
    "fired_at",
    "ends_at",
    "updated_at",
    "silenced_by",
    "inhibited_by",
    "flapping",
    "notified",
    "acked_by",
    "acked_at",
    "ack_comment",
)
_SELECT = "SELECT " + ", ".join(ALERT_COLUMNS) + " FROM alerts"


_TS = pa.timestamp("us")
_CHANGED = pa.schema(
    [
        ("id", pa.int64()),
        ("status", pa.string()),
        ("ends_at", _TS),
        ("value", pa.float64()),
        ("silenced_by", pa.list_(pa.string())),
        ("inhibited_by", pa.string()),
        ("flapping", pa.bool_()),
        ("notified", pa.bool_()),
        ("updated_at", _TS),
    ]
)
_NEW = pa.schema(
    [
        *_CHANGED,
        ("fingerprint", pa.string()),
        ("rule", pa.string()),
        ("series_key", pa.string()),
        ("severity", pa.string()),
        ("labels", pa.string()),
        ("annotations", pa.string()),
        ("starts_at", _TS),
        ("fired_at", _TS),
    ]
)
_TRANSITION_TYPES = (
    pa.int64(),
    pa.string(),
    _TS,
    pa.string(),
    pa.string(),
    pa.string(),
    pa.float64(),
)


class NotFoundError(LookupError):
    pass


class ConflictError(ValueError):
    pass


@dataclass(frozen=True)
class AlertFilter:
    status: str | None = None
    severity: str | None = None
    alertname: str | None = None
    acknowledged: bool | None = None
    silenced: bool | None = None
    inhibited: bool | None = None
    labels: tuple[tuple[str, str], ...] = ()
    since: datetime | None = None
    until: datetime | None = None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"a:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = raw.split(":", 1)
        if kind != "a":
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"invalid cursor {cursor!r}: pass next_cursor from a previous page unchanged"
        ) from exc


def alert_row(row: tuple) -> dict[str, Any]:
    d = dict(zip(ALERT_COLUMNS, row, strict=True))
    d["labels"] = orjson.loads(d["labels"])
    d["annotations"] = orjson.loads(d["annotations"])
    d["silenced_by"] = list(d["silenced_by"] or [])
    return d


class AlertDb:
    """Alert tables in the twin's DuckDB file. Writes are serialized by `lock` (the engine,
    the outbox worker and the API share it); each thread reads with its own cursor."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.RLock()
        # one cursor per thread, kept here (not in a threading.local) so close() reaches all
        self._cursors: dict[int, duckdb.DuckDBPyConnection] = {}
        self.cur().execute(SCHEMA)

    def cur(self) -> duckdb.DuckDBPyConnection:
        ident = threading.get_ident()
        cur = self._cursors.get(ident)
        if cur is None:  # a reused thread id belongs to a thread that has ended
            cur = self._cursors[ident] = self.store.cursor()
        return cur

    def close(self) -> None:
        with self.lock:
            for cur in self._cursors.values():
                cur.close()
            self._cursors.clear()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.lock:
            cur = self.cur()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def next_ids(self, cur: duckdb.DuckDBPyConnection, n: int) -> list[int]:
        if n == 0:
            return []
        return [
            r[0]
            for r in cur.execute("SELECT nextval('alert_id_seq') FROM range(?)", [n]).fetchall()
        ]

    # -- engine side --------------------------------------------------------------------

    def write_changes(
        self,
        cur: duckdb.DuckDBPyConnection,
        new: list[dict[str, Any]],
        changed: list[dict[str, Any]],
        transitions: list[tuple],
    ) -> None:
        """Inside the engine's transaction: new alert rows, updated rows, transitions, as
        Arrow batches (a collector going silent can fire thousands of alerts at once)."""
        if new:
            cur.register("new_alerts", pa.Table.from_pylist(new, schema=_NEW))
            cur.execute(
                "INSERT INTO alerts ("
                + ", ".join(_NEW.names)
                + ") SELECT "
                + ", ".join(_NEW.names)
                + " FROM new_alerts"
            )
            cur.unregister("new_alerts")
        if changed:
            cur.register("changed_alerts", pa.Table.from_pylist(changed, schema=_CHANGED))
            cur.execute(
                "UPDATE alerts SET "
                + ", ".join(f"{c} = u.{c}" for c in _CHANGED.names if c != "id")
                + " FROM changed_alerts u WHERE alerts.id = u.id"
            )
            cur.unregister("changed_alerts")
        if transitions:
            cols = list(zip(*transitions, strict=True))
            cur.register(
                "new_transitions",
                pa.table(
                    [pa.array(c, t) for c, t in zip(cols, _TRANSITION_TYPES, strict=True)],
                    names=[
                        "alert_id",
                        "fingerprint",
                        "occurred_at",
                        "transition",
                        "actor",
                        "comment",
                        "value",
                    ],
                ),
            )
            cur.execute("INSERT INTO alert_transitions SELECT * FROM new_transitions")
            cur.unregister("new_transitions")

    def open_alerts(self) -> list[dict[str, Any]]:
        rows = self.cur().execute(_SELECT + " WHERE status = 'firing' ORDER BY id").fetchall()
        return [alert_row(r) for r in rows]

    def state_changes_since(self, since: datetime) -> dict[str, list[datetime]]:
        """fingerprint -> times it fired or resolved, for flap detection after a restart."""
        rows = (
            self.cur()
            .execute(
                "SELECT fingerprint, occurred_at FROM alert_transitions WHERE occurred_at >= ? "
                "AND transition IN ('fired', 'resolved') ORDER BY occurred_at",
                [since],
            )
            .fetchall()
        )
        out: dict[str, list[datetime]] = {}
        for fp, at in rows:
            out.setdefault(fp, []).append(at)
        return out

    # -- acknowledgements ---------------------------------------------------------------

    def ack(self, alert_id: int, by: str, comment: str, now: datetime) -> dict[str, Any]:
        with self.transaction() as cur:
            row = cur.execute(_SELECT + " WHERE id = ?", [alert_id]).fetchone()
            if row is None:
                raise NotFoundError(f"no alert with id {alert_id}")
            alert = alert_row(row)
            if alert["acked_by"] is not None:
                raise ConflictError(
                    f"alert {alert_id} was already acknowledged by "
                    f"{alert['acked_by']} at {alert['acked_at']:%Y-%m-%dT%H:%M:%SZ}"
                )
            cur.execute(
                "UPDATE alerts SET acked_by = ?, acked_at = ?, ack_comment = ?, "
                "updated_at = ? WHERE id = ?",
                [by, now, comment, now, alert_id],
            )
            cur.execute(
                "INSERT INTO alert_transitions VALUES (?, ?, ?, 'acknowledged', ?, ?, ?)",
                [alert_id, alert["fingerprint"], now, by, comment, alert["value"]],
            )
        alert.update(acked_by=by, acked_at=now, ack_comment=comment, updated_at=now)
        return alert

    # -- silences -----------------------------------------------------------------------

    def create_silence(
        self,
        matchers: list[Matcher],
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
        now: datetime,
    ) -> dict[str, Any]:
        sid = str(uuid.uuid4())
        doc = orjson.dumps([m.to_api() for m in matchers]).decode()
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                [sid, doc, starts_at, ends_at, created_by, comment, now],
            )
        return self.get_silence(sid, now)

    def expire_silence(self, sid: str, now: datetime) -> dict[str, Any]:
        with self.transaction() as cur:
            row = cur.execute(
                "SELECT ends_at, expired_at FROM silences WHERE id = ?", [sid]
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no silence with id {sid!r}")
            if row[1] is not None or row[0] <= now:
                raise ConflictError(f"silence {sid} has already expired")
            cur.execute(
                "UPDATE silences SET expired_at = ?, ends_at = least(ends_at, ?) WHERE id = ?",
                [now, now, sid],
            )
        return self.get_silence(sid, now)

    def get_silence(self, sid: str, now: datetime) -> dict[str, Any]:
        rows = self._silences("WHERE id = ?", [sid], now)
        if not rows:
            raise NotFoundError(f"no silence with id {sid!r}")
        return rows[0]

    def list_silences(self, now: datetime, state: str | None = None) -> list[dict[str, Any]]:
        rows = self._silences("ORDER BY created_at DESC", [], now)
        return [r for r in rows if state is None or r["state"] == state]

    def _silences(self, tail: str, params: list, now: datetime) -> list[dict[str, Any]]:
        rows = (
            self.cur()
            .execute(
                "SELECT id, matchers, starts_at, ends_at, created_by, comment, created_at, "
                f"expired_at FROM silences {tail}",
                params,
            )
            .fetchall()
        )
        out = []
        for sid, matchers, starts, ends, by, comment, created, expired in rows:
            state = (
                "expired"
                if (expired is not None or ends <= now)
                else ("pending" if starts > now else "active")
            )
            out.append(
                {
                    "id": sid,
                    "matchers": orjson.loads(matchers),
                    "starts_at": starts,
                    "ends_at": ends,
                    "created_by": by,
                    "comment": comment,
                    "created_at": created,
                    "state": state,
                }
            )
        return out

    def active_silences(self, now: datetime) -> list[tuple[str, list[Matcher]]]:
        rows = (
            self.cur()
            .execute(
                "SELECT id, matchers FROM silences WHERE expired_at IS NULL AND starts_at <= ? "
                "AND ends_at > ?",
                [now, now],
            )
            .fetchall()
        )
        return [(sid, [Matcher.parse(m) for m in orjson.loads(doc)]) for sid, doc in rows]

    # -- queries ------------------------------------------------------------------------

    def get_alert(self, alert_id: int) -> dict[str, Any]:
        row = self.cur().execute(_SELECT + " WHERE id = ?", [alert_id]).fetchone()
        if row is None:
            raise NotFoundError(f"no alert with id {alert_id}")
        return alert_row(row)

    def transitions(self, alert_id: int) -> list[dict[str, Any]]:
        rows = (
            self.cur()
            .execute(
                "SELECT occurred_at, transition, actor, comment, value FROM alert_transitions "
                "WHERE alert_id = ? ORDER BY occurred_at, rowid",
                [alert_id],
            )
            .fetchall()
        )
        names = ("occurred_at", "transition", "actor", "comment", "value")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def list_alerts(
        self, f: AlertFilter, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; keyset pagination on id so pages stay stable as alerts arrive."""
        where: list[str] = ["true"]
        params: list[Any] = []
        for column, value in (("status", f.status), ("severity", f.severity)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if f.alertname is not None:
            where.append("rule = ?")
            params.append(f.alertname)
        if f.acknowledged is not None:
            where.append("acked_by IS NOT NULL" if f.acknowledged else "acked_by IS NULL")
        if f.silenced is not None:
            where.append(("" if f.silenced else "NOT ") + "(len(silenced_by) > 0)")
        if f.inhibited is not None:
            where.append("inhibited_by IS " + ("NOT NULL" if f.inhibited else "NULL"))
        for name, value in f.labels:
            where.append("json_extract_string(labels, ?) = ?")
            params += [f'$."{name}"', value]
        if f.since is not None:
            where.append("starts_at >= ?")
            params.append(f.since)
        if f.until is not None:
            where.append("starts_at < ?")
            params.append(f.until)
        if cursor is not None:
            where.append("id < ?")
            params.append(decode_cursor(cursor))
        rows = (
            self.cur()
            .execute(
                _SELECT + " WHERE " + " AND ".join(where) + " ORDER BY id DESC LIMIT ?",
                [*params, limit + 1],
            )
            .fetchall()
        )
        items = [alert_row(r) for r in rows[:limit]]
        nxt = encode_cursor(items[-1]["id"]) if len(rows) > limit else None
        return items, nxt
