"""Live anomaly scores over the twin's DuckDB store, and the provider alert rules call.

`AnomalyService.refresh(now)` brings the fleet scorer up to date with the ``samples``
table: it waits until ``train_s`` of history exist, fits the models on it, then scores
each complete interval as it closes (``lag_s`` later, so late samples still count) and
refits every ``refit_every_s`` on the trailing ``history_s`` — leaving out devices that
alarmed in that window, so a developing fault is never learned as normal. Scoring is
incremental (streaming state carried), so a refresh costs what the new intervals cost.

The latest score per device, with its top contributing metrics, is kept in memory and in
the ``anomaly_latest`` table. Rack and hall scores roll devices up with the same
Bonferroni rule as components roll up into a device, so a threshold keeps its meaning.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl

from domain.site import Site
from ingest.store import Store
from twin.anomaly.calibration import p_to_score
from twin.anomaly.features import FIT_METRICS, class_frames, residuals_for
from twin.anomaly.fleet import PRIME_BUCKETS, FleetScorer
from twin.anomaly.frames import GRID_SQL, RATE_SUFFIX, RESET_SUFFIX, add_rates, device_table
from twin.anomaly.incidents import INCIDENTS_TABLE, Incident, IncidentConfig, IncidentTracker
from twin.anomaly.residuals import used_columns
from twin.health import ComponentHealth
from twin.periodic import Periodic

log = logging.getLogger(__name__)
TOP_K = 3
# a fit's history is read in pieces; each is read with this many intervals before it, so
# lags (a GPU's previous power readings) and counter rates at its start are those the whole
# window gives (for devices that report at least every FIT_CONTEXT_BUCKETS / 2 intervals)
FIT_CONTEXT_BUCKETS = 30
PRESENCE_SQL = """
SELECT device_id, count(DISTINCT floor(epoch_us(read_time) / $step_us))::BIGINT AS n,
       min(floor(epoch_us(read_time) / $step_us))::BIGINT AS first
