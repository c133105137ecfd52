"""`dctwin anomaly score`: score any time series in a CSV file, streaming and causal.

The file is read in blocks; each block goes through the streaming detector with the
state carried from the block before, so memory stays bounded and the score of a row
never depends on a row after it. Rows are written back unchanged (every column kept, in
order) with an ``anomaly_score`` column appended (or replaced, if the input has one).

- Timestamps: ISO 8601 (``2024-05-01T12:00:00Z``, a space instead of ``T``, offsets,
  fractions; naive means UTC) or numbers (Unix seconds). The delimiter is ``,``, ``;`` or
  tab, whichever the header line uses.
- Real-world policy (issue #20, part anom-real), each counted and reported on stderr,
  never an exit:

  - **Out of order** (a clock stepping back): the row is scored in file order as if it
    came at the latest time seen so far. Re-sorting would need the whole file (or make
    scores depend on rows after them); a logger's clock step is a property of the
    logger, not of the signal.
  - **Exact duplicates** (same timestamp and value as the reading before): a copy, not a
    second reading. It gets the first copy's score and does not update the state.
    Same timestamp with a different value: separate readings at the same time.
  - **Missing** (empty, ``nan``, ``NA``, ``null``): the row is scored by how unusual a run
    of missing readings that long is for this series (the product of its predictive
    missing rate over the run, as the fleet's no-data component does).
  - **Gaps** longer than ``GAP_INTERVALS`` sampling intervals are counted; the statistics
    decay across a gap, and after a long one the series warms up again.
  - A constant series scores 0 (no variation is expected, none is seen).
  - Fewer readings than the warm-up: no scores, and stderr says so.

- Rows in the warm-up (the first ``warmup`` points) get an empty score.
- Anything else that is not a number, or a timestamp that is not one, stops with an
  error naming the line; ``skip_invalid`` instead leaves such rows unscored and reports
  each on stderr.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import numpy as np
import polars as pl

from twin.anomaly.calibration import p_to_score
from twin.anomaly.scan import ew_scan
from twin.anomaly.streaming import DetectorParams, DetectorState, score_series

MISSING = frozenset({"", "nan", "na", "n/a", "null", "none"})
SCORE_COLUMN = "anomaly_score"
BLOCK_ROWS = 65_536


class CsvInputError(ValueError):
    """Bad input, with the 1-based line number of the file it was found on."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass
class ScoreSummary:
    rows: int = 0
    scored: int = 0
    missing: int = 0
    skipped: int = 0
    max_score: float = 0.0
    above_threshold: int = 0
    # real-world policy counts (issue #20, part anom-real)
    out_of_order: int = 0
    duplicates: int = 0
    same_time: int = 0
    gaps: int = 0
    longest_gap_s: float = 0.0
    readings: int = 0
    warmup_points: float = 0.0

    def notes(self) -> list[str]:
        """What the real-world policy did, one line each (for stderr)."""
        out = []
        if self.out_of_order:
            out.append(
                f"{self.out_of_order} rows had a timestamp earlier than a row before them "
                "(clock step back): scored in file order at the latest time seen"
            )
        if self.duplicates:
            out.append(
                f"{self.duplicates} rows repeated the timestamp and value of the row "
                "before: scored as copies (same score, state not updated)"
            )
        if self.same_time:
            out.append(
                f"{self.same_time} rows repeated a timestamp with a different value: "
                "scored as separate readings at the same time"
            )
        if self.missing:
            out.append(
                f"{self.missing} rows had no value: scored by how unusual the run of "
                "missing readings is for this series"
            )
        if self.gaps:
            out.append(
                f"{self.gaps} gaps longer than {GAP_INTERVALS:g} sampling intervals "
                f"(longest {self.longest_gap_s:g} s): statistics decayed across them"
            )
        if self.rows and self.scored == 0:
            out.append(
                f"only {self.readings} readings, the warm-up needs more than "
                f"{self.warmup_points:g}: no scores"
            )
        return out


@dataclass
class _Carry:
    """Policy state carried between blocks."""

    last_t: float = -math.inf  # latest effective time so far
    prev_raw_t: float = math.nan  # the previous reading, for duplicate detection
    prev_x: float = math.nan
    prev_score: float = math.nan
    interval_s: float = math.nan  # typical positive time step
    miss_w: float = 0.0  # EW weight of rows / of missing rows (the missing rate)
    miss_r: float = 0.0
    miss_log_run: float = 0.0  # log p of the current run of missing rows
    readings: int = 0


GAP_INTERVALS = 10.0
MISSING_MEMORY_ROWS = 300.0


