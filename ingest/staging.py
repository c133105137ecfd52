"""Bulk decode and validation of one poll's telemetry messages, inside DuckDB.

The envelopes (each message up to its samples), one per line and wrapped as
`{"i": N, "k": colons, "m": <raw>}`, go into a newline-delimited JSON file that DuckDB's
JSON reader parses in C++:

  _env  one row per message, envelope fields as JSON (so types are checked strictly)

The samples become `_rows`, one row per sample: i, kind, rack, site, device_id, metric,
value, read_time_ms, rid (position in the poll). In the live case (every envelope valid)
`ColumnDecoder` builds it as an Arrow table registered on the connection (no Python
object per sample, no copy); otherwise DuckDB's JSON reader reads the whole messages
into a temp table `_rows`, as the verdicts rest on it. Both give the same rows
(tests/test_ingest_columnar.py).

`validate.py` turns them into verdicts, by the wire contract's rules in its order
(`domain.contract.decode` is the reference). Messages the reader cannot parse or vouch
for are judged one by one by that reference decoder (`diagnose`). The outcome is `_acc`
(messages to store, with their sample counts) plus a `Staged` summary for Python: dead
letters, events, counters.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from domain.contract import (
    CONTRACT_TOPICS,
    MAX_ABS_TIME_MS,
    ContractError,
    EventBatch,
    TelemetryBatch,
    decode,
    telemetry_topic,
)
from ingest.sql import one_row
from ingest.validate import (
    CODE,
    SAMPLE_REASONS,
    TELEMETRY_KEYS,
    IngestPolicy,
    envelope_sql,
    install_reference_tables,
    pair_check_sql,
    sample_code_sql,
    summarize_rejections,
)

_ENVELOPE_FIELDS = tuple(k for k in TELEMETRY_KEYS if k != "samples")
# read_time_ms is read as DOUBLE to see fractions (a BIGINT read would round them); every
# integer the contract allows (|t| <= 2**53) is exact as a double.
_SAMPLES_TYPE = (
    "STRUCT(kind VARCHAR, rack VARCHAR, site VARCHAR, samples STRUCT("
    "device_id VARCHAR[], metric VARCHAR[], value DOUBLE[], read_time_ms DOUBLE[]))"
)
_ids = itertools.count()
_PREFIX = "dctwin-ingest-"


def _sweep(directory: str) -> None:
    """Remove staging files of processes that died (a SIGKILL skips every cleanup)."""
    for name in os.listdir(directory):
        if not name.startswith(_PREFIX):
            continue
        try:
            pid = int(name[len(_PREFIX) :].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        except PermissionError:  # alive, someone else's
            continue


@dataclass(slots=True)
class DeadLetter:
    record: Any  # a kafka ConsumerRecord: topic, partition, offset, key, value, headers
    reason: str
    detail: str
    samples_rejected: int = 0
    samples_kept: int = 0  # > 0: a partly bad batch whose valid samples were stored


@dataclass
class Staged:
    messages: int = 0
    accepted: int = 0  # telemetry messages with samples to store (temp table _acc)
    partial: bool = False  # some accepted message has rejected samples (rows need filtering)
    dead: list[DeadLetter] = field(default_factory=list)
    events: list[tuple[Any, EventBatch]] = field(default_factory=list)
    samples_rejected: Counter[str] = field(default_factory=Counter)
    unknown_device_samples: int = 0
    lo_ms: int = 0
    hi_ms: int = 0
    # _pairs holds exactly the (device, metric) aggregates of what will be stored
    pairs_valid: bool = False
    row_filter: str | None = None  # SQL over `r` (_rows) keeping the valid samples
    columnar: bool = False  # the samples were decoded by ColumnDecoder, not the JSON reader


def diagnose(
    rec: Any, window: tuple[int, int] | None = None
) -> tuple[str, str, TelemetryBatch | EventBatch | None]:
    """Judge one message with the reference decoder (slow, exact): for what the bulk reader
    could not read or vouch for. `rec` is a consumer record (value, topic, key)."""
    try:
        batch = decode(rec.value, topic=rec.topic, key=rec.key, read_window_ms=window)
    except ContractError as err:
        return err.reason, err.detail, None
    return "ok", "", batch


class Stager:
    """Stages polls on one DuckDB connection (its temp tables are per connection)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        policy: IngestPolicy,
        spool_dir: str | None = None,
        columnar: bool = True,  # False: every poll's samples through the JSON reader
    ) -> None:
        self.con = con
        self.policy = policy
        install_reference_tables(con, policy)
        self.columns = ColumnDecoder() if columnar else None
        base = spool_dir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        base = base or tempfile.gettempdir()
        _sweep(base)
        self.path = os.path.join(base, f"{_PREFIX}{os.getpid()}-{next(_ids)}.ndjson")

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _read_json(self, columns: str) -> str:
        size = self.policy.max_message_bytes + 4096
        return (
            f"read_json('{self.path}', format='newline_delimited', ignore_errors=true, "
            f"maximum_object_size={size}, columns={{i: 'INTEGER', k: 'INTEGER', m: '{columns}'}})"
        )

    def _read_envelopes(self, lines: list[bytes]) -> None:
        with open(self.path, "wb") as f:
            f.write(b"\n".join(lines))
        # The envelope as JSON, so types are checked strictly and every key is seen
        # (duplicates, unknown fields). `k`: colons in the cut-off samples part (5 when it
        # is exactly "samples" and its four keys); `colons`: in what was read.
        fields = ", ".join(f"m->'{f}' AS {f}" for f in _ENVELOPE_FIELDS)
        self.con.execute(f"""CREATE OR REPLACE TEMP TABLE _env AS
            SELECT i, k, m IS NULL OR json_type(m) <> 'OBJECT' AS m_null, m,
                   CASE WHEN k IS NULL THEN json_keys(m)
                        ELSE list_append(json_keys(m), 'samples') END AS keys,
                   coalesce(json_keys(m, '$.samples'), []) AS skeys,
                   length(m::VARCHAR) - length(replace(m::VARCHAR, ':', '')) AS colons,
                   {fields}
            FROM {self._read_json("JSON")}""")
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE _msg AS {envelope_sql('_env')} WHERE i IS NOT NULL"
        )

    def stage(self, records: list[Any], now_ms: int) -> Staged:
        p = self.policy
        out = Staged(messages=len(records))
        out.lo_ms = now_ms - int(p.max_past_s * 1000)
        out.hi_ms = now_ms + int(p.max_future_s * 1000)
        window = (out.lo_ms, out.hi_ms)
        lines: list[bytes] = []
        env_lines: list[bytes] = []
        staged: list[Any] = []
        values: list[bytes] = []  # as staged (a message with a newline re-encoded)
        cuts: list[tuple[int, int]] = []  # per message: where ,"samples": is, colons after
        for rec in records:  # per message, never per sample
            value = rec.value
            if not value:
                out.dead.append(DeadLetter(rec, "invalid_json", "empty message value"))
                continue
            if len(value) > p.max_message_bytes:
                out.dead.append(
                    DeadLetter(
                        rec,
                        "too_large",
                        f"{len(value)} bytes is over the {p.max_message_bytes} byte limit",
                    )
                )
                continue
            if b"\n" in value or b"\r" in value:  # one message per line: re-encode compactly
                # (rare) judged first: re-encoding would drop a duplicate key unseen
                reason, detail, batch = diagnose(rec, window)
                if isinstance(batch, EventBatch):
                    out.events.append((rec, batch))
                    continue
                try:
                    if reason not in ("ok", *SAMPLE_REASONS):
                        raise ValueError(reason)
                    value = orjson.dumps(orjson.loads(value))
                except ValueError:  # orjson's JSONDecodeError too (a NaN literal)
                    out.dead.append(DeadLetter(rec, reason, detail))
                    continue
            i = len(staged)
            lines.append(b'{"i":%d,"m":%b}' % (i, value))
            values.append(value)
            # The envelope alone, to read it without parsing the samples: collectors put
            # "samples" last. `,"samples":` unescaped can only be a key; a message for which
            # the cut is wrong just gets its envelope read again in full (below).
            cut = value.rfind(b',"samples":')
            cuts.append((cut, value.count(b":", cut) if cut > 0 else -1))
            env_lines.append(
                b'{"i":%d,"k":%d,"m":%b}}' % (i, cuts[-1][1], value[:cut]) if cut > 0 else lines[-1]
            )
            staged.append(rec)
        if not staged:
            return out
        con = self.con
        self._read_envelopes(env_lines)
        retry = [
            i
            for i, status in con.execute("SELECT i, status FROM _msg").fetchall()
            if status not in ("ok", "events")
        ]
        retry += sorted(
            set(range(len(staged))) - {i for (i,) in con.execute("SELECT i FROM _msg").fetchall()}
        )
        retry = [i for i in retry if env_lines[i] is not lines[i]]
        if retry:  # the cut envelope was not conclusive: read those in full
            con.execute("CREATE OR REPLACE TEMP TABLE _msg_cut AS SELECT * FROM _msg")
            self._read_envelopes([lines[i] for i in retry])
            # a line the full read cannot parse keeps no verdict: it is diagnosed (below)
            con.execute(
                "INSERT INTO _msg SELECT * FROM _msg_cut WHERE NOT list_contains($retry, i)",
                {"retry": retry},
            )
        del env_lines
        self._judge_suspects(staged, window)
        # Every message an ordinary batch (the live case): decode its sample columns
        # straight to Arrow (rows_arrow), no file and no JSON pass in DuckDB. Anything
        # unusual in the poll takes the JSON reader below, which the verdicts were built on.
        rows = None
        ordinary = one_row(con.execute("SELECT count(*) FILTER (WHERE status <> 'ok') FROM _msg"))
        if self.columns is not None and ordinary[0] == 0:
            envelopes = con.execute("SELECT kind, rack, site FROM _msg ORDER BY i").fetchall()
            # one row per staged message (i = 0..n-1) or the decoder declines
            rows = self.columns.decode(values, cuts, envelopes)
        if rows is not None:
            out.columnar = True
            del lines
            # no copy: DuckDB scans the Arrow columns in place (`rid` stands in for rowid)
            if con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = '_rows' AND temporary"
            ).fetchall() != [(0,)]:
                con.execute("DROP TABLE _rows").fetchall()  # the JSON reader's, of an earlier poll
            con.register("_rows", rows.append_column("rid", pa.array(np.arange(len(rows)))))
            self.close()  # the envelopes' file: a poll's JSON should not sit in /dev/shm
            del rows, values
        else:
            unregister_rows(con)
            with open(self.path, "wb") as f:
                f.write(b"\n".join(lines))
            del lines
            # kind, rack and site ride along (short strings): no join per sample later on.
            # No filter here: a scan keeps poll order (a semi-join would not), and per
            # series rowid order must follow read order. Rows of messages that fail stay
            # out later. A read time that is not an integer within the contract's bound
            # becomes NULL, so its message is judged by the reference decoder (schema).
            con.execute(f"""CREATE OR REPLACE TEMP TABLE _rows AS
                SELECT i, kind, rack, site, device_id, metric, value,
                       CASE WHEN t = trunc(t) AND abs(t) <= {MAX_ABS_TIME_MS}
                            THEN CAST(t AS BIGINT) END AS read_time_ms
                FROM (SELECT i, m.kind AS kind, m.rack AS rack, m.site AS site,
                             unnest(m.samples.device_id) AS device_id,
                             unnest(m.samples.metric) AS metric,
                             unnest(m.samples.value) AS value,
                             unnest(m.samples.read_time_ms) AS t
                      FROM {self._read_json(_SAMPLES_TYPE)})""")
            self.close()  # read; a poll's JSON should not sit in /dev/shm until the next one
        in_window = f"read_time_ms BETWEEN {out.lo_ms} AND {out.hi_ms}"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _agg AS
            SELECT i, count(*) AS n,
                   count(*) FILTER (WHERE device_id IS NULL OR metric IS NULL OR value IS NULL
                                    OR read_time_ms IS NULL) AS n_null,
                   count(*) FILTER (WHERE NOT isfinite(value)) AS n_non_finite,
                   count(*) FILTER (WHERE isfinite(value) AND NOT ({in_window})) AS n_skew,
                   min(device_id) AS dmin, max(device_id) AS dmax,
                   min(read_time_ms) AS tmin, max(read_time_ms) AS tmax
            FROM _rows GROUP BY i""")
        # Metric and device rules depend on (device, metric, kind, site, rack) only: check
        # each distinct pair once (tens of thousands) instead of every sample (a million);
        # its value range says whether any of its samples can be out of range.
        not_ok = one_row(con.execute("SELECT count(*) FROM _msg WHERE status <> 'ok'"))[0]
        only_ok = " AND i IN (SELECT i FROM _msg WHERE status = 'ok')" if not_ok else ""
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _pairs AS
            SELECT device_id, metric, kind, site, rack, count(*) AS n, min(read_time_ms) AS t0,
                   max(read_time_ms) AS t1, arg_max(value, read_time_ms) AS v1,
                   min(value) AS vmin, max(value) AS vmax
            FROM _rows WHERE isfinite(value) AND {in_window}{only_ok} GROUP BY ALL""")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _badpairs AS {pair_check_sql(p)}")
        n_bad_pairs, unknown = one_row(
            con.execute(
                "SELECT count(*) FILTER (WHERE unknown_metric OR out_of_range OR dev_code > 0 "
                "OR suspect), "
                "coalesce(sum(n) FILTER (WHERE dev_code = 0 AND NOT unknown_metric), 0) "
                "FROM _badpairs"
            )
        )
        by_pair: dict[int, dict[int, int]] = {}
        suspects: set[int] = set()
        if n_bad_pairs:  # rare: which messages carry those pairs, and which of their samples
            suspects = {
                i
                for (i,) in con.execute("""SELECT DISTINCT r.i FROM _rows r
                    JOIN _badpairs b USING (device_id, metric, kind, site, rack)
                    WHERE b.suspect""").fetchall()
            }
            for i, code, n in con.execute(f"""
                    SELECT i, code, count(*) FROM (
                        SELECT r.i, {sample_code_sql("r", "b")} AS code FROM _rows r
                        JOIN _badpairs b USING (device_id, metric, kind, site, rack)
                        WHERE isfinite(r.value) AND r.{in_window})
                    WHERE code IS NOT NULL GROUP BY ALL""").fetchall():
                by_pair.setdefault(i, {})[code] = n
        verdicts = con.execute("""
            SELECT m.i, m.status, m.detail, m.kind, m.rack, a.n, a.n_null, a.n_non_finite,
                   a.n_skew
            FROM _msg m LEFT JOIN _agg a USING (i) ORDER BY m.i""").fetchall()
        accepted: list[int] = []
        n_bad: list[int] = []
        seen: set[int] = set()
        excluded = False  # a staged message (or part of one) is not stored
        for i, status, detail, kind, rack, n, n_null, n_non_finite, n_skew in verdicts:
            seen.add(i)
            rec = staged[i]
            if status == "ok":
                codes = by_pair.get(i, {})
                by_reason = [
                    n_non_finite or 0,
                    n_skew or 0,
                    *(codes.get(c, 0) for c in range(CODE["unknown_metric"], len(CODE) + 1)),
                ]
                # the contract's order: schema, wrong_topic, wrong_key, then sample rules
                # (rare) the reference decoder judges a suspect, and a batch with non-finite
                # or skewed samples (_pairs leaves those out: their strings are unchecked);
                # its sample rules are ours
                unsure = i in suspects or n_non_finite or n_skew
                verdict = diagnose(rec, window) if unsure else ("ok", "", None)
                if verdict[0] not in ("ok", *SAMPLE_REASONS):
                    excluded = True
                    out.dead.append(DeadLetter(rec, verdict[0], verdict[1]))
                elif n is None or n_null:  # no samples came out, or some unreadable: exact
                    excluded = True
                    self._dead_or_event(out, rec, window)
                elif misplaced := _misplaced(rec, kind, rack):
                    excluded = True
                    out.dead.append(DeadLetter(rec, *misplaced))
                elif rejected := sum(by_reason):
                    excluded = True
                    reason, why = summarize_rejections(
                        zip(SAMPLE_REASONS, by_reason, strict=True), n
                    )
                    keep = p.partial == "keep_valid" and rejected < n
                    out.dead.append(
                        DeadLetter(rec, reason, why, rejected, n - rejected if keep else 0)
                    )
                    out.samples_rejected.update(
                        {r: k for r, k in zip(SAMPLE_REASONS, by_reason, strict=True) if k}
                    )
                    if not keep:
                        out.samples_rejected["batch_rejected"] += n - rejected
                        continue
                    out.partial = True
                    accepted.append(i)
                    n_bad.append(rejected)
                else:
                    accepted.append(i)
                    n_bad.append(0)
            elif status in ("events", "unparsed"):
                self._dead_or_event(out, rec, window)
            else:
                out.dead.append(DeadLetter(rec, status, detail or status))
        for i in range(len(staged)):  # lines the JSON reader could not read at all
            if i not in seen:
                self._dead_or_event(out, staged[i], window)
        # Counted over pairs: exact unless a rejected message carries an unknown device
        out.unknown_device_samples = int(unknown)
        with_rows = one_row(con.execute("SELECT count(*) FROM _agg"))[0]
        out.pairs_valid = not excluded and with_rows == len(accepted)
        out.row_filter = (
            f"isfinite(r.value) AND r.{in_window} AND NOT EXISTS (SELECT 1 FROM _badpairs b "
            "WHERE b.device_id = r.device_id AND b.metric = r.metric AND b.kind = r.kind "
            f"AND b.site = r.site AND b.rack = r.rack AND {sample_code_sql('r', 'b')} > 0)"
            if out.partial
            else None
        )
        acc = pa.table(  # noqa: F841 - referenced by SQL below
            {
                "i": pa.array(accepted, pa.int32()),
                "n_bad": pa.array(n_bad, pa.int64()),
                "topic": pa.array([staged[i].topic for i in accepted], pa.string()),
                "partition": pa.array([staged[i].partition for i in accepted], pa.int32()),
            }
        )
        con.execute("""CREATE OR REPLACE TEMP TABLE _acc AS
            SELECT m.i, m.batch_id, m.collector, m.seq, m.kind, m.rack, m.site, a.n, acc.n_bad,
                   a.dmin, a.dmax, a.tmin, a.tmax, acc.topic, acc.partition
            FROM acc JOIN _msg m USING (i) JOIN _agg a USING (i)""")
        out.accepted = len(accepted)
        return out

    def _judge_suspects(self, staged: list[Any], window: tuple[int, int]) -> None:
        """Messages the bulk reader cannot vouch for (a nested object, a colon in a string)
        get the reference decoder's verdict; those it finds valid, or bad only in samples,
        go on through the bulk path (which then reads them exactly: no key is repeated)."""
        suspects = self.con.execute("SELECT i FROM _msg WHERE status = 'suspect'").fetchall()
        if not suspects:
            return
        verdicts = []
        for (i,) in suspects:
            reason, detail, batch = diagnose(staged[i], window)
            if reason in ("ok", *SAMPLE_REASONS):
                reason, detail = ("events" if isinstance(batch, EventBatch) else "ok"), ""
            verdicts.append((i, reason, detail))
        judged = pa.table(  # noqa: F841 - referenced by SQL below
            {
                "i": pa.array([v[0] for v in verdicts], pa.int32()),
                "status": [v[1] for v in verdicts],
                "detail": [v[2] for v in verdicts],
            }
        )
        self.con.execute("""UPDATE _msg SET status = j.status, detail = j.detail
                            FROM judged j WHERE _msg.i = j.i""")

    def _dead_or_event(self, out: Staged, rec: Any, window: tuple[int, int]) -> None:
        reason, detail, batch = diagnose(rec, window)
        if reason == "ok" and isinstance(batch, EventBatch):
            out.events.append((rec, batch))
        elif reason == "ok":  # valid to pydantic, unreadable in bulk (e.g. a huge integer)
            out.dead.append(
                DeadLetter(
                    rec,
                    "schema",
                    "the bulk decoder could not read this batch's fields with their contract types",
                )
            )
        else:
            out.dead.append(DeadLetter(rec, reason, detail))


