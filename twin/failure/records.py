"""The site's failure and maintenance records: CSV schema, validation, DuckDB table.

`dctwin failure import-records FILE.csv` reads an operator's records into the store's
`failure_records` table; `dctwin failure retrain` turns them into labels.

CSV columns (header row required; names case-insensitive; order free):

| column | required | meaning |
|---|---|---|
| device_id | one of device_id / serial | the twin's device id (`sv1/h1/row1/rk101/n01/gpu3`) |
| serial | one of device_id / serial | the part's serial number |
| time | yes | ISO 8601 with a zone: `2025-03-01T14:05:00Z`, `2025-03-01 15:05+01:00` |
| component | yes | gpu, psu, cdu, crah, node or other |
| action | yes | rma, replace, reseat, repair, inspect, firmware or other |
| failure | no | true/false (yes/no, 1/0); empty: true for rma and replace, else false |
| notes | no | free text |

All or nothing: a file with any bad row imports nothing, and every error names its row
(the CSV line number, header = row 1) and field. Importing the same record twice keeps
one (a record's id is a hash of its fields), so a corrected file can be re-imported.

A record given by serial only names a part, not a slot: `place_by_serial` puts it in
the slot that held that part at the record's time, from the twin's part tenures
(`part_tenures`, twin/parts.py; the serial or the UUID may be given). A part that no
slot ever reported, or that was in no slot at that time, stays unplaced and is reported.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

COMPONENTS = ("gpu", "psu", "cdu", "crah", "node", "other")
ACTIONS = ("rma", "replace", "reseat", "repair", "inspect", "firmware", "other")
FAILURE_ACTIONS = ("rma", "replace")  # a record with no `failure` value: failed if these
REQUIRED = ("time", "component", "action")
COLUMNS = ("device_id", "serial", "time", "component", "action", "failure", "notes")
TRUE = ("true", "yes", "1", "y", "t")
FALSE = ("false", "no", "0", "n", "f")

TABLE = "failure_records"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    record_id VARCHAR PRIMARY KEY,
    device_id VARCHAR,
    serial VARCHAR,
    time TIMESTAMP NOT NULL,          -- UTC
    component VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    failure BOOLEAN NOT NULL,
    notes VARCHAR,
    source VARCHAR,
    imported_at TIMESTAMP NOT NULL
)"""


class RecordsError(ValueError):
    """A records file that cannot be imported; `errors` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(
            f"{len(errors)} error(s), nothing imported:\n"
            + "\n".join(errors[:50])
            + (f"\n… and {len(errors) - 50} more" if len(errors) > 50 else "")
        )
        self.errors = errors


@dataclass(frozen=True)
class Record:
    device_id: str | None
    serial: str | None
    time: datetime  # UTC, naive (the store's convention)
    component: str
    action: str
    failure: bool
    notes: str | None

    @property
    def record_id(self) -> str:
        key = "|".join(
            str(x)
            for x in (
                self.device_id,
                self.serial,
                self.time.isoformat(),
                self.component,
                self.action,
                self.failure,
                self.notes,
            )
        )
        return hashlib.sha256(key.encode()).hexdigest()[:24]


def parse_time(text: str) -> datetime:
    """ISO 8601 with a zone, as naive UTC; ValueError saying why otherwise."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +01:00)")
    return t.astimezone(UTC).replace(tzinfo=None)


