"""Incremental failure features: the rows of `compute_features` at a tick, without
re-reading the 6-h lookback.

`compute_features` (SQL) stays the reference: training and evaluation use it, and
tests/test_failure_live.py requires this module to give the same rows at every tick.

How: a tick is a bucket end on the absolute `bucket_s` grid (epoch multiples of 300 s),
so the SQL's buckets (anchored at the as-of time) are fixed intervals that never move.
Each tick reads only the samples and events of the buckets since the previous tick (plus
`late_buckets` closed buckets again, see below), reduces them to per-device bucket rows
with the reference's own SQL (`bucket_query`, `peers_query`: averages, maxima, read and
metric counts, and the peer deviations; a bucket's peers are all in that bucket, so the
rack medians are final when the bucket is), and writes them into a ring of
LOOKBACK_S / bucket_s buckets per device (numpy arrays, a column allocated only once a
metric appears). The window features are then reductions over that ring, vectorized
across devices: 6-h minima/maxima over the whole ring in any order (a device's newest
valid bucket is its row, so its 6-h frame is every bucket it has in the lookback), and
the 15-min to 2-h windows over the newest 27 buckets in time order, per group of devices
whose newest bucket is equally old (almost all devices are in the group whose newest
bucket is the tick's).

Late data: a sample counts if it is in the store when its bucket is (re)read. The bucket
that closes at tick T is read at T; with `late_buckets=1` (the default) the tick after
reads it again and replaces it when its sample count changed since (the store only
appends in the recent window, so the same count means the same rows), so a sample
arriving up to one bucket (5 min) after its bucket closed is in the features from the
next tick on, exactly as the SQL reference would see it then. Samples later than that
stay in the store (training and the reference see them) but not in the live ring; the
difference leaves the features after 6 h.

Part swaps: each tick reads the twin's `part_swapped` events of the lookback (a slot's
new part; twin/parts.py writes them). A device's ring buckets before its newest swap are
cleared (samples, counters) and its own events before it are not counted, so the new
part's features start from the swap, as the reference's do. The swap's own bucket is
read with the reference's filter (the device's samples before the swap left out). A swap
the tick learns of after its bucket was read (the part history writes the event a few
seconds after the inventory report) has the buckets from the swap's on read again, so
the rack peers' medians in that bucket match the reference too.
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl

from domain.xids import FAILURE_XID_CODES
from twin.failure.features import (
    CLASSES,
    LOOKBACK_S,
    XID_COLS,
    XID_WINDOW_S,
    _ts,
    bucket_query,
    peers_query,
    swaps_query,
)

SHORT = 27  # buckets in time order: the 2-h loss-ratio slope's frame (25) + 15-min average
CLASS_CODE = {c: i for i, c in enumerate(CLASSES)}
VALUE_COLS = (
    "temp_c",
    "tdev",
    "power_w",
    "throttled",
    "ecc_corr",
    "ecc_uncorr",
    "remap_corr",
    "remap_uncorr",
    "remap_pending",
    "remap_failure",
    "lr",
    "speed_per_flow",
    "pump_w_per_lpm",
    "flow_lpm",
    "reservoir_pct",
    "leak_detected",
    "fan_power_ratio",
    "fdev",
    "fan_speed_pct",
    "return_air_c",
)
_US = 1_000_000


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*a, **k)


class LiveFeatures:
    """The feature rows of every device at successive ticks, maintained incrementally.

    `advance(con, t)` reads what is new in `samples`/`events` up to tick t (a multiple of
    `bucket_s`) and returns the rows `compute_features(con, t, t, bucket_s)` gives."""

    def __init__(
        self, bucket_s: int = 300, late_buckets: int = 1, classes: tuple[str, ...] = CLASSES
    ) -> None:
        self.bucket_s = bucket_s
        self.nb = LOOKBACK_S // bucket_s
        self.late_buckets = late_buckets
        self.classes = classes
        self.tick: int | None = None  # bucket index of the last tick (end / bucket_s)
        self._late_count: int | None = None  # samples in the re-readable buckets
        self.ids: dict[str, int] = {}
        self.id_list: list[str] = []
        self.rack: list[str | None] = []
        self.cap = 0
        self.slot_bucket = np.full(self.nb, -(10**12), dtype=np.int64)
        self.valid = np.zeros((0, self.nb), dtype=bool)
        self.cls = np.zeros((0, self.nb), dtype=np.int8)
        self.last_us = np.zeros((0, self.nb), dtype=np.int64)
        self.n_reads = np.zeros((0, self.nb))
        self.n_metrics = np.zeros((0, self.nb))
        self.cols: dict[str, np.ndarray] = {}  # allocated when a metric first appears
        self.events = pl.DataFrame(
            schema={
                "read_time": pl.Datetime("us"),
                "device_id": pl.String,
                "kind": pl.String,
                "xid": pl.String,
            }
        )
        # part swaps of the lookback (device_id, swap_t) already applied, and per device
        # the newest one at or before the last tick: where its part's features start
        self.swaps = pl.DataFrame(schema=_SWAP_SCHEMA)
        self.part_since = pl.DataFrame(schema=_SWAP_SCHEMA)

    # -- state --------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = max(n, 2 * self.cap, 64)

        def grow(a: np.ndarray, fill) -> np.ndarray:
            out = np.full((cap, self.nb), fill, dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        self.valid, self.cls = grow(self.valid, False), grow(self.cls, -1)
        self.last_us = grow(self.last_us, 0)
        self.n_reads, self.n_metrics = grow(self.n_reads, np.nan), grow(self.n_metrics, np.nan)
        self.cols = {k: grow(a, np.nan) for k, a in self.cols.items()}
        self.cap = cap

    def _index(self, rows: pl.DataFrame) -> np.ndarray:
        ids = rows["device_id"].to_list()
        racks = rows["rack"].to_list()
        out = np.empty(len(ids), dtype=np.int64)
        get = self.ids.get
        for k, (d, r) in enumerate(zip(ids, racks, strict=True)):
            i = get(d)
            if i is None:
                i = self.ids[d] = len(self.id_list)
                self.id_list.append(d)
                self.rack.append(r)
            out[k] = i
        self._grow(len(self.id_list))
        return out

    def _clear(self, buckets: np.ndarray) -> None:
        slots = buckets % self.nb
        self.slot_bucket[slots] = buckets
        self.valid[:, slots] = False
        self.cls[:, slots] = -1
        self.n_reads[:, slots] = np.nan
        self.n_metrics[:, slots] = np.nan
        for a in self.cols.values():
            a[:, slots] = np.nan

    def forget_before(self, device_id: str, since: datetime) -> None:
        """Clear a device's ring buckets that end before `since` (a new part's tenure
        start): the new part's windows hold only its own buckets."""
        i = self.ids.get(device_id)
        if i is None:
            return
        first = _bucket_of(since, self.bucket_s)  # the swap's own bucket stays
        cells = np.flatnonzero(self.slot_bucket < first)
        self.valid[i, cells] = False
        self.cls[i, cells] = -1
        self.last_us[i, cells] = 0
        self.n_reads[i, cells] = np.nan
        self.n_metrics[i, cells] = np.nan
        for a in self.cols.values():
            a[i, cells] = np.nan

    def fold(self, rows: pl.DataFrame, lo: int, hi: int) -> None:
        """Replace buckets lo+1..hi with `rows` (bucket_rows of all their samples)."""
        lo = max(lo, hi - self.nb)
        self._clear(np.arange(lo + 1, hi + 1, dtype=np.int64))
        rows = rows.filter((pl.col("bucket") > lo) & (pl.col("bucket") <= hi))
        if rows.is_empty():
            return
        # latest rack wins (rows in bucket order)
        rows = rows.sort("bucket")
        i = self._index(rows)
        last = rows.group_by("device_id").agg(pl.col("rack").last())
        for d, r in last.iter_rows():
            self.rack[self.ids[d]] = r
        s = (rows["bucket"].to_numpy() % self.nb).astype(np.int64)
        self.valid[i, s] = True
        self.cls[i, s] = rows["device_class"].replace_strict(CLASS_CODE).to_numpy()
        self.last_us[i, s] = rows["last_us"].to_numpy()
        self.n_reads[i, s] = rows["n_reads"].to_numpy()
        self.n_metrics[i, s] = rows["n_metrics"].to_numpy()
        for c in VALUE_COLS:
            col = rows[c]
            if col.null_count() == col.len() and c not in self.cols:
                continue
            if c not in self.cols:
                self.cols[c] = np.full((self.cap, self.nb), np.nan)
            self.cols[c][i, s] = col.cast(pl.Float64).fill_null(np.nan).to_numpy()

    # -- reading the store --------------------------------------------------------
    def advance(
        self,
        con: duckdb.DuckDBPyConnection,
        t: datetime,
        samples: str = "samples",
        events: str = "events",
    ) -> pl.DataFrame:
        """Fold what arrived up to tick t (a multiple of bucket_s), return the rows at t."""
        t = t.replace(tzinfo=None)
        hi = int(round(_epoch_us(t) / (self.bucket_s * _US)))
        if hi * self.bucket_s * _US != _epoch_us(t):
            raise ValueError(f"tick {t} is not on the {self.bucket_s}-s grid")
        if self.tick is None or hi < self.tick:
            self.reset()
            lo = hi - self.nb
        else:
            lo = max(self.tick - self.late_buckets, hi - self.nb)
            # the closed buckets are read again only if samples arrived for them since
            # (the store only appends in the recent window: same count, same rows)
            if (
                self._late_count is not None
                and lo == self.tick - self.late_buckets < self.tick
                and self._count(con, samples, lo, self.tick) == self._late_count
            ):
                lo = self.tick
        # part swaps of the lookback (the reference reads the same span); one learnt of
        # after its bucket was read sends the read back to that bucket
        lookback_lo = _from_us((hi - self.nb) * self.bucket_s * _US)
        swaps = con.sql(
            swaps_query(events, _ts(lookback_lo), _ts(t)) + " ORDER BY device_id, swap_t"
        ).pl()
        swaps = swaps.with_columns(pl.col("swap_t").cast(pl.Datetime("us")))
        new = swaps.join(self.swaps, on=["device_id", "swap_t"], how="anti")
        if not new.is_empty() and self.tick is not None:
            first_new = min(_bucket_of(s, self.bucket_s) for s in new["swap_t"])
            lo = max(min(lo, first_new - 1), hi - self.nb)
        # counted before the rows are read: a sample landing in between is counted
        # low, so the next tick reads its bucket again rather than missing it
        self._late_count = (
            self._count(con, samples, hi - self.late_buckets, hi) if self.late_buckets else None
        )
        t_lo = _from_us(lo * self.bucket_s * _US)
        # the reference's own bucket reduction and peer deviations, over the new span only
        live_swaps = swaps  # noqa: F841 - referenced by SQL below
        buckets = bucket_query(
            samples, _ts(t), _ts(t_lo), self.bucket_s, None if swaps.is_empty() else "live_swaps"
        )
        rows = con.sql(
            f"SELECT *, epoch_us(last_read) AS last_us, "
            f"epoch_us(bucket_end) // {self.bucket_s * _US} AS bucket FROM ("
            + peers_query(f"({buckets})")
            + ")"
        ).pl()
        ev = con.sql(
            f"SELECT read_time, device_id, kind, attrs->>'xid' AS xid FROM {events} "
            "WHERE read_time > ? AND read_time <= ? AND kind IN ('xid', 'source_error')",
            params=[max(t_lo, t - timedelta(seconds=XID_WINDOW_S)), t],
        ).pl()
        return self.advance_rows(rows, ev, t, lo, swaps)

    def _count(self, con: duckdb.DuckDBPyConnection, samples: str, lo: int, hi: int) -> int:
        step = self.bucket_s * _US
        rows = con.sql(
            f"SELECT count(*) FROM {samples} WHERE read_time > ? AND read_time <= ? "
            "AND kind IN ('gpu', 'power', 'cooling', 'air')",
            params=[_from_us(lo * step), _from_us(hi * step)],
        ).fetchall()
        return int(rows[0][0])

    def reset(self) -> None:
        self.__init__(self.bucket_s, self.late_buckets, self.classes)  # type: ignore[misc]

    def advance_rows(
        self,
        rows: pl.DataFrame,
        events: pl.DataFrame,
        t: datetime,
        lo: int,
        swaps: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """advance() on what was read: `rows` the bucket rows (bucket_query + peers_query)
        of buckets lo+1..t, `events` every xid/source_error event in the same span,
        `swaps` every part swap (device_id, swap_t) of the lookback up to t."""
        hi = _epoch_us(t) // (self.bucket_s * _US)
        self.fold(rows, lo, hi)
        if swaps is not None:
            self.swaps = swaps.select(self.swaps.columns)
            self.part_since = swaps.group_by("device_id").agg(pl.col("swap_t").max())
        # every tick, not only when a swap is new: a re-read bucket may bring back an
        # old part's bucket (a swap's previous bucket read late); swaps are few
        for device_id, since in self.part_since.iter_rows():
            self.forget_before(device_id, since)
        t_lo = _from_us(lo * self.bucket_s * _US)
        keep_from = t - timedelta(seconds=XID_WINDOW_S)
        ev = events.with_columns(pl.col("read_time").cast(pl.Datetime("us")))
        self.events = pl.concat(
            [
                self.events.filter(
                    (pl.col("read_time") > keep_from) & (pl.col("read_time") <= t_lo)
                ),
                ev.select(self.events.columns),
            ]
        )
        self.tick = hi
        return self.features(t)

    # -- features -----------------------------------------------------------------
    def features(self, t: datetime) -> pl.DataFrame:
        """The feature rows at the last tick t (compute_features(con, t, t) columns)."""
        b, nb = self.bucket_s, self.nb
        hi = self.tick
        assert hi is not None
        n = len(self.id_list)
        valid = self.valid[:n]
        in_window = (self.slot_bucket > hi - nb) & (self.slot_bucket <= hi)
        valid = valid & in_window[None, :]
        cls_code = np.array([CLASS_CODE[c] for c in self.classes], dtype=np.int8)
        key = np.where(valid, self.slot_bucket[None, :], np.int64(-(10**12)))
        newest = key.argmax(axis=1)
        has = valid[np.arange(n), newest]
        rows_cls = self.cls[np.arange(n), newest]
        sel = np.flatnonzero(has & np.isin(rows_cls, cls_code))
        if sel.size == 0:
            return _empty(self)
        newest = newest[sel]
        r_bucket = self.slot_bucket[newest]
        lag = hi - r_bucket
        col = {c: a[:n] for c, a in self.cols.items()}

        def full(c: str) -> np.ndarray | None:
            a = col.get(c)
            return None if a is None else a[sel]

        v6 = valid[sel]
        out: dict[str, np.ndarray] = {}
        # 6-h frames: every valid bucket of the device in the lookback
        max_reads = _quiet(np.nanmax, np.where(v6, self.n_reads[sel], np.nan), axis=1)
        max_metrics = _quiet(np.nanmax, np.where(v6, self.n_metrics[sel], np.nan), axis=1)
        firstkey = np.where(v6, self.slot_bucket[None, :], np.int64(10**12))
        first = firstkey.argmin(axis=1)
        first_bucket = self.slot_bucket[first]
        ar = np.arange(sel.size)

        def min6(c: str) -> np.ndarray:
            a = full(c)
            return np.full(sel.size, np.nan) if a is None else _quiet(np.nanmin, a, axis=1)

        def first6(c: str) -> np.ndarray:
            a = full(c)
            return np.full(sel.size, np.nan) if a is None else a[ar, first]

        failure = full("remap_failure")
        # not reported reads as 0, as in the SQL (coalesce)
        out["row_remap_failure_6h"] = (
            np.zeros(sel.size)
            if failure is None
            else np.nan_to_num(_quiet(np.nanmax, failure, axis=1), nan=0.0)
        )
        # short frames (<= 2 h 15 min) in time order, per group of equally old rows
        short: dict[str, np.ndarray] = {}
        for lg in np.unique(lag):
            g = np.flatnonzero(lag == lg)
            ids = np.arange(hi - lg - SHORT + 1, hi - lg + 1, dtype=np.int64)
            slots = ids % nb
            ok = (self.slot_bucket[slots] == ids)[None, :] & valid[sel[g]][:, slots]
            got = _short_features(
                {c: np.where(ok, a[sel[g]][:, slots], np.nan) for c, a in col.items()},
                np.where(ok, self.n_reads[sel[g]][:, slots], np.nan),
                ok,
                ids,
                b,
            )
            for k, arr in got.items():
                short.setdefault(k, np.full(sel.size, np.nan))[g] = arr
        r_last = self.last_us[sel, newest]
        r_metrics = self.n_metrics[sel, newest]

        def at_r(c: str) -> np.ndarray:
            a = full(c)
            return np.full(sel.size, np.nan) if a is None else a[ar, newest]

        ecc_r = at_r("ecc_corr")
        read_interval = b / _nan0(max_reads)
        out["read_ratio_15m"] = short["sum_reads_15m"] / _nan0(3 * max_reads)
        out["metrics_missing"] = max_metrics - r_metrics
        out["ecc_accel"] = np.log(1 + 4 * (ecc_r - short["ecc_min_15m"])) - np.log(
            1
            + (ecc_r - min6("ecc_corr")) * 3600.0 / np.maximum((r_bucket - first_bucket) * b + b, b)
        )
        for name, c in (
            ("ecc_uncorr_6h", "ecc_uncorr"),
            ("remap_corr_6h", "remap_corr"),
            ("remap_uncorr_6h", "remap_uncorr"),
        ):
            out[name] = at_r(c) - min6(c)
        out["row_remap_pending"] = np.nan_to_num(at_r("remap_pending"), nan=0.0)
        out["speed_per_flow_drift_6h"] = short["speed_per_flow"] - first6("speed_per_flow")
        fpr15 = short["fan_power_ratio"]
        out["fan_power_ratio_drift_6h"] = fpr15 - first6("fan_power_ratio")
        out["fan_power_ratio_rise_pct"] = 100 * (fpr15 / _nan0(min6("fan_power_ratio")) - 1)
        out["reservoir_pct"] = at_r("reservoir_pct")
        out["leak_detected"] = at_r("leak_detected")
        t_us = _epoch_us(t)
        out["stale_reads"] = (t_us - r_last) / _US / _nan0(read_interval)
        out["read_interval_s"] = read_interval
        for k, arr in short.items():
            if k not in ("sum_reads_15m", "ecc_min_15m"):
                out[k] = arr
        slope1 = out["psu_loss_slope_1h_ph"]
        plr = out["psu_loss_ratio"]
        has_slope = ~np.isnan(slope1)
        out["psu_loss_rise_age_h"] = np.where(
            has_slope, np.minimum((plr - 1) / np.maximum(slope1, 1e-3), 100), np.nan
        )
        out["psu_loss_double_h"] = np.where(
            has_slope, np.minimum(plr / np.maximum(slope1, 1e-3), 100), np.nan
        )
        # SQL least/greatest skip NULLs and order NaN last: no falling rate reads as 100 h
        slope = out["reservoir_slope_pph"]
        res = out["reservoir_pct"]
        falling = ~np.isnan(slope) & (slope < 0) & ~np.isnan(res)
        with np.errstate(divide="ignore", invalid="ignore"):
            hours = np.minimum((res - 30) / -slope, 100)
        out["hours_to_reservoir_30"] = np.where(falling, hours, 100.0)
        device_ids = [self.id_list[i] for i in sel]
        racks = [self.rack[i] for i in sel]
        classes = [CLASSES[c] for c in self.cls[sel, newest]]
        frame = pl.DataFrame(
            {
                "t": pl.Series([t] * sel.size, dtype=pl.Datetime("us")),
                "device_id": device_ids,
                "device_class": classes,
                "rack": pl.Series(racks, dtype=pl.String),
                **{k: pl.Series(k, v, dtype=pl.Float64, nan_to_null=True) for k, v in out.items()},
            }
        )
        frame = frame.with_columns(
            pl.when(pl.col("device_class") != "cdu")
            .then(None)
            .otherwise(pl.col("hours_to_reservoir_30"))
            .alias("hours_to_reservoir_30")
        )
        frame = frame.join(self._event_counts(t, frame), on="device_id", how="left")
        frame = frame.with_columns(
            [pl.col(c).fill_null(0) for c in [*XID_COLS, "collector_errors_1h"]]
        )
        return frame.sort("device_id")

    def _event_counts(self, t: datetime, frame: pl.DataFrame) -> pl.DataFrame:
        """xid<N>_2h and collector_errors_1h: events of the device or of its rack."""
        ev = self.events.filter(
            (pl.col("read_time") > t - timedelta(seconds=XID_WINDOW_S)) & (pl.col("read_time") <= t)
        )
        # a device's own events before its part's swap were the old part's
        ev = ev.join(self.part_since, on="device_id", how="left").filter(
            pl.col("swap_t").is_null() | (pl.col("read_time") >= pl.col("swap_t"))
        )
        hour = t - timedelta(hours=1)
        per = ev.group_by("device_id").agg(
            *[
                ((pl.col("kind") == "xid") & (pl.col("xid") == str(x))).sum().alias(f"xid{x}_2h")
                for x in FAILURE_XID_CODES
            ],
            ((pl.col("kind") == "source_error") & (pl.col("read_time") > hour))
            .sum()
            .alias("collector_errors_1h"),
        )
        cols = [*XID_COLS, "collector_errors_1h"]
        own = frame.select("device_id").join(per, on="device_id", how="left")
        rack = (
            frame.select("device_id", "rack")
            .join(per.rename({"device_id": "rack"}), on="rack", how="left")
            .drop("rack")
        )
        both = own.join(rack, on="device_id", how="left", suffix="_rack")
        return both.select(
            "device_id",
            *[
                (pl.col(c).fill_null(0) + pl.col(f"{c}_rack").fill_null(0)).cast(pl.Int64).alias(c)
                for c in cols
            ],
        )


_SWAP_SCHEMA: dict[str, pl.DataType] = {"device_id": pl.String(), "swap_t": pl.Datetime("us")}


def _bucket_of(t: datetime, bucket_s: int) -> int:
    """Index of the bucket (end - bucket_s, end] holding t, ends on the absolute grid."""
    step = bucket_s * _US
    return -(-_epoch_us(t) // step)


def _nan0(a: np.ndarray) -> np.ndarray:
    """nullif(a, 0) with NaN for NULL."""
    return np.where(a == 0, np.nan, a)


def _short_features(
    col: dict[str, np.ndarray], n_reads: np.ndarray, ok: np.ndarray, ids: np.ndarray, b: int
) -> dict[str, np.ndarray]:
    """The 15-min to 2-h windows of the last column (the row), frames in buckets."""
    rows = ok.shape[0]
    nan = np.full(rows, np.nan)
    th = (ids - ids[-1]) * b / 3600.0

    def c(name: str) -> np.ndarray | None:
        return col.get(name)

    def avg(name: str, k: int) -> np.ndarray:
        a = c(name)
        return nan.copy() if a is None else _quiet(np.nanmean, a[:, -k:], axis=1)

    def mn(name: str, k: int) -> np.ndarray:
        a = c(name)
        return nan.copy() if a is None else _quiet(np.nanmin, a[:, -k:], axis=1)

    def last(name: str) -> np.ndarray:
        a = c(name)
        return nan.copy() if a is None else a[:, -1]

    def regr(name: str, k: int) -> np.ndarray:
        a = c(name)
        if a is None:
            return nan.copy()
        y = a[:, -k:]
        x = np.broadcast_to(th[-k:], y.shape)
        m = ~np.isnan(y)
        cnt = m.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mx = np.where(m, x, 0).sum(axis=1) / cnt
            my = np.where(m, y, 0).sum(axis=1) / cnt
            dx = np.where(m, x - mx[:, None], 0)
            dy = np.where(m, y - my[:, None], 0)
            return (dx * dy).sum(axis=1) / (dx * dx).sum(axis=1)

    def first_pos(k: int) -> np.ndarray:
        """Position of the first valid bucket among the last k (the frame's first row)."""
        sub = ok[:, -k:]
        return ok.shape[1] - sub.shape[1] + sub.argmax(axis=1)

    ar = np.arange(rows)
    out: dict[str, np.ndarray] = {}
    out["sum_reads_15m"] = np.nansum(n_reads[:, -3:], axis=1)
    for name in ("temp_c", "power_w", "speed_per_flow", "pump_w_per_lpm", "flow_lpm"):
        out[name] = avg(name, 3)
    for name in ("fan_power_ratio", "fan_speed_pct", "return_air_c"):
        out[name] = avg(name, 3)
    out["temp_dev_c"] = avg("tdev", 3)
    out["fan_power_ratio_dev"] = avg("fdev", 3)
    out["psu_loss_ratio"] = avg("lr", 3)
    out["throttle_frac_1h"] = avg("throttled", 12)
    ecc = last("ecc_corr")
    out["ecc_min_15m"] = mn("ecc_corr", 3)
    out["ecc_corr_1h"] = ecc - mn("ecc_corr", 12)
    out["ecc_corr_rate_15m_ph"] = 4 * (ecc - out["ecc_min_15m"])
    out["temp_slope_kph"] = regr("temp_c", 24)
    out["speed_per_flow_slope_ph"] = regr("speed_per_flow", 24)
    out["fan_power_ratio_slope_ph"] = regr("fan_power_ratio", 24)
    out["reservoir_slope_pph"] = regr("reservoir_pct", 12)
    fpr = c("fan_power_ratio")
    if fpr is None:
        out["fan_power_ratio_rise_pct_30m"] = nan.copy()
    else:
        p = first_pos(6)
        out["fan_power_ratio_rise_pct_30m"] = 100 * (fpr[:, -1] / _nan0(fpr[ar, p]) - 1)
    # the 15-min loss ratio at every position, then its change from the frame's first row
    lr = c("lr")
    if lr is None:
        for name in ("30m", "1h", "2h"):
            out[f"psu_loss_slope_{name}_ph"] = nan.copy()
    else:
        width = lr.shape[1]
        plr = np.full(lr.shape, np.nan)
        for j in range(width):
            plr[:, j] = _quiet(np.nanmean, lr[:, max(0, j - 2) : j + 1], axis=1)
        for name, w in (("30m", 1800), ("1h", 3600), ("2h", 7200)):
            p = first_pos((w + b) // b)
            dt_h = (ids[-1] - ids[p]) * b / 3600.0
            out[f"psu_loss_slope_{name}_ph"] = (plr[:, -1] - plr[ar, p]) / _nan0(dt_h)
    return out


def _empty(live: LiveFeatures) -> pl.DataFrame:
    return pl.DataFrame(schema={"t": pl.Datetime("us"), "device_id": pl.String})


def _epoch_us(t: datetime) -> int:
    return int((t.replace(tzinfo=None) - datetime(1970, 1, 1)) / timedelta(microseconds=1))


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=us)


def tick_floor(t: datetime, bucket_s: int = 300) -> datetime:
    """The newest tick (bucket end on the absolute grid) at or before t."""
    us = _epoch_us(t)
    step = bucket_s * _US
    return _from_us(math.floor(us / step) * step)
