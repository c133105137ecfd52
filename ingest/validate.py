"""Ingest validation policy and the vectorized rules that apply it.

Everything here runs inside DuckDB over a whole poll at once: the envelope rules over one
row per message, the sample rules over one row per sample. Python only sees the verdicts
(one row per message). See docs/ingest.md for the policy choices.

Reasons a message is dead-lettered (the `dctwin-dlq-reason` header and the stats key):

message-level (nothing from the message is stored):
  too_large, invalid_json, invalid_envelope, unknown_version, schema, empty_batch
sample-level (with partial="keep_valid" the other samples of the batch are stored):
  non_finite, timestamp_skew, unknown_metric, bad_device_id, unknown_device
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import pyarrow as pa

from domain.contract import METRICS, Kind

# Order is precedence: a sample that breaks several rules is counted under the first.
SAMPLE_REASONS = (
    "non_finite",
    "timestamp_skew",
    "unknown_metric",
    "bad_device_id",
    "unknown_device",
)


@dataclass(frozen=True)
class IngestPolicy:
    """What ingest accepts. Defaults suit a live site; tests and backfills widen the window."""

    max_future_s: float = 300.0  # read times further ahead than this are clock errors
    # Older than this is a broken clock (a device at 1970), not data: backfills and
    # simulated history of the last years are accepted.
    max_past_s: float = 5 * 365 * 86400.0
    # Device ids absent from the site model: "accept" stores them and counts them
    # (stats.unknown_device_samples); "reject" treats them like any other bad sample.
    unknown_device: Literal["accept", "reject"] = "accept"
    # A batch with some bad samples: "keep_valid" stores the rest and dead-letters the
    # original message with the counts; "reject_batch" stores nothing from it.
    partial: Literal["keep_valid", "reject_batch"] = "keep_valid"
    max_message_bytes: int = 8 * 1024 * 1024
    # Cross-batch duplicates are always found. A batch that lists the same (device,
    # metric, read time) twice is only deduplicated with exact_dedupe, which checks every
    # sample (about 20% more CPU); collectors never produce such a batch.
    exact_dedupe: bool = False
    known_devices: frozenset[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.unknown_device not in ("accept", "reject"):
            raise ValueError(
                f"unknown_device must be accept or reject, not {self.unknown_device!r}"
            )
        if self.partial not in ("keep_valid", "reject_batch"):
            raise ValueError(f"partial must be keep_valid or reject_batch, not {self.partial!r}")
        if self.max_future_s < 0 or self.max_past_s <= 0:
            raise ValueError("max_future_s must be >= 0 and max_past_s > 0")

    @classmethod
    def for_site(cls, site, **overrides) -> IngestPolicy:
        """Policy whose known devices are the site model's (`domain.site.Site`)."""
        return cls(known_devices=frozenset(d.id for d in site.devices()), **overrides)

    @property
    def checks_devices(self) -> bool:
        return self.known_devices is not None