def _parse_times(
    raw: list[str], lines: list[int], ok: np.ndarray, bad: Callable[[int, str], None]
) -> np.ndarray:
    """Seconds since the epoch per row (NaN where ``ok`` is False or parsing failed)."""
    out = np.full(len(raw), np.nan)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return out
    vals = [raw[i].strip() for i in idx]
    try:
        out[idx] = np.array(vals, dtype=np.float64)
        return out
    except ValueError:
        pass
    parsed = pl.Series(vals).str.to_datetime(strict=False, time_zone="UTC", time_unit="us")
    us = parsed.dt.epoch("us").to_numpy().astype(np.float64)  # nulls -> NaN
    for j in np.flatnonzero(~np.isfinite(us)):
        try:
            us[j] = _iso_seconds(vals[j]) * 1e6
        except ValueError:
            bad(lines[idx[j]], f"timestamp {vals[j]!r} is neither ISO 8601 nor a number")
    out[idx] = us / 1e6
    return out


def _iso_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    ts = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def _parse_values(
    raw: list[str], lines: list[int], bad: Callable[[int, str], None], column: str
) -> tuple[np.ndarray, np.ndarray]:
    """(values, missing mask); junk is reported through ``bad`` and comes back NaN."""
    stripped = [v.strip() for v in raw]
    missing = np.array([v.lower() in MISSING for v in stripped], dtype=bool)
    vals = np.full(len(raw), np.nan)
    try:
        vals[~missing] = np.array(
            [v for v, m in zip(stripped, missing, strict=True) if not m], dtype=np.float64
        )
    except ValueError:  # find the offending rows
        for i, v in enumerate(stripped):
            if missing[i]:
                continue
            try:
                vals[i] = float(v)
            except ValueError:
                bad(lines[i], f"column {column!r}: {v!r} is not a number")
    inf = ~missing & ~np.isfinite(vals) & ~np.isnan(vals)
    for j in np.flatnonzero(inf):
        bad(lines[j], f"column {column!r}: {stripped[j]!r} is not a finite number")
        vals[j] = np.nan
    return vals, missing


def _blocks(
    reader: Iterator[list[str]], width: int, n: int = BLOCK_ROWS, first_line: int = 1
) -> Iterator[tuple[list[list[str]], list[int]]]:
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not row:  # blank line
            continue
        rows.append(row)
        lines.append(reader.line_num + first_line)  # type: ignore[attr-defined]
        if len(rows) >= n:
            yield rows, lines
            rows, lines = [], []
    if rows:
        yield rows, lines


def _header(src: TextIO) -> tuple[list[str], str, Iterator[list[str]]]:
    """The header row, the delimiter it uses (``,``, ``;`` or tab) and a reader of the rest."""
    first = src.readline()
    if not first.strip():
        raise CsvInputError(1, "empty file: expected a header row such as 'timestamp,value'")
    if "\x00" in first or any("\udc80" <= ch <= "\udcff" for ch in first):
        raise CsvInputError(1, "not UTF-8 text (a binary file?)")
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    delim = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    header = next(csv.reader([first], delimiter=delim))
    return header, delim, csv.reader(src, delimiter=delim)


def _check_columns(header: list[str], time_column: str, column: str) -> None:
    for name, what, opt in (
        (time_column, "time column", "--time-column"),
        (column, "value column", "--column"),
    ):
        if name in header:
            continue
        looks_like_data = all(_is_number(h) for h in header if h.strip())
        hint = (
            "the first line looks like data, not a header"
            if looks_like_data
            else f"columns are {header}; name yours with {opt}"
        )
        raise CsvInputError(1, f"no {what} {name!r} ({hint})")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _missing_scores(missing: np.ndarray, carry: _Carry, warm: np.ndarray) -> np.ndarray:
    """p of the run of missing rows each missing row ends (NaN elsewhere), causally."""
    n = len(missing)
    if n == 0:
        return np.empty(0)
    m = missing.astype(np.float64)
    d = np.full(n, math.exp(-1.0 / MISSING_MEMORY_ROWS))
    w, r = ew_scan(np.stack([np.ones(n), m]), d, np.array([carry.miss_w, carry.miss_r]))
    q = (r - m + 1.0) / (w - 1.0 + 2.0)  # predictive missing rate, one pseudo-count each
    log_q = np.where(missing, np.log(q), 0.0)
    idx = np.arange(n)
    anchor = np.maximum.accumulate(np.where(~missing, idx, -1))
    cum = np.cumsum(log_q)
    base = np.where(anchor >= 0, cum[np.maximum(anchor, 0)], -carry.miss_log_run)
    log_run = cum - base
    carry.miss_w, carry.miss_r = float(w[-1]), float(r[-1])
    carry.miss_log_run = float(log_run[-1]) if missing[-1] else 0.0
    return np.where(missing & warm, np.exp(log_run), np.nan)