class ColumnDecoder:
    """Sample columns of ordinary telemetry messages, straight to Arrow.

    `decode` returns the `_rows` table the JSON reader would build, or None when any
    message is not ordinary, so that the JSON reader (on which the verdicts rest) reads
    the poll instead. Ordinary, and so read identically by both: the four sample keys
    only, lists of one length, strings for ids and metrics, JSON numbers for values
    (numpy makes a float64 array of them, as DuckDB's DOUBLE read does) and integers
    within the contract's bound for read times. NaN, Infinity and overflowing numbers
    are refused by orjson.

    Only the numbers are parsed per message. The device-id and metric lists repeat from
    one interval to the next (a rack's layout), so each list is looked up by its raw
    bytes and mapped to dictionary codes the first time it is seen; no Python string is
    made per sample. The raw bytes of each sample column are cut out of the message only
    when the cut is certain (`_sample_columns`); otherwise the message is parsed whole.
    """

    # bounds on what the caches hold (cleared between polls when exceeded)
    MAX_LISTS = 20_000
    MAX_STRINGS = 1_000_000

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._strings: list[str] = []
        self._lists: dict[bytes, np.ndarray] = {}

    def _encode(self, raw: bytes, parsed: Any = None) -> np.ndarray | None:
        """Dictionary codes of a JSON list of strings (`raw`, or already `parsed`)."""
        codes = self._lists.get(raw) if parsed is None else None
        if codes is None:
            items = orjson.loads(raw) if parsed is None else parsed
            if type(items) is not list or not all(type(x) is str for x in items):
                return None
            table = self._codes
            for x in items:  # once per distinct list
                if x not in table:
                    table[x] = len(self._strings)
                    self._strings.append(x)
            codes = np.fromiter((table[x] for x in items), np.int32, len(items))
            if parsed is None:
                self._lists[raw] = codes
        return codes

    def decode(
        self,
        values: list[bytes],
        cuts: list[tuple[int, int]],
        envelopes: list[tuple[str, str, str]],
    ) -> pa.Table | None:
        """`values`: the messages; `cuts`: (where `,"samples":` is, colons from there on)
        per message; `envelopes`: their (kind, rack, site), already checked."""
        if len(envelopes) != len(values):  # a line the envelope reader could not read
            return None
        if len(self._lists) > self.MAX_LISTS or len(self._strings) > self.MAX_STRINGS:
            self.__init__()  # type: ignore[misc]
        devices: list[np.ndarray] = []
        metrics: list[np.ndarray] = []
        nums: list[Any] = []
        times: list[Any] = []
        counts: list[int] = []
        try:
            for v, (at, colons) in zip(values, cuts, strict=True):  # per message
                cut = _sample_columns(v, at, colons)
                if cut is not None:
                    d_raw, m_raw, x_raw, t_raw = cut  # per sample: only C (orjson, numpy)
                    dc, mc = self._encode(d_raw), self._encode(m_raw)
                    x, t = orjson.loads(x_raw), orjson.loads(t_raw)
                else:  # an unusual layout: parse the whole message
                    s = orjson.loads(v)["samples"]
                    if type(s) is not dict or len(s) != 4:
                        return None
                    dc = self._encode(b"", s["device_id"])
                    mc = self._encode(b"", s["metric"])
                    x, t = s["value"], s["read_time_ms"]
                if dc is None or mc is None or type(x) is not list or type(t) is not list:
                    return None
                n = len(dc)
                if len(mc) != n or len(x) != n or len(t) != n:
                    return None
                devices.append(dc)
                metrics.append(mc)
                nums += x
                times += t
                counts.append(n)
            if not nums:
                return None
            value = np.array(nums)
            if value.dtype == np.int64:
                value = value.astype(np.float64)
            elif value.dtype != np.float64:
                return None  # strings, nulls, booleans only: the JSON reader's business
            read_time = np.array(times)
            if read_time.dtype != np.int64 or np.abs(read_time).max() > MAX_ABS_TIME_MS:
                return None
            env = [x for e in envelopes for x in e]
            dictionary = pa.array(self._strings + env, pa.string())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError):
            return None
        except pa.ArrowException:
            return None
        count = np.array(counts)
        env_codes = np.repeat(
            np.arange(len(self._strings), len(dictionary), 3, dtype=np.int32), count
        )

        def col(codes: np.ndarray) -> pa.DictionaryArray:
            return pa.DictionaryArray.from_arrays(pa.array(codes), dictionary)

        return pa.table(
            {
                "i": pa.array(np.repeat(np.arange(len(values), dtype=np.int32), count)),
                "kind": col(env_codes),
                "rack": col(env_codes + 1),
                "site": col(env_codes + 2),
                "device_id": col(np.concatenate(devices)),
                "metric": col(np.concatenate(metrics)),
                "value": pa.array(value),
                "read_time_ms": pa.array(read_time),
            }
        )


