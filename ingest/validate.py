"""Ingest validation policy and the vectorized rules that apply it.

Everything here runs inside DuckDB over a whole poll at once: the envelope rules over one
row per message, the sample rules over one row per sample. Python only sees the verdicts
(one row per message). See docs/ingest.md for the policy choices.

Reasons a message is dead-lettered (the `dctwin-dlq-reason` header and the stats key):

message-level (nothing from the message is stored):
  too_large, not_utf8, invalid_json, duplicate_key, invalid_envelope, unknown_version,
  schema, wrong_topic, wrong_key, empty_batch
sample-level (with partial="keep_valid" the other samples of the batch are stored):
  non_finite, timestamp_skew, unknown_metric, out_of_range, bad_device_id, unknown_device

The wire contract (domain/contract.py `decode`) is the reference: for every message these
rules give its verdict and reason (tests/test_fastpath_contract_property.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import pyarrow as pa

from domain.contract import (
    CONTROL_CHARS,
    FACILITY_KEY,
    MAX_DEVICE_ID_CHARS,
    MAX_NAME_CHARS,
    RANGES,
    SAMPLE_RULES,
    Kind,
)

# Order is precedence: a sample that breaks several rules is counted under the first.
# The contract's rules, then the one only a site model can check.
SAMPLE_REASONS = (*SAMPLE_RULES, "unknown_device")
CODE = {r: k + 1 for k, r in enumerate(SAMPLE_REASONS)}  # rule -> code in SQL
TELEMETRY_KEYS = (
    "version",
    "type",
    "batch_id",
    "collector",
    "kind",
    "site",
    "rack",
    "seq",
    "interval_s",
    "sent_time_ms",
    "samples",
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
            "kind": [k.value for k, ranges in RANGES.items() for _ in ranges],
            "metric": [m for ranges in RANGES.values() for m in ranges],
            "lo": [lo for ranges in RANGES.values() for lo, _ in ranges.values()],
            "hi": [hi for ranges in RANGES.values() for _, hi in ranges.values()],
        }
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _known_metrics AS SELECT * FROM known_metrics")
    devices = sorted(policy.known_devices or ())
    known_devices = pa.table({"device_id": pa.array(devices, pa.string())})  # noqa: F841
    con.execute("CREATE OR REPLACE TEMP TABLE _known_devices AS SELECT * FROM known_devices")


def _is_text(col: str) -> str:
    """A string the contract's `Name` accepts: 1..MAX_NAME_CHARS, no control characters."""
    return (
        f"(json_type({col}) IS NOT DISTINCT FROM 'VARCHAR' "
        f"AND length({col}->>'$') BETWEEN 1 AND {MAX_NAME_CHARS} "
        f"AND NOT regexp_matches({col}->>'$', '{CONTROL_CHARS}'))"
    )


def _is_int(col: str) -> str:
    """A JSON integer that fits int64 (what the contract's StrictInt fields accept)."""
    return (
        f"coalesce(json_type({col}) IN ('UBIGINT', 'BIGINT') "
        f"AND TRY_CAST({col} AS BIGINT) IS NOT NULL, false)"
    )


KINDS = tuple(k.value for k in Kind)


def _name_detail(field: str) -> str:
    return f"'{field}: a string of 1 to {MAX_NAME_CHARS} characters, no control characters'"


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
    (
        f"NOT list_has_all({list(TELEMETRY_KEYS)!r}, keys)",
        "schema",
        "'unknown fields: ' || array_to_string(list_filter(keys, lambda k: k NOT IN "
        f"{TELEMETRY_KEYS!r}), ', ')",
    ),
    (f"NOT {_is_text('collector')}", "schema", _name_detail("collector")),
    (f"NOT {_is_text('site')}", "schema", _name_detail("site")),
    (f"NOT {_is_text('rack')}", "schema", _name_detail("rack")),
    (
        f"json_type(kind) IS DISTINCT FROM 'VARCHAR' OR kind->>'$' NOT IN {KINDS!r}",
        "schema",
        "'kind: one of gpu, cooling, power, air, facility is required, got ' "
        "|| coalesce(CAST(kind AS VARCHAR), 'nothing')",
    ),
    (
        f"batch_id IS NOT NULL AND NOT {_is_text('batch_id')}",
        "schema",
        _name_detail("batch_id"),
    ),
    (
        f"json_type(seq) IS DISTINCT FROM 'UBIGINT' OR NOT {_is_int('seq')}",
        "schema",
        "'seq: an integer >= 0 is required'",
    ),
    (
        "NOT coalesce(json_type(interval_s) IN ('UBIGINT', 'BIGINT', 'DOUBLE') "
        "AND isfinite(TRY_CAST(interval_s AS DOUBLE)) AND TRY_CAST(interval_s AS DOUBLE) > 0, "
        "false)",
        "schema",
        "'interval_s: a number > 0 is required'",
    ),
    (f"NOT {_is_int('sent_time_ms')}", "schema", "'sent_time_ms: an integer is required'"),
)