def score_csv(
    src: TextIO,
    dst: TextIO,
    column: str = "value",
    time_column: str = "timestamp",
    params: DetectorParams | None = None,
    skip_invalid: bool = False,
    threshold: float = 0.5,
    warn: TextIO = sys.stderr,
    block_rows: int = BLOCK_ROWS,
) -> ScoreSummary:
    """Stream ``src`` to ``dst`` with an anomaly score per row. See the module docstring."""
    params = params or DetectorParams()
    header, delim, reader = _header(src)
    _check_columns(header, time_column, column)
    ti, vi = header.index(time_column), header.index(column)
    out_header = list(header)
    si = out_header.index(SCORE_COLUMN) if SCORE_COLUMN in out_header else None
    if si is None:
        out_header.append(SCORE_COLUMN)
    writer = csv.writer(dst, delimiter=delim, lineterminator="\n")
    writer.writerow(out_header)
    summary = ScoreSummary(warmup_points=params.warmup_points)
    state: DetectorState | None = None
    carry = _Carry()
    for rows, lines in _blocks(reader, len(header), block_rows):
        bad_rows: set[int] = set()
        line_index = {ln: i for i, ln in enumerate(lines)}

        def bad(
            line: int, message: str, _bad: set[int] = bad_rows, _index: dict[int, int] = line_index
        ) -> None:
            if not skip_invalid:
                raise CsvInputError(line, message)
            print(f"warning: line {line}: {message}; row left unscored", file=warn)
            _bad.add(_index[line])

        for i, row in enumerate(rows):
            if len(row) <= max(ti, vi):
                bad(lines[i], f"{len(row)} fields, expected {len(header)}")
        short = np.array([len(r) <= max(ti, vi) for r in rows], dtype=bool)
        vals, missing = _parse_values(
            [r[vi] if len(r) > vi else "" for r in rows], lines, bad, column
        )
        missing &= ~short
        t_ok = ~short & ~np.isin(np.arange(len(rows)), list(bad_rows))
        times = _parse_times([r[ti] if len(r) > ti else "" for r in rows], lines, t_ok, bad)
        usable = np.isfinite(vals) & np.isfinite(times)
        use_idx = np.flatnonzero(usable)
        raw_t, xu = times[use_idx], vals[use_idx]
        # clock steps back: scored in file order at the latest time seen so far
        t_eff = np.maximum.accumulate(np.concatenate([[carry.last_t], raw_t]))[1:]
        summary.out_of_order += int(np.sum(raw_t < t_eff))
        # exact copies of the reading before: same score, no state update
        prev_t = np.concatenate([[carry.prev_raw_t], raw_t[:-1]])
        prev_x = np.concatenate([[carry.prev_x], xu[:-1]])
        dup = (raw_t == prev_t) & (xu == prev_x)
        summary.duplicates += int(dup.sum())
        keep = ~dup
        tk, xk = t_eff[keep], xu[keep]
        steps = np.diff(np.concatenate([[carry.last_t], tk]))
        summary.same_time += int(np.sum((steps == 0) & (raw_t[keep] == tk)))
        pos = steps[np.isfinite(steps) & (steps > 0)]
        if len(pos) >= 2 or (len(pos) and math.isnan(carry.interval_s)):
            carry.interval_s = float(np.median(pos)) if len(pos) >= 2 else float(pos[0])
        if len(pos) and math.isfinite(carry.interval_s):
            long = pos[pos > GAP_INTERVALS * carry.interval_s]
            summary.gaps += len(long)
            if len(long):
                summary.longest_gap_s = max(summary.longest_gap_s, float(long.max()))
        scores = np.full(len(rows), np.nan)
        if len(tk):
            res, state = score_series(tk, xk, params, state)
            su = np.full(len(use_idx), np.nan)
            su[keep] = res.score
            # a copy takes the score of the reading it copies (forward fill)
            pos_idx = np.maximum.accumulate(np.where(keep, np.arange(len(su)), -1))
            su = np.where(pos_idx >= 0, su[np.maximum(pos_idx, 0)], carry.prev_score)
            scores[use_idx] = su
            carry.last_t = float(tk[-1])
            carry.prev_raw_t, carry.prev_x = float(raw_t[-1]), float(xu[-1])
            carry.prev_score = float(su[-1])
        elif len(use_idx):  # only copies in this block
            scores[use_idx] = carry.prev_score
        # missing readings: scored by the run they are part of, once the series is warm
        reading = usable.copy()
        reading[use_idx[dup]] = False
        seen = carry.readings + np.cumsum(reading)
        carry.readings = int(seen[-1]) if len(seen) else carry.readings
        pm = _missing_scores(missing, carry, seen > params.warmup_points)
        scores = np.where(missing, p_to_score(pm), scores)
        summary.readings = carry.readings
        summary.rows += len(rows)
        summary.missing += int(missing.sum())
        summary.skipped += len(rows) - int(missing.sum()) - len(use_idx)
        finite = np.isfinite(scores)
        summary.scored += int(finite.sum())
        if finite.any():
            summary.max_score = max(summary.max_score, float(scores[finite].max()))
            summary.above_threshold += int((scores[finite] >= threshold).sum())
        for row, sc in zip(rows, scores, strict=True):
            cell = "" if np.isnan(sc) else f"{sc:.6f}"
            if si is None:
                writer.writerow([*row, cell])
            else:
                row = list(row) + [""] * (len(out_header) - len(row))
                row[si] = cell
                writer.writerow(row)
    return summary
