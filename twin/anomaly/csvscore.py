"""`dctwin anomaly score`: score any time series in a CSV file, streaming and causal.

The file is read in blocks; each block goes through the streaming detector with the
state carried from the block before, so memory stays bounded and the score of a row
never depends on a row after it. Rows are written back unchanged (every column kept, in
order) with an ``anomaly_score`` column appended (or replaced, if the input has one).

- Timestamps: ISO 8601 (``2024-05-01T12:00:00Z``, a space instead of ``T``, offsets,
  fractions; naive means UTC) or numbers (Unix seconds).
- Empty, ``nan``, ``NA``, ``null`` values are missing readings: the row is kept with an
  empty score and the series simply has a gap there.
- Repeated timestamps are scored as separate readings at the same time.
- A constant series scores 0 (no variation is expected, none is seen).
- Rows in the warm-up (the first ``warmup`` points) get an empty score.
- Anything else that is not a number, or a timestamp that is not one, or time going
  backwards, stops with an error naming the line; ``skip_invalid`` instead leaves such
  rows unscored and reports each on stderr.
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
    reader: Iterator[list[str]], width: int, n: int = BLOCK_ROWS
) -> Iterator[tuple[list[list[str]], list[int]]]:
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not row:  # blank line
            continue
        rows.append(row)
        lines.append(reader.line_num)  # type: ignore[attr-defined]
        if len(rows) >= n:
            yield rows, lines
            rows, lines = [], []
    if rows:
        yield rows, lines


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
    reader = csv.reader(src)
    try:
        header = next(reader)
    except StopIteration:
        raise CsvInputError(1, "empty file: expected a header row") from None
    for name, what in ((time_column, "time column"), (column, "value column")):
        if name not in header:
            raise CsvInputError(1, f"no {what} {name!r}; columns are {header}")
    ti, vi = header.index(time_column), header.index(column)
    out_header = list(header)
    si = out_header.index(SCORE_COLUMN) if SCORE_COLUMN in out_header else None
    if si is None:
        out_header.append(SCORE_COLUMN)
    writer = csv.writer(dst, lineterminator="\n")
    writer.writerow(out_header)
    summary = ScoreSummary()
    state: DetectorState | None = None
    last_t = -math.inf
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
        # time order among the rows that carry a value
        use_idx = np.flatnonzero(usable)
        tu = times[use_idx]
        before = np.maximum.accumulate(np.concatenate([[last_t], tu]))[:-1]
        back = tu < before
        for j in np.flatnonzero(back):
            bad(
                lines[use_idx[j]],
                f"timestamp {rows[use_idx[j]][ti].strip()!r} is earlier "
                "than a row before it: rows must be in time order",
            )
        use_idx = use_idx[~back]
        scores = np.full(len(rows), np.nan)
        if len(use_idx):
            res, state = score_series(times[use_idx], vals[use_idx], params, state)
            scores[use_idx] = res.score
            last_t = float(times[use_idx[-1]])
        summary.rows += len(rows)
        summary.missing += int(missing.sum())
        summary.skipped += len(rows) - int(missing.sum()) - len(use_idx)
        finite = np.isfinite(scores)
        summary.scored += int(finite.sum())
        if finite.any():
            summary.max_score = max(summary.max_score, float(scores[finite].max()))
            summary.above_threshold += int((scores[finite] >= threshold).sum())
        for row, s in zip(rows, scores, strict=True):
            cell = "" if np.isnan(s) else f"{s:.6f}"
            if si is None:
                writer.writerow([*row, cell])
            else:
                row = list(row) + [""] * (len(out_header) - len(row))
                row[si] = cell
                writer.writerow(row)
    return summary