# Before the field rules: what the bulk reader cannot vouch for. 'suspect': the message
# has keys or colons the envelope/sample reads do not account for (nested objects, a colon
# inside a string): the reference decoder judges it (staging.py). Otherwise every key was
# seen, so a repeated one is certain.
SHAPE_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "colons <> len(json_keys(m)) + len(skeys) OR coalesce(k, 5) <> 5",
        "suspect",
        "NULL",
    ),
    (
        "len(list_distinct(keys)) <> len(keys) OR len(list_distinct(skeys)) <> len(skeys)",
        "duplicate_key",
        "'a key appears more than once'",
    ),
)


def envelope_sql(source: str) -> str:
    """SELECT one verdict row per message from the raw envelope table `source`.

    status is 'ok' (telemetry to check further), 'events' (decoded by the events path),
    'unparsed' (the bulk reader could not read it: diagnosed one by one), 'suspect' (to be
    judged by the reference decoder) or a reason.
    """
    # the first three rules hold for every message; events are then decoded elsewhere
    rules = [
        *SHAPE_RULES,
        *ENVELOPE_RULES[:3],
        ("type->>'$' = 'events'", "events", "NULL"),
        *ENVELOPE_RULES[3:],
    ]
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


def _bad_device_sql(p: str) -> str:
    """SQL true when device id `{p}.device_id` breaks contract.device_id_problem (cheapest
    tests first: most ids pass them all, and the regex runs on what is left)."""
    d = f"{p}.device_id"
    in_rack = (
        f"(contains({d} || '/', '/' || {p}.rack || '/') OR ({p}.rack = '{FACILITY_KEY}' "
        f"AND length({d}) - length(replace({d}, '/', '')) < 4))"
    )
    return (
        f"(length({d}) > {MAX_DEVICE_ID_CHARS} OR NOT starts_with({d}, {p}.site || '/') "
        f"OR NOT {in_rack} OR regexp_matches({d}, '{CONTROL_CHARS}'))"
    )


def _not_a_string_sql(col: str) -> str:
    """True for what the typed reader makes of a JSON array, object, number or boolean in a
    string array ('[1]', '7', 'true'): the contract refuses those (schema), so the reference
    decoder judges the message (a real string that looks like that is merely rarer). Only
    asked of ids that are bad anyway and of unknown metrics: neither looks like that."""
    return (
        f"(left({col}, 1) IN ('[', '{{') OR {col} IN ('true', 'false') "
        f"OR TRY_CAST({col} AS DOUBLE) IS NOT NULL)"
    )


def pair_check_sql(policy: IngestPolicy) -> str:
    """SELECT the (device, metric, kind, site, rack) pairs of `_pairs` that break a rule, or
    whose device is unknown but accepted (dev_code 0), or that are `suspect` (see
    _not_a_string_sql). Metric and device rules hold for a whole pair; the range rule per
    sample: `lo`/`hi` come along for `sample_code_sql`."""
    reject = policy.checks_devices and policy.unknown_device == "reject"
    unknown = "kd.device_id IS NULL" if policy.checks_devices else "false"
    devices = (
        "LEFT JOIN _known_devices kd ON kd.device_id = p.device_id" if policy.checks_devices else ""
    )
    refuse_unknown = f"WHEN kd.device_id IS NULL THEN {CODE['unknown_device']}" if reject else ""
    return f"""
        SELECT * FROM (
            SELECT p.device_id, p.metric, p.kind, p.site, p.rack, p.n,
                   km.metric IS NULL AS unknown_metric, km.lo, km.hi,
                   p.vmin < km.lo OR p.vmax > km.hi AS out_of_range,
                   CASE WHEN bad_device AND {_not_a_string_sql("p.device_id")} THEN true
                        WHEN km.metric IS NULL THEN {_not_a_string_sql("p.metric")}
                        ELSE false END AS suspect,
                   CASE WHEN bad_device THEN {CODE["bad_device_id"]}
                        {refuse_unknown}
                        WHEN {unknown} THEN 0 END AS dev_code
            FROM (SELECT *, {_bad_device_sql("_pairs")} AS bad_device FROM _pairs) p
            LEFT JOIN _known_metrics km ON km.kind = p.kind AND km.metric = p.metric
            {devices})
        WHERE unknown_metric OR out_of_range OR dev_code IS NOT NULL OR suspect"""


def sample_code_sql(r: str, b: str) -> str:
    """Code of the first pair-level rule sample `{r}` of bad pair `{b}` breaks, or NULL."""
    return (
        f"CASE WHEN {b}.unknown_metric THEN {CODE['unknown_metric']} "
        f"WHEN NOT {r}.value BETWEEN {b}.lo AND {b}.hi THEN {CODE['out_of_range']} "
        f"WHEN {b}.dev_code > 0 THEN {b}.dev_code END"
    )


def summarize_rejections(counts: Iterable[tuple[str, int]], n_total: int) -> tuple[str, str]:
    """(message reason, detail) for a batch with rejected samples: the reason of the most
    significant rule that fired, and every count."""
    fired = [(r, n) for r, n in counts if n]
    reason = fired[0][0]
    parts = " ".join(f"{r}={n}" for r, n in fired)
    return reason, f"{sum(n for _, n in fired)} of {n_total} samples rejected: {parts}"