_SAMPLE_KEYS = (b'"device_id":', b'"metric":', b'"value":', b'"read_time_ms":')


def _sample_columns(value: bytes, start: int, colons: int) -> tuple[bytes, ...] | None:
    """The raw JSON of the four sample columns, when the cut is certain, else None.

    `start`: where `,"samples":` is (its last occurrence), `colons`: the colons from
    there on (both computed by `Stager.stage` already). The message must then read
    `<envelope>,"samples":{"K1":C1,"K2":C2,"K3":C3,"K4":C4}}` with K1..K4 the four sample
    keys in any order: each found key follows the brace or a comma that ends the column
    before it, and the part holds exactly five colons (samples' and the four keys'), so
    no string in it holds a colon or looks like a key, and nothing is nested. The
    envelope was read as valid JSON and the decoder parses each column C as one JSON
    value, so a message it accepts is valid JSON with exactly these columns."""
    if colons != 5 or start < 0 or value[start + 11 : start + 12] != b"{":
        return None
    body = value.rstrip()
    if not body.endswith(b"}}"):
        return None
    cuts = []
    at = start
    for key in _SAMPLE_KEYS:  # in the collectors' order, each search goes on from the last
        found = value.find(key, at)
        at = found if found >= 0 else value.find(key, start)
        if at < 0:
            return None
        cuts.append((at, at + len(key)))
    starts = sorted(a for a, _ in cuts)
    # the first key right after the brace, every other one right after a comma
    if starts[0] != start + 12 or any(value[a - 1] != 44 for a in starts[1:]):  # 44: ","
        return None
    # column k runs from its key's colon to the comma before the next key, or to the end
    nxt = {a: starts[n + 1] if n < 3 else len(body) - 1 for n, a in enumerate(starts)}
    return tuple(value[c : nxt[a] - 1] for a, c in cuts)


def unregister_rows(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the Arrow view `_rows` of a columnar poll, before a temp table takes the name."""
    if con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = '_rows' AND temporary"
    ).fetchall() != [(0,)]:
        con.unregister("_rows")


def _misplaced(rec: Any, kind: str, rack: str) -> tuple[str, str] | None:
    """(wrong_topic | wrong_key, detail) as `contract.decode` finds them, or None."""
    want = telemetry_topic(kind)
    if rec.topic in CONTRACT_TOPICS and rec.topic != want:
        return "wrong_topic", f"a {kind} batch belongs on {want}, not on {rec.topic}"
    if rec.key is not None and rec.key != rack.encode():
        return "wrong_key", f"Kafka key {rec.key[:80]!r} is not the message's rack {rack!r}"
    return None
