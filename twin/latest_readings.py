"""Live state: the latest value and read time of every tracked (device, metric) slot.

Refreshed from the store's `latest` table each tick without touching strings: DuckDB row
ids of `latest` are stable (upserts update in place; checkpoints keep them), so the
twin maps each row id to its slot once and afterwards reads only `(rowid, value, time)`
columns. New rows are mapped incrementally; a sample of mapped rows is re-checked every
refresh, and any mismatch (table rebuilt, rows compacted) triggers a full re-map, so a
changed storage layout costs time, never wrong values.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from twin.site_index import SiteIndex

UNTRACKED = -1  # a row of a device or metric the site model does not know
VERIFY_SAMPLE = 16


def _np(col: pa.ChunkedArray, dtype) -> np.ndarray:
    if col.num_chunks == 0:
        return np.empty(0, dtype=dtype)
    return np.asarray(col.to_numpy(), dtype=dtype)


@dataclass(slots=True)
class RefreshStats:
    rows: int
    tracked: int
    mapped_new: int
    rebuilt: bool


class LatestReadings:
    def __init__(self, layout: SiteIndex, cursor: duckdb.DuckDBPyConnection) -> None:
        self.layout = layout
        self.value = np.full(layout.n_slots, np.nan)
        self.time_ms = np.zeros(layout.n_slots, dtype=np.int64)  # 0 = never reported
        self._cur = cursor
        self._cur.register("twin_devmap", pa.table(layout.device_table()))
        self._cur.register("twin_metmap", pa.table(layout.metric_table()))
        self._rowid_slot = np.empty(0, dtype=np.int64)
        self._rng = np.random.default_rng(0)
        self.untracked_rows = 0
        self.rebuilds = 0

    # -- refresh ------------------------------------------------------------------------

    def refresh(self) -> RefreshStats:
        # Arrow out of DuckDB is zero-copy for these plain columns; timestamps are int64 us.
        table = self._cur.sql("SELECT rowid, value, read_time FROM latest").to_arrow_table()
        rowid = _np(table.column(0), np.int64)
        cols = {
            "value": _np(table.column(1), float),
            "t": _np(table.column(2).cast(pa.int64()), np.int64) // 1000,
        }
        rebuilt, mapped = False, 0
        if rowid.size and not self._verified():
            self._rowid_slot = np.empty(0, dtype=np.int64)
            rebuilt = True
            self.rebuilds += 1
        if rowid.size and int(rowid.max()) >= self._rowid_slot.size:
            mapped = self._map_from(self._rowid_slot.size, int(rowid.max()))
        slots = self._rowid_slot[rowid] if rowid.size else rowid
        keep = slots >= 0
        target = slots[keep]
        self.value[target] = np.asarray(cols["value"], dtype=float)[keep]
        self.time_ms[target] = np.asarray(cols["t"], dtype=np.int64)[keep]
        self.untracked_rows = int(rowid.size - keep.sum())
        return RefreshStats(int(rowid.size), int(keep.sum()), mapped, rebuilt)

    def _map_from(self, first_rowid: int, last_rowid: int) -> int:
        grown = np.full(last_rowid + 1, UNTRACKED, dtype=np.int64)
        grown[: self._rowid_slot.size] = self._rowid_slot
        m = self._cur.execute(
            """SELECT l.rowid AS r, mm.base + d.dev AS slot
               FROM latest l JOIN twin_devmap d USING (device_id)
               JOIN twin_metmap mm ON mm.cls = d.cls AND mm.metric = l.metric
               WHERE l.rowid >= ?""",
            [first_rowid],
        ).fetchnumpy()
        grown[np.asarray(m["r"], dtype=np.int64)] = np.asarray(m["slot"], dtype=np.int64)
        self._rowid_slot = grown
        return int(len(m["r"]))

    def _verified(self) -> bool:
        """Do a few mapped row ids still hold the (device, metric) they were mapped to?"""
        tracked = np.flatnonzero(self._rowid_slot >= 0)
        if tracked.size == 0:
            return True
        pick = self._rng.choice(tracked, min(VERIFY_SAMPLE, tracked.size), replace=False)
        rows = self._cur.execute(
            "SELECT rowid, device_id, metric FROM latest WHERE rowid = ANY(?::BIGINT[])",
            [pick.tolist()],
        ).fetchall()
        if len(rows) != pick.size:
            return False
        return all(self.layout.slot_of(d, m) == self._rowid_slot[r] for r, d, m in rows)

    # -- reads --------------------------------------------------------------------------

    def present(self) -> np.ndarray:
        return self.time_ms > 0

    def stale(self, now_ms: int, stale_after_s: float) -> np.ndarray:
        """Reported at least once, but longer ago than the stale threshold."""
        return (self.time_ms > 0) & (now_ms - self.time_ms > stale_after_s * 1000.0)

    def reading(self, device_id: str, metric: str) -> tuple[float, int] | None:
        slot = self.layout.slot_of(device_id, metric)
        if slot is None or self.time_ms[slot] == 0:
            return None
        return float(self.value[slot]), int(self.time_ms[slot])

    def device(self, device_id: str) -> dict[str, tuple[float, int]]:
        found = self.layout.device_index.get(device_id)
        if found is None:
            return {}
        block = self.layout.blocks[found[0]]
        out = {}
        for metric in block.metrics:
            slot = block.slot(metric, found[1])
            if self.time_ms[slot]:
                out[metric] = (float(self.value[slot]), int(self.time_ms[slot]))
        return out