def parse_records(text: str) -> list[Record]:
    """Every row of a records CSV, or RecordsError listing every bad row and field."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    errors: list[str] = []
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        errors.append(f"row 1 (header): unknown column(s) {unknown}; known: {list(COLUMNS)}")
    missing = [c for c in REQUIRED if c not in header]
    if "device_id" not in header and "serial" not in header:
        missing.append("device_id or serial")
    if missing:
        errors.append(f"row 1 (header): missing column(s) {missing}")
    if errors:
        raise RecordsError(errors)
    reader.fieldnames = header
    out: list[Record] = []
    for n, raw in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            errors.append(f"row {n}: more fields than the header's {len(header)}")
            continue
        if not any(row.values()):
            continue  # blank line
        bad = len(errors)
        dev, serial = row.get("device_id") or None, row.get("serial") or None
        if dev is None and serial is None:
            errors.append(f"row {n}, device_id: empty, and no serial either")
        t: datetime | None = None
        try:
            t = parse_time(row.get("time", ""))
        except ValueError as exc:
            errors.append(f"row {n}, time: {exc}")
        comp = row.get("component", "").lower()
        if comp not in COMPONENTS:
            errors.append(
                f"row {n}, component: {row.get('component')!r} is not one of {list(COMPONENTS)}"
            )
        action = row.get("action", "").lower()
        if action not in ACTIONS:
            errors.append(f"row {n}, action: {row.get('action')!r} is not one of {list(ACTIONS)}")
        f_text = row.get("failure", "").lower()
        failure = action in FAILURE_ACTIONS
        if f_text in TRUE:
            failure = True
        elif f_text in FALSE:
            failure = False
        elif f_text:
            errors.append(f"row {n}, failure: {row.get('failure')!r} is not true or false")
        if len(errors) == bad and t is not None:
            out.append(Record(dev, serial, t, comp, action, failure, row.get("notes") or None))
    if errors:
        raise RecordsError(errors)
    return out


@dataclass(frozen=True)
class ImportResult:
    rows: int
    new: int
    unknown_devices: list[str]  # device ids with no telemetry in the store (kept)


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA)


def import_records(
    con: duckdb.DuckDBPyConnection, path: Path, now: datetime | None = None
) -> ImportResult:
    """Validate `path` and insert its records (all or nothing; RecordsError names every
    bad row and field). Records already imported are kept once."""
    recs = parse_records(Path(path).read_text(encoding="utf-8"))
    ensure_table(con)
    imported_at = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    before = con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0]
    con.execute("BEGIN")
    try:
        con.executemany(
            f"INSERT OR IGNORE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.record_id,
                    r.device_id,
                    r.serial,
                    r.time,
                    r.component,
                    r.action,
                    r.failure,
                    r.notes,
                    str(path),
                    imported_at,
                )
                for r in recs
            ],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    after = con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0]
    ids = sorted({r.device_id for r in recs if r.device_id})
    known: set[str] = set()
    has_samples = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'samples'"
    ).fetchall()[0]
    if ids and has_samples and has_samples[0]:
        known = {
            d
            for (d,) in con.execute(
                "SELECT DISTINCT device_id FROM samples WHERE device_id IN "
                "(SELECT unnest(?::VARCHAR[]))",
                [ids],
            ).fetchall()
        }
    return ImportResult(
        len(recs),
        int(after[0] if after else 0) - int(before[0] if before else 0),
        [d for d in ids if d not in known],
    )


def load_records(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """All imported records (an empty frame with the columns when none)."""
    if not _has_table(con, TABLE):
        return pl.DataFrame(
            schema={
                "record_id": pl.String,
                "device_id": pl.String,
                "serial": pl.String,
                "time": pl.Datetime("us"),
                "component": pl.String,
                "action": pl.String,
                "failure": pl.Boolean,
                "notes": pl.String,
            }
        )
    return con.sql(
        f"SELECT record_id, device_id, serial, time, component, action, failure, notes "
        f"FROM {TABLE} ORDER BY time, record_id"
    ).pl()


TENURES = "part_tenures"  # twin/parts.py: which part was in which slot, from when to when
PLACE_EXAMPLES = 5  # unplaced records named in a report
_UNPLACED_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String(),
    "serial": pl.String(),
    "time": pl.Datetime("us"),
    "reason": pl.String(),
}


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()[0]
    return bool(row and row[0])


def place_by_serial(
    con: duckdb.DuckDBPyConnection, records: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`records` with the device_id of every serial-only record the part tenures place
    (the slot whose tenure of that part covers the record's time: installed_at <= time
    <= removed_at, the removal itself still the old slot's, as a swap's events are), and
    a `placed_by_serial` flag; and the serial-only records not placed (record_id, serial,
    time, reason). One as-of join per identifier, no loop over records."""
    ident = pl.col("serial").str.strip_chars().str.to_lowercase()
    records = records.with_columns(pl.lit(False).alias("placed_by_serial"))
    wanted = records.filter(pl.col("device_id").is_null() & pl.col("serial").is_not_null())
    if wanted.is_empty():
        return records, pl.DataFrame(schema=_UNPLACED_SCHEMA)
    tenures = (
        con.sql(
            f"SELECT device_id AS slot, uuid, serial, installed_at, removed_at FROM {TENURES}"
        ).pl()
        if _has_table(con, TENURES)
        else pl.DataFrame(
            schema={
                "slot": pl.String,
                "uuid": pl.String,
                "serial": pl.String,
                "installed_at": pl.Datetime("us"),
                "removed_at": pl.Datetime("us"),
            }
        )
    )
    # a part is known by its serial or its UUID (operators copy either off the label)
    keyed = (
        pl.concat(
            [
                tenures.select(ident.alias("key"), "slot", "installed_at", "removed_at"),
                tenures.select(
                    pl.col("uuid").str.strip_chars().str.to_lowercase().alias("key"),
                    "slot",
                    "installed_at",
                    "removed_at",
                ),
            ]
        )
        .drop_nulls("key")
        .unique()
        .with_columns(pl.col("installed_at", "removed_at").cast(pl.Datetime("us")))
        .sort("installed_at")
    )
    left = wanted.select(
        "record_id", "serial", pl.col("time").cast(pl.Datetime("us")), ident.alias("key")
    ).sort("time")
    # the part's newest tenure that began at or before the record; it covers the record
    # unless it ended before it (a part's tenures never overlap)
    j = left.join_asof(
        keyed,
        left_on="time",
        right_on="installed_at",
        by="key",
        strategy="backward",
        check_sortedness=False,
    )
    covered = pl.col("slot").is_not_null() & (
        pl.col("removed_at").is_null() | (pl.col("time") <= pl.col("removed_at"))
    )
    placed = j.filter(covered).select("record_id", pl.col("slot").alias("placed_slot"))
    known = keyed["key"].unique().implode()
    unplaced = j.filter(~covered).select(
        "record_id",
        "serial",
        "time",
        pl.when(~pl.col("key").is_in(known))
        .then(pl.lit("no slot ever reported this serial or UUID"))
        .when(pl.col("slot").is_null())
        .then(pl.lit("in no slot at that time (first reported later)"))
        .otherwise(
            pl.format(
                "in no slot at that time (left {} at {})",
                pl.col("slot"),
                pl.col("removed_at").dt.to_string("%Y-%m-%dT%H:%M:%S"),
            )
        )
        .alias("reason"),
    )
    out = (
        records.join(placed, on="record_id", how="left")
        .with_columns(
            pl.coalesce("device_id", "placed_slot").alias("device_id"),
            pl.col("placed_slot").is_not_null().alias("placed_by_serial"),
        )
        .drop("placed_slot")
    )
    return out, unplaced.sort("time", "record_id")