def install_reference_tables(con: duckdb.DuckDBPyConnection, policy: IngestPolicy) -> None:
    """Temp tables the sample rules join against (per connection, replaced on each call)."""
    known_metrics = pa.table(  # noqa: F841 - referenced by SQL below
        {
            "kind": [k.value for k, names in METRICS.items() for _ in names],
            "metric": [m for names in METRICS.values() for m in names],
        }
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _known_metrics AS SELECT * FROM known_metrics")
    devices = sorted(policy.known_devices or ())
    known_devices = pa.table({"device_id": pa.array(devices, pa.string())})  # noqa: F841
    con.execute("CREATE OR REPLACE TEMP TABLE _known_devices AS SELECT * FROM known_devices")


def _is_text(col: str) -> str:
    return f"(json_type({col}) IS NOT DISTINCT FROM 'VARCHAR' AND length({col}->>'$') > 0)"


def _is_int(col: str) -> str:
    return f"(json_type({col}) IN ('UBIGINT', 'BIGINT'))"


KINDS = tuple(k.value for k in Kind)

# (condition that is TRUE when the field is wrong, reason, detail) in evaluation order.
ENVELOPE_RULES: tuple[tuple[str, str, str], ...] = (
    ("version IS NULL", "unknown_version", "'contract version missing (supported: [1])'"),
    (
        "NOT (json_type(version) IN ('UBIGINT', 'BIGINT', 'DOUBLE') "
        "AND TRY_CAST(version AS DOUBLE) = 1)",
        "unknown_version",
        "'contract version ' || CAST(version AS VARCHAR) || ' is not supported (supported: [1])'",
    ),
    (
        "json_type(type) IS DISTINCT FROM 'VARCHAR' OR type->>'$' NOT IN ('telemetry', 'events')",
        "invalid_envelope",
        "'unknown message type ' || coalesce(CAST(type AS VARCHAR), 'null')",
    ),
    (f"NOT {_is_text('collector')}", "schema", "'collector: a non-empty string is required'"),
    (f"NOT {_is_text('site')}", "schema", "'site: a non-empty string is required'"),
    (f"NOT {_is_text('rack')}", "schema", "'rack: a non-empty string is required'"),
    (
        f"json_type(kind) IS DISTINCT FROM 'VARCHAR' OR kind->>'$' NOT IN {KINDS!r}",
        "schema",
        "'kind: one of gpu, cooling, power, air, facility is required, got ' "
        "|| coalesce(CAST(kind AS VARCHAR), 'nothing')",
    ),
    (
        f"batch_id IS NOT NULL AND NOT {_is_text('batch_id')}",
        "schema",
        "'batch_id: must be a non-empty string'",
    ),
    ("json_type(seq) IS DISTINCT FROM 'UBIGINT'", "schema", "'seq: an integer >= 0 is required'"),
    (
        "NOT (json_type(interval_s) IN ('UBIGINT', 'BIGINT', 'DOUBLE') "
        "AND TRY_CAST(interval_s AS DOUBLE) > 0)",
        "schema",
        "'interval_s: a number > 0 is required'",
    ),
    (f"NOT {_is_int('sent_time_ms')}", "schema", "'sent_time_ms: an integer is required'"),
)


def envelope_sql(source: str) -> str:
    """SELECT one verdict row per message from the raw envelope table `source`.

    status is 'ok' (telemetry to check further), 'events' (decoded by the events path),
    'unparsed' (the bulk reader could not read it: diagnosed one by one) or a reason.
    """
    # the first three rules hold for every message; events are then decoded elsewhere
    rules = [*ENVELOPE_RULES[:3], ("type->>'$' = 'events'", "events", "NULL"), *ENVELOPE_RULES[3:]]
    reason = (
        "CASE WHEN m_null THEN 'unparsed' "
        + " ".join(f"WHEN {cond} THEN '{r}'" for cond, r, _ in rules)
        + " ELSE 'ok' END"
    )
    detail = (
        "CASE WHEN m_null THEN NULL "
        + " ".join(f"WHEN {cond} THEN {d}" for cond, _, d in rules)
        + " ELSE NULL END"
    )
    return f"""
        SELECT i, {reason} AS status, {detail} AS detail,
               coalesce(batch_id->>'$', replace(CAST(uuid() AS VARCHAR), '-', '')) AS batch_id,
               collector->>'$' AS collector, kind->>'$' AS kind, site->>'$' AS site,
               rack->>'$' AS rack, TRY_CAST(seq AS BIGINT) AS seq
        FROM {source}"""


def pair_check_sql(policy: IngestPolicy) -> str:
    """SELECT the (device, metric, kind, site) pairs of `_pairs` that break a rule (code =
    index in SAMPLE_REASONS + 1) or whose device is unknown but accepted (code 0)."""
    reject = policy.checks_devices and policy.unknown_device == "reject"
    unknown = "kd.device_id IS NULL" if policy.checks_devices else "false"
    devices = (
        "LEFT JOIN _known_devices kd ON kd.device_id = p.device_id" if policy.checks_devices else ""
    )
    return f"""
        SELECT * FROM (
            SELECT p.device_id, p.metric, p.kind, p.site, p.n, CASE
                WHEN km.metric IS NULL THEN 3
                WHEN NOT starts_with(p.device_id, p.site || '/') THEN 4
                {"WHEN kd.device_id IS NULL THEN 5" if reject else ""}
                WHEN {unknown} THEN 0 END AS code
            FROM _pairs p
            LEFT JOIN _known_metrics km ON km.kind = p.kind AND km.metric = p.metric
            {devices})
        WHERE code IS NOT NULL"""


def summarize_rejections(counts: Iterable[tuple[str, int]], n_total: int) -> tuple[str, str]:
    """(message reason, detail) for a batch with rejected samples: the reason of the most
    significant rule that fired, and every count."""
    fired = [(r, n) for r, n in counts if n]
    reason = fired[0][0]
    parts = " ".join(f"{r}={n}" for r, n in fired)
    return reason, f"{sum(n for _, n in fired)} of {n_total} samples rejected: {parts}"