FROM samples WHERE read_time >= $start AND read_time < $end
GROUP BY device_id
"""
FIT_GRID_SQL = GRID_SQL.replace(
    "WHERE read_time", "WHERE metric IN (SELECT unnest($metrics)) AND read_time"
)
# the long-grid rows the fit's metrics give: their own and their counters' rates and resets
# (`add_rates` works per series, so filtering after it equals reading only these)
FIT_GRID_METRICS = sorted(
    FIT_METRICS | {m + s for m in FIT_METRICS for s in (RATE_SUFFIX, RESET_SUFFIX)}
)
COUNT_SQL = """
SELECT count(*) FROM samples
WHERE metric IN (SELECT unnest($metrics)) AND read_time >= $start AND read_time < $end
"""
LATEST_TABLE = """
CREATE TABLE IF NOT EXISTS anomaly_latest (
    device_id VARCHAR PRIMARY KEY,
    device_class VARCHAR,
    time TIMESTAMP NOT NULL,
    score DOUBLE NOT NULL,
    p DOUBLE NOT NULL,
    top_metrics JSON
)"""


@dataclass(frozen=True)
class AnomalyServiceConfig:
    interval_s: float = 10.0  # scoring interval (samples are bucketed to it)
    train_s: float = 3600.0  # history needed before the first score
    # refits follow new operating regimes; a slow fault must not be learned as normal, so
    # they are infrequent and the window long (healthy history keeps most of the weight)
    history_s: float = 12 * 3600.0  # trailing window each refit trains on
    refit_every_s: float = 6 * 3600.0
    lag_s: float = 5.0  # an interval is scored this long after it closes
    alarm_score: float = 0.5  # devices at or above it in a window are left out of refits
    # most of a class alarming at once is a new operating regime (a job starting on racks
    # that were idle all through training), not that many faults: such a class refits
    # early, on all its devices, instead of being left out until the regime ends
    regime_fraction: float = 0.5
    regime_min_devices: int = 8  # classes this small (CRAHs, the plant) never count
    regime_refit_after_s: float = 3600.0  # at most one early refit per this long
    max_chunk_buckets: int = 360  # catch up in pieces of this many intervals
    fit_piece_buckets: int = 30  # a fit reads its history in pieces of this many (memory)
    # issue 24 (memory): a fit trains on at most this many samples of its window (of the
    # metrics the models read, `features.FIT_METRICS`); beyond it, on `fit_blocks` evenly
    # spaced runs of consecutive intervals that hold that many (newest run ending at the
    # fit's end). What a fit holds is bounded by it, whatever the site's size and rate.
    # 0: no cap (every interval of the window).
    fit_max_samples: int = 1_000_000
    fit_blocks: int = 24
    incidents: IncidentConfig = IncidentConfig()  # issue 20: alarms grouped into incidents
    keep_resolved: int = 200  # resolved incidents kept in memory (all stay in DuckDB)


def _naive_utc(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


class AnomalyService:
    def __init__(
        self,
        site: Site,
        store: Store,
        config: AnomalyServiceConfig | None = None,
        sink: Callable[[pl.DataFrame], None] | None = None,
        on_incidents: Callable[[list[dict]], None] | None = None,
    ) -> None:
        self.site = site
        self.sink = sink  # receives every interval's device scores (evaluation, history)
        self.store = store
        self.config = config or AnomalyServiceConfig()
        self.devices = device_table(site)
        self.scorer = FleetScorer(self.devices, self.config.interval_s)
        self.fitted = False
        self.last_fit_bucket = -1
        self.last_alarm: dict[str, int] = {}
        self.latest = _empty_latest()
        self._index: dict[str, int] = {}  # device id -> row of `latest` (built on demand)
        self._index_of: pl.DataFrame | None = None
        self.status = "waiting for history"
        self.history_s = 0.0  # stored history before the first fit (warm-up progress)
        self._lock = threading.Lock()
        self._background: Periodic | None = None
        # incidents (issue 20): grouped alarms, persisted, restored on restart
        self.incidents = IncidentTracker(site, self.config.incidents)
        self.on_incidents = on_incidents  # receives the incidents that changed
        try:
            self.store.cursor().execute(LATEST_TABLE)
            self.store.cursor().execute(INCIDENTS_TABLE)
            self.persist = True
        except duckdb.Error:  # a read-only store: scores stay in memory only
            self.persist = False
        self._restore_incidents()

    # -- data ------------------------------------------------------------------------

    def _bucket_time(self, bucket: int) -> datetime:
        return datetime(1970, 1, 1) + timedelta(seconds=bucket * self.config.interval_s)

    def _load(
        self, lo_bucket: int, hi_bucket: int, metrics: frozenset[str] | None = None
    ) -> pl.DataFrame:
        """Grid of buckets [lo, hi] from the samples table (only ``metrics`` if given)."""
        params = self._window_params(lo_bucket, hi_bucket)
        if metrics is not None:
            params["metrics"] = sorted(metrics)
        sql = GRID_SQL if metrics is None else FIT_GRID_SQL
        return add_rates(self.store.cursor().sql(sql, params=params).pl())

    def _window_params(self, lo_bucket: int, hi_bucket: int) -> dict[str, object]:
        return {
            "step_us": int(round(self.config.interval_s * 1e6)),
            "start": self._bucket_time(lo_bucket),
            "end": self._bucket_time(hi_bucket + 1),
        }

    def fit_blocks(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The runs of buckets [a, b] a fit of [lo, hi] trains on (see fit_max_samples):
        the whole window, or, when it holds more samples of the fit's metrics than the
        cap, fit_blocks evenly spaced runs of equal length holding that many."""
        c = self.config
        span = hi - lo + 1
        keep = span
        if c.fit_max_samples > 0:
            p = self._window_params(lo, hi) | {"metrics": sorted(FIT_METRICS)}
            del p["step_us"]
            row = self.store.cursor().execute(COUNT_SQL, p).fetchone()
            n = int(row[0]) if row is not None else 0
            if n > c.fit_max_samples:
                keep = max(1, span * c.fit_max_samples // n)
        if keep >= span:
            return [(lo, hi)]
        k = max(1, min(c.fit_blocks, keep))
        length = max(1, keep // k)
        if k == 1:
            return [(hi - length + 1, hi)]
        # evenly spaced starts, the first at lo and the last run ending at hi
        gap = (span - length) / (k - 1)
        return [(lo + round(i * gap), lo + round(i * gap) + length - 1) for i in range(k)]

    def _pieces(
        self, lo: int, hi: int, metrics: frozenset[str] | None, floor: int | None = None
    ) -> Iterator[tuple[pl.DataFrame, dict[str, pl.DataFrame]]]:
        """Long grid and class frames of [lo, hi], fit_piece_buckets at a time, each read
        with the context before it (not before ``floor``, default lo) and trimmed to its
        own buckets. The class frames hold the fit's metrics only (all the residuals read;
        issue 24: the wide frames of every metric were the first fit's peak memory)."""
        step = max(1, self.config.fit_piece_buckets)
        floor = lo if floor is None else floor
        for a in range(lo, hi + 1, step):
            b = min(hi, a + step - 1)
            g = self._load(max(floor, a - FIT_CONTEXT_BUCKETS), b, metrics)
            fit_g = g if metrics is not None else g.filter(pl.col("metric").is_in(FIT_GRID_METRICS))
            mine = pl.col("bucket") >= a
            frames = {cls: f.filter(mine) for cls, f in class_frames(fit_g, self.devices).items()}
            del fit_g
            yield g.filter(mine), frames

    def _fit_frames(self, lo: int, hi: int) -> dict[str, pl.DataFrame]:
        """Class frames of the buckets a fit of [lo, hi] trains on, read piece by piece
        (only the fit's metrics), each piece with its context before it; sorted by device
        and bucket as `class_frames` of the whole window would be."""
        parts: dict[str, list[pl.DataFrame]] = {}
        for a, b in self.fit_blocks(lo, hi):
            for _, frames in self._pieces(a, b, FIT_METRICS, floor=lo):
                for cls, f in frames.items():
                    cols = {c for r in residuals_for(cls, f) for c in used_columns(f, r)}
                    if f.height:
                        parts.setdefault(cls, []).append(
                            f.select(c for c in f.columns if c in cols)
                        )
        out = {}
        for cls in list(parts):  # one class at a time: its pieces go as its frame is made
            out[cls] = pl.concat(parts.pop(cls), how="diagonal_relaxed").sort("device_id", "bucket")
        return out

    def _presence(self, lo: int, hi: int) -> pl.DataFrame:
        """Each device's non-empty buckets in [lo, hi] and its first (`fleet.presence`),
        counted by DuckDB an hour (max_chunk_buckets) at a time: the pieces share no
        bucket, so their counts add up, and none holds the whole window's distinct pairs."""
        step = max(1, self.config.max_chunk_buckets)
        parts = [
            self.store.cursor()
            .sql(PRESENCE_SQL, params=self._window_params(a, min(hi, a + step - 1)))
            .pl()
            for a in range(lo, hi + 1, step)
        ]
        return pl.concat(parts).group_by("device_id").agg(pl.col("n").sum(), pl.col("first").min())

    def _newest_bucket(self) -> int | None:
        row = self.store.cursor().execute("SELECT max(read_time) FROM samples").fetchone()
        if row is None or row[0] is None:
            return None
        return math.floor(row[0].replace(tzinfo=UTC).timestamp() / self.config.interval_s)

    def _first_bucket(self) -> int | None:
        row = self.store.cursor().execute("SELECT min(read_time) FROM samples").fetchone()
        if row is None or row[0] is None:
            return None
        return math.floor(row[0].replace(tzinfo=UTC).timestamp() / self.config.interval_s)

    # -- refresh ---------------------------------------------------------------------

    def refresh(self, now: datetime | None = None) -> int:
        """Score every interval that closed since the last refresh; returns how many."""
        with self._lock:
            return self._refresh(_naive_utc(now or datetime.now(UTC)))

    def _refresh(self, now: datetime) -> int:
        c = self.config
        now_s = now.replace(tzinfo=UTC).timestamp()
        upto = math.floor((now_s - c.lag_s) / c.interval_s) - 1
        # event time: never past the newest reading stored (its interval may still be
        # filling), so an ingest outage does not look like every device going silent
        newest = self._newest_bucket()
        upto = min(upto, newest - 1) if newest is not None else upto
        per = lambda s: max(1, round(s / c.interval_s))  # noqa: E731
        if not self.fitted:
            first = self._first_bucket()
            n = 0 if first is None else max(0, upto - first + 1)  # complete intervals
            self.history_s = n * c.interval_s
            if n < per(c.train_s):
                self.status = (
                    f"warming up: {self.history_s / 60:.0f} of {c.train_s / 60:.0f} min of "
                    "history needed before the first scores"
                )
                return 0
            # warm start: stored history (a restart, a store filled beforehand) is fitted
            # at once and, when there is more than enough, the newest complete interval is
            # scored in the same round
            self._fit(upto - 1 if n > per(c.train_s) else upto)
        done = 0
        lo = self.scorer.scored_until + 1
        if upto - lo + 1 > per(c.history_s):  # too far behind: skip to recent history
            self.scorer.scored_until = upto - per(c.history_s)
            lo = self.scorer.scored_until + 1
        while lo <= upto:
            hi = min(upto, lo + c.max_chunk_buckets - 1)
            g = self._load(lo - 4, hi)
            dev, comp = self.scorer.update(g, hi)
            self._record(dev, comp)
            done += hi - lo + 1
            lo = hi + 1
            since = hi - self.last_fit_bucket
            if since >= per(c.refit_every_s) or (
                since >= per(c.regime_refit_after_s)
                and self._regime_classes(
                    set(dev.filter(pl.col("score") >= c.alarm_score)["device_id"])
                )
            ):
                self._fit(hi)
        self.status = f"scored up to {self._bucket_time(upto + 1).isoformat()}Z"
        return done

    def _fit_window(self, upto: int) -> tuple[int, set[str]]:
        """The first bucket a fit ending at `upto` trains on, and the devices it leaves
        out (alarming in the window, unless their whole class alarms: a new regime)."""
        c = self.config
        lo = upto - max(1, round(c.history_s / c.interval_s)) + 1
        exclude = {d for d, b in self.last_alarm.items() if b >= lo}
        regime = self._regime_classes(exclude)
        if regime:
            log.info(
                "anomaly: classes %s alarm as a whole: refitting them on all devices",
                sorted(regime),
            )
            exclude -= set(
                self.devices.filter(pl.col("device_class").is_in(list(regime)))["device_id"]
            )
        return lo, exclude

    def _fit(self, upto: int) -> None:
        lo, exclude = self._fit_window(upto)
        first = lo - 4  # as a catch-up chunk: a few intervals before (lags, rates)
        present = self._presence(first, upto)
        # the streaming states start from the last PRIME_BUCKETS, read piece by piece as
        # the states carry: every metric on the first fit (the raw series), the fit's
        # metrics after (residuals only)
        metrics = None if self.scorer.scored_until < 0 else FIT_METRICS
        p_lo = max(first, upto - PRIME_BUCKETS + 1)
        self.scorer.fit_frames(
            self._fit_frames(first, upto), present, self._pieces(p_lo, upto, metrics), upto, exclude
        )
        self.fitted = True
        self.last_fit_bucket = upto

    def _regime_classes(self, alarming: set[str]) -> set[str]:
        """Classes (of enough devices) of which more than regime_fraction are alarming."""
        c = self.config
        frac = self.devices.group_by("device_class").agg(
            n=pl.len(), hit=pl.col("device_id").is_in(list(alarming)).sum()
        )
        frac = frac.filter(
            (pl.col("n") >= c.regime_min_devices)
            & (pl.col("hit") > c.regime_fraction * pl.col("n"))
        )
        return set(frac["device_class"])

    def _record(self, dev: pl.DataFrame, comp: pl.DataFrame) -> None:
        if dev.height == 0:
            return
        if self.sink is not None:
            self.sink(dev)
        alarms = (
            dev.filter(pl.col("score") >= self.config.alarm_score)
            .group_by("device_id")
            .agg(pl.col("bucket").max())
        )
        for d, b in alarms.iter_rows():
            self.last_alarm[d] = b
        last = dev.sort("bucket").group_by("device_id").last()
        top = (
            comp.join(last.select("device_id", "bucket"), on=["device_id", "bucket"])
            .sort("p")
            .group_by("device_id", maintain_order=True)
            .head(TOP_K * 3)
            .group_by("device_id", maintain_order=True)
            .agg(pl.struct("metric", "component", "p").alias("top"))
        )
        rows = last.join(top, on="device_id", how="left").join(
            self.devices.select("device_id", "device_class"), on="device_id", how="left"
        )
        latest = rows.select(
            "device_id",
            "device_class",
            time=pl.from_epoch(
                (pl.col("bucket") + 1) * int(self.config.interval_s * 1e6), time_unit="us"
            ),
            score="score",
            p="p",
        ).with_columns(
            top_metrics=pl.Series([_explain(t) for t in rows["top"].to_list()], dtype=pl.String)
        )
        self.latest = pl.concat(
            [self.latest.join(latest, on="device_id", how="anti"), latest], how="vertical_relaxed"
        )
        changed = sorted(self.incidents.update(dev))
        self.incidents.take_changed()
        self._forget_resolved()
        docs = [
            self.incidents.incidents[i].to_doc() for i in changed if i in self.incidents.incidents
        ]
        if self.persist:
            self._persist(latest, docs)
        if changed and self.on_incidents is not None:
            self.on_incidents([self._incident_out(self.incidents.incidents[i]) for i in changed])

    def _persist(self, latest: pl.DataFrame, docs: list[dict]) -> None:
        new_rows = latest.to_arrow()  # noqa: F841 - referenced by SQL below
        cur = self.store.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            cur.execute(
                "DELETE FROM anomaly_latest WHERE device_id IN (SELECT device_id FROM new_rows)"
            )
            cur.execute("INSERT INTO anomaly_latest SELECT * FROM new_rows")
            if docs:
                cur.executemany(
                    "INSERT OR REPLACE INTO anomaly_incidents VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        [
                            d["id"],
                            "open" if d["resolved_bucket"] is None else "resolved",
                            d["opened_bucket"],
                            d["last_bucket"],
                            d["root"][0] if d["root"] else None,
                            json.dumps(d),
                        ]
                        for d in docs
                    ],
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _restore_incidents(self) -> None:
        """Open incidents (and the most recent resolved ones) from the store."""
        try:
            rows = (
                self.store.cursor()
                .execute(
                    "SELECT doc FROM anomaly_incidents WHERE state = 'open' OR id IN "
                    "(SELECT id FROM anomaly_incidents ORDER BY last_bucket DESC LIMIT ?)",
                    [self.config.keep_resolved],
                )
                .fetchall()
            )
        except duckdb.Error:  # no table (a read-only store never written by a server)
            return
        self.incidents.restore(json.loads(r[0]) for r in rows)

    def _forget_resolved(self) -> None:
        inc = self.incidents.incidents
        resolved = [i for i, x in inc.items() if x.resolved_bucket is not None]
        for i in sorted(resolved, key=lambda i: inc[i].last_bucket)[: -self.config.keep_resolved]:
            del inc[i]

    # -- views -----------------------------------------------------------------------

    def device(self, device_id: str) -> dict | None:
        # a dict lookup, not a polars filter: API requests call this on the event loop
        lat = self.latest
        if self._index_of is not lat:
            self._index = {d: i for i, d in enumerate(lat["device_id"].to_list())}
            self._index_of = lat
        i = self._index.get(device_id)
        return None if i is None else _row_out(lat.row(i, named=True))

    def top(
        self,
        scope: str = "device",
        device_class: str | None = None,
        min_score: float = 0.0,
        limit: int = 20,
        prefix: str | None = None,
    ) -> list[dict]:
        """Highest scores now, for devices or rolled up per rack or hall."""
        lat = self.latest.join(
            self.devices.select("device_id", "rack_id", "hall"), on="device_id", how="left"
        )
        if device_class:
            lat = lat.filter(pl.col("device_class") == device_class)
        if prefix:
            lat = lat.filter(pl.col("device_id").str.starts_with(prefix))
        if scope == "device":
            # scores saturate at 1: ties go to the smaller p, then the id (a stable order)
            rows = lat.sort(["score", "p", "device_id"], descending=[True, False, False]).filter(
                pl.col("score") >= min_score
            )
            return [
                _row_out(r) | {"scope": "device"} for r in rows.head(limit).iter_rows(named=True)
            ]
        key = {"rack": "rack_id", "hall": "hall"}[scope]
        groups = (
            lat.filter(pl.col(key).is_not_null())
            .sort("p")
            .group_by(key)
            .agg(
                pl.col("p").min().alias("p_min"),
                pl.len().alias("n"),
                (pl.col("score") >= self.config.alarm_score).sum().alias("alarming"),
                pl.col("device_id").first(),
                pl.col("time").max(),
                pl.col("top_metrics").first(),
            )
        )
        groups = groups.with_columns(p=(pl.col("p_min") * pl.col("n")).clip(upper_bound=1.0))
        out = []
        for r in groups.iter_rows(named=True):
            score = float(p_to_score(r["p"]))
            if score >= min_score:
                out.append(
                    {
                        "id": r[key],
                        "scope": scope,
                        "device_class": None,
                        "score": round(score, 4),
                        "p": r["p"],
                        "time": r["time"],
                        "devices": r["n"],
                        "devices_alarming": r["alarming"],
                        "top_device": r["device_id"],
                        "top_metrics": json.loads(r["top_metrics"] or "[]"),
                    }
                )
        # scores saturate at 1 (and group_by order is arbitrary): ties go to the smaller p
        out.sort(key=lambda x: (-x["score"], x["p"], x["id"]))
        return out[:limit]

    # -- incidents (issue 20) ----------------------------------------------------------

    @property
    def warming_up(self) -> bool:
        return not self.fitted

    def warmup(self) -> dict:
        """Whether scores exist yet and, if not, how much stored history is needed."""
        return {
            "warming_up": not self.fitted,
            "history_s": round(self.history_s, 1),
            "history_needed_s": self.config.train_s,
        }

    def incident_list(self, state: str = "open", limit: int = 20) -> list[dict]:
        """Incidents, open first then newest first (``state``: open, resolved or all)."""
        # list() in one C call: the refresh thread may add incidents meanwhile
        every = list(self.incidents.incidents.values())
        incs = [i for i in every if state == "all" or i.state == state]
        incs.sort(key=lambda i: (i.state != "open", -i.last_bucket, -i.peak_score, i.id))
        return [self._incident_out(i) for i in incs[:limit]]

    def incident(self, incident_id: str) -> dict | None:
        inc = self.incidents.incidents.get(incident_id)
        return None if inc is None else self._incident_out(inc)

    def open_incidents(self) -> list[dict]:
        return [self._incident_out(self.incidents.incidents[i]) for i in list(self.incidents.open)]

    def _incident_out(self, inc: Incident) -> dict:
        rel = self.incidents.rel
        root = inc.root[0] if inc.root else None

        def relation(d: str) -> str:
            if d == root:
                return "root_cause"
            if root is None:
                return "related"
            if d in rel.children.get(root, set()):
                return "child"
            if d in rel.parents.get(root, set()):
                return "parent"
            if not rel.keys.get(d, frozenset()).isdisjoint(rel.keys.get(root, frozenset())):
                return "same_rack"
            return "related"

        def member(d: str) -> dict:
            m = inc.members[d]
            return {
                "device_id": d,
                "device_class": m.device_class,
                "relation": relation(d),
                "first_alarm": self._bucket_time(m.first_bucket + 1),
                "last_alarm": self._bucket_time(m.last_bucket + 1),
                "peak_score": round(m.peak_score, 4),
                "p": m.min_p,
                "metric": m.top_metric,
                "component": m.top_component,
                "alarm_intervals": m.alarm_intervals,
            }

        ranked = inc.root[: self.config.incidents.max_members]
        suspects = [member(d) for d in inc.root[:TOP_K]]
        now = self.device(root) if root is not None else None
        return {
            "id": inc.id,
            "state": inc.state,
            "severity": self.incidents.severity(inc),
            "score": round(inc.peak_score, 4),
            "opened": self._bucket_time(inc.opened_bucket + 1),
            "last_alarm": self._bucket_time(inc.last_bucket + 1),
            "resolved": None
            if inc.resolved_bucket is None
            else self._bucket_time(inc.resolved_bucket + 1),
            "root_cause": suspects[0] if suspects else None,
            "suspects": suspects,
            "root_cause_now": now["top_metrics"] if now is not None else [],
            "devices": len(inc.members),
            "alarms": [member(d) for d in ranked],
        }

    def start_background(self, every_s: float | None = None) -> None:
        """Refresh in a daemon thread every ``every_s`` (default: the scoring interval), so
        callers such as the alert engine read scores without waiting for a refit."""
        if self._background is None:
            self._background = Periodic(
                self.refresh, every_s or self.config.interval_s, "anomaly-scorer", wait_first=False
            )
        self._background.start()

    def stop_background(self) -> None:
        if self._background is not None:
            self._background.stop()

    def health(self, stale_after_s: float) -> ComponentHealth:
        """Its background refresh's health (not_running when it was not started)."""
        if self._background is None:
            return ComponentHealth("not_running")
        return self._background.health(stale_after_s)

    @property
    def running(self) -> bool:
        """Whether the background refresh is running (else readers refresh on demand)."""
        return self._background is not None and self._background.running

    def scores(self) -> dict[str, float]:
        return dict(
            zip(self.latest["device_id"].to_list(), self.latest["score"].to_list(), strict=True)
        )


def _explain(top: list[dict] | None) -> str:
    """Top contributing metrics (one entry per metric, its strongest component)."""
    seen: dict[str, dict] = {}
    for t in top or []:
        if t["metric"] not in seen and len(seen) < TOP_K:
            seen[t["metric"]] = {
                "metric": t["metric"],
                "component": t["component"],
                "score": round(float(p_to_score(t["p"])), 4),
            }
    return json.dumps(list(seen.values()))


def _row_out(r: dict) -> dict:
    return {
        "id": r["device_id"],
        "device_class": r["device_class"],
        "score": round(float(r["score"]), 4),
        "p": r["p"],
        "time": r["time"],
        "top_metrics": json.loads(r["top_metrics"] or "[]"),
    }


def _empty_latest() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "device_id": pl.String,
            "device_class": pl.String,
            "time": pl.Datetime("us"),
            "score": pl.Float64,
            "p": pl.Float64,
            "top_metrics": pl.String,
        }
    )


def anomaly_provider(service: AnomalyService) -> Callable[[datetime], dict[str, float]]:
    """Provider for the alert engine (``Providers(anomaly_score=...)``): the latest scores.

    The server's background refresh keeps ``service`` current, so a rule never waits for a
    scoring round or a refit. Devices not scored yet (warm-up) are absent."""

    def provide(now: datetime) -> dict[str, float]:
        return service.scores()

    return provide


def incidents_provider(service: AnomalyService) -> Callable[[datetime], list[dict]]:
    """Provider for `anomaly_incident` alert rules: the open incidents now (issue 20)."""

    def provide(now: datetime) -> list[dict]:
        return service.open_incidents()

    return provide
