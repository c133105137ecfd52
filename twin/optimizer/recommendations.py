"""Recommendation lifecycle in DuckDB: proposed -> accepted | rejected (by whom, when) ->
measured (realised savings after acceptance, next to the predicted ones).

Transitions are checked in one UPDATE ... WHERE status = <expected> so two operators
cannot both decide the same recommendation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import duckdb

from ingest.sql import one_row
from twin.optimizer.search import Decision

PROPOSED, ACCEPTED, REJECTED, MEASURED = "proposed", "accepted", "rejected", "measured"
# issue 19 (opt-live): the live loop's ends. expired: the state moved on before a
# decision; failed: the write was refused or not confirmed (nothing changed); reverted:
# a guarded limit was crossed after the change and the previous setpoints were restored
EXPIRED, FAILED, REVERTED = "expired", "failed", "reverted"
STATUSES = (PROPOSED, ACCEPTED, REJECTED, MEASURED, EXPIRED, FAILED, REVERTED)
SIZE_BUCKETS_KW = ((-1e9, 0.5), (0.5, 1.0), (1.0, 1e9))  # predicted saving, kW

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS recommendation_seq START 1;
CREATE TABLE IF NOT EXISTS recommendations (
    id BIGINT PRIMARY KEY DEFAULT nextval('recommendation_seq'),
    created_at TIMESTAMP NOT NULL,
    for_time TIMESTAMP NOT NULL,
    site_id VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    current_setpoints JSON NOT NULL,
    recommended_setpoints JSON NOT NULL,
    state JSON NOT NULL,
    predicted_savings_kw DOUBLE NOT NULL,
    savings_low_kw DOUBLE,
    savings_high_kw DOUBLE,
    predicted_cooling_savings_kw DOUBLE,
    predicted_facility_kw DOUBLE,
    pue_current DOUBLE,
    pue_recommended DOUBLE,
    pue_delta DOUBLE,
    binding_constraint VARCHAR,
    active_constraints JSON,
    predicted_gpu_temp_max_c DOUBLE,
    model_version VARCHAR NOT NULL,
    decided_by VARCHAR,
    decided_at TIMESTAMP,
    decision_note VARCHAR,
    measured_at TIMESTAMP,
    realised_savings_kw DOUBLE,
    outcome_note VARCHAR
);
-- issue 19 (opt-live): why it was proposed, what was written and the audit of each write
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS why JSON;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS status_note VARCHAR;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS applied_at TIMESTAMP;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS applied_setpoints JSON;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS previous_setpoints JSON;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS reverted_at TIMESTAMP;
-- every write point's value before the change, unit by unit: what a revert writes back
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS previous_points JSON;
CREATE SEQUENCE IF NOT EXISTS setpoint_write_seq START 1;
CREATE TABLE IF NOT EXISTS setpoint_writes (
    id BIGINT PRIMARY KEY DEFAULT nextval('setpoint_write_seq'),
    written_at TIMESTAMP NOT NULL,
    recommendation_id BIGINT,
    action VARCHAR NOT NULL,  -- apply, revert, advisory (recorded, nothing written)
    who VARCHAR NOT NULL,
    writer VARCHAR,
    requested JSON NOT NULL,
    read_back JSON,
    ok BOOLEAN NOT NULL,
    error VARCHAR
);
"""
JSON_COLUMNS = (
    "current_setpoints",
    "recommended_setpoints",
    "state",
    "active_constraints",
    "why",
    "applied_setpoints",
    "previous_setpoints",
    "previous_points",
)


class LifecycleError(ValueError):
    """A transition the lifecycle does not allow (e.g. accepting a rejected one)."""


class UnknownRecommendationError(KeyError):
    pass


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(t: datetime | None) -> datetime:
    if t is None:
        return _now()
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


class RecommendationStore:
    def __init__(self, con: duckdb.DuckDBPyConnection, *, create_schema: bool = True) -> None:
        self.con = con
        if create_schema:
            con.execute(SCHEMA)

    def propose(self, d: Decision, site_id: str, for_time: datetime | None = None) -> int:
        if d.recommended is None:
            raise ValueError(f"no recommendation to propose: {d.reason}")
        row = one_row(
            self.con.execute(
                "INSERT INTO recommendations (created_at, for_time, site_id, status, "
                "current_setpoints, recommended_setpoints, state, predicted_savings_kw, "
                "savings_low_kw, savings_high_kw, predicted_cooling_savings_kw, "
                "predicted_facility_kw, pue_current, pue_recommended, pue_delta, "
                "binding_constraint, active_constraints, predicted_gpu_temp_max_c, model_version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [
                    _now(),
                    _naive(for_time),
                    site_id,
                    PROPOSED,
                    json.dumps(d.current),
                    json.dumps(d.recommended),
                    json.dumps(d.state),
                    d.predicted_savings_kw,
                    d.savings_low_kw,
                    d.savings_high_kw,
                    d.predicted_cooling_savings_kw,
                    d.predicted_facility_kw,
                    d.pue_current,
                    d.pue_recommended,
                    d.pue_delta,
                    d.binding_constraint,
                    json.dumps(d.active_constraints),
                    d.predicted_gpu_temp_max_c,
                    d.model_version,
                ],
            )
        )
        return int(row[0])

    def _transition(self, rec_id: int, expected: str, sets: str, params: list) -> None:
        row = self.con.execute(
            f"UPDATE recommendations SET {sets} WHERE id = ? AND status = ? RETURNING id",
            [*params, rec_id, expected],
        ).fetchone()
        if row is None:
            current = self.get(rec_id)["status"]  # raises UnknownRecommendationError
            raise LifecycleError(
                f"recommendation {rec_id} is {current!r}; this action needs it {expected!r}"
            )

    def _decide(
        self, rec_id: int, status: str, who: str, note: str | None, at: datetime | None
    ) -> dict[str, Any]:
        if not who or not who.strip():
            raise ValueError("who: the operator taking the decision must be named")
        self._transition(
            rec_id,
            PROPOSED,
            "status = ?, decided_by = ?, decided_at = ?, decision_note = ?",
            [status, who.strip(), _naive(at), note],
        )
        return self.get(rec_id)

    def accept(
        self, rec_id: int, who: str, note: str | None = None, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._decide(rec_id, ACCEPTED, who, note, at)

    def reject(
        self, rec_id: int, who: str, note: str | None = None, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._decide(rec_id, REJECTED, who, note, at)

    def record_outcome(
        self,
        rec_id: int,
        realised_savings_kw: float,
        note: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Realised savings measured after an accepted recommendation was applied."""
        if realised_savings_kw is None or realised_savings_kw != realised_savings_kw:
            raise ValueError("realised_savings_kw: must be a number")
        self._transition(
            rec_id,
            ACCEPTED,
            "status = ?, measured_at = ?, realised_savings_kw = ?, outcome_note = ?",
            [MEASURED, _naive(at), float(realised_savings_kw), note],
        )
        return self.get(rec_id)

    # -- issue 19 (opt-live): the live loop -------------------------------------------------

    def set_why(self, rec_id: int, why: dict[str, Any]) -> None:
        self.con.execute(
            "UPDATE recommendations SET why = ? WHERE id = ?", [json.dumps(why), rec_id]
        )

    def end(self, rec_id: int, expected: str, status: str, note: str) -> dict[str, Any]:
        """expected -> expired | failed | reverted, with the reason."""
        extra = ", reverted_at = ?" if status == REVERTED else ""
        params: list = [status, note[:2000]] + ([_now()] if status == REVERTED else [])
        self._transition(rec_id, expected, f"status = ?, status_note = ?{extra}", params)
        return self.get(rec_id)

    def expire_proposed(self, note: str, before_id: int | None = None) -> list[int]:
        """Every proposal still open (older than `before_id`) -> expired."""
        rows = self.con.execute(
            "UPDATE recommendations SET status = ?, status_note = ? WHERE status = ? "
            "AND (? IS NULL OR id < ?) RETURNING id",
            [EXPIRED, note, PROPOSED, before_id, before_id],
        ).fetchall()
        return [int(r[0]) for r in rows]

    def applied(
        self,
        rec_id: int,
        applied: dict[str, float],
        previous: dict[str, float],
        previous_points: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        self.con.execute(
            "UPDATE recommendations SET applied_at = ?, applied_setpoints = ?, "
            "previous_setpoints = ?, previous_points = ? WHERE id = ?",
            [
                _now(),
                json.dumps(applied),
                json.dumps(previous),
                None if previous_points is None else json.dumps(previous_points),
                rec_id,
            ],
        )
        return self.get(rec_id)

    def in_watch(self, since: datetime) -> list[dict[str, Any]]:
        """Accepted (or already measured: opt-default) written changes applied at or after
        `since` (in their watch window)."""
        return self._rows(
            "WHERE status IN (?, ?) AND applied_at IS NOT NULL AND applied_at >= ?",
            [ACCEPTED, MEASURED, _naive(since)],
        )

    def audit(
        self,
        rec_id: int | None,
        action: str,
        who: str,
        writer: str | None,
        requested: dict[str, float],
        read_back: dict[str, float] | None,
        error: str | None = None,
    ) -> None:
        self.con.execute(
            "INSERT INTO setpoint_writes (written_at, recommendation_id, action, who, writer, "
            "requested, read_back, ok, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                _now(),
                rec_id,
                action,
                who,
                writer,
                json.dumps(requested),
                json.dumps(read_back) if read_back is not None else None,
                error is None,
                error,
            ],
        )

    def writes(self, rec_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        cur = self.con.execute(
            "SELECT * FROM setpoint_writes WHERE ? IS NULL OR recommendation_id = ? "
            f"ORDER BY id DESC LIMIT {int(limit)}",
            [rec_id, rec_id],
        )
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r, strict=True))
            for k in ("requested", "read_back"):
                d[k] = json.loads(d[k]) if isinstance(d[k], str) else d[k]
            out.append(d)
        return out

    def _rows(self, where: str, params: list, limit: int | None = None) -> list[dict[str, Any]]:
        q = f"SELECT * FROM recommendations {where} ORDER BY id DESC"
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        cur = self.con.execute(q, params)
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r, strict=True))
            for k in JSON_COLUMNS:
                d[k] = json.loads(d[k]) if isinstance(d[k], str) else d[k]
            out.append(d)
        return out

    def get(self, rec_id: int) -> dict[str, Any]:
        rows = self._rows("WHERE id = ?", [int(rec_id)])
        if not rows:
            raise UnknownRecommendationError(f"no recommendation with id {rec_id}")
        return rows[0]

    def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise ValueError(f"status: {status!r} is not one of {list(STATUSES)}")
        return self._rows("WHERE status = ?" if status else "", [status] if status else [], limit)

    def report(self) -> dict[str, Any]:
        """Counts per status and predicted vs realised savings over measured ones."""
        counts = dict(
            self.con.execute(
                "SELECT status, count(*) FROM recommendations GROUP BY status"
            ).fetchall()
        )
        n, pred, real, mae = one_row(
            self.con.execute(
                "SELECT count(*), sum(predicted_savings_kw), sum(realised_savings_kw), "
                "avg(abs(predicted_savings_kw - realised_savings_kw)) FROM recommendations "
                "WHERE status = ?",
                [MEASURED],
            )
        )
        ratio = (real / pred) if pred else None
        # by predicted size: small predicted gains sit inside the models' error and are
        # where selecting the best-looking candidate over-predicts most
        by_size = []
        for lo, hi in SIZE_BUCKETS_KW:
            k, p_sum, r_sum = one_row(
                self.con.execute(
                    "SELECT count(*), sum(predicted_savings_kw), sum(realised_savings_kw) FROM "
                    "recommendations WHERE status = ? AND predicted_savings_kw >= ? AND "
                    "predicted_savings_kw < ?",
                    [MEASURED, lo, hi],
                )
            )
            by_size.append(
                {
                    "predicted_kw_from": lo,
                    "predicted_kw_to": hi,
                    "measured": int(k),
                    "predicted_savings_kw_sum": p_sum,
                    "realised_savings_kw_sum": r_sum,
                    "realised_over_predicted": (r_sum / p_sum) if p_sum else None,
                }
            )
        return {
            "counts": {s: int(counts.get(s, 0)) for s in STATUSES},
            "measured": int(n),
            "predicted_savings_kw_sum": pred,
            "realised_savings_kw_sum": real,
            "realised_over_predicted": ratio,
            "mean_abs_error_kw": mae,
            "by_predicted_size": by_size,
        }


def store_opener(
    cursor: Callable[[], duckdb.DuckDBPyConnection],
) -> Callable[[], RecommendationStore]:
    """Opens the store on a fresh cursor per call (DuckDB cursors are not shared between
    threads), creating its tables on the first successful call only: readers that open it
    every live tick or request do not re-run the DDL."""
    created = False

    def open_store() -> RecommendationStore:
        nonlocal created
        store = RecommendationStore(cursor(), create_schema=not created)
        created = True
        return store

    return open_store
