"""Live capacity: headroom from the twin's state and the demand forecast from its history.

`CapacityService.refresh()` is the server's background job (dctwin/server.py, every
`refresh_s`): it recomputes headroom from the twin's last tick and, every
`forecast_every_s`, the forecast from the rollup history. Routes and the Prometheus
provider read the results it keeps (one headroom frame per basis, one forecast: bounded);
without the job (an app built without a server) a read computes them when older than
the refresh period.

Used load, basis `peak` (the default): per rack and CDU loop the higher of the latest
tick and the highest tick of the last `peak_window_h` (twin_rollups); CRAH and plant
loads and the outdoor wet-bulb are the latest readings. Basis `latest`: the tick only.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from ingest.history import query_series
from twin.capacity.forecast import (
    HOUR_S,
    Forecast,
    ForecastConfig,
    ForecastError,
    Runout,
    forecast,
    runout,
)
from twin.capacity.headroom import STATE_SCHEMA, headroom
from twin.state import Twin

BASES = ("peak", "latest")
FORECAST_RESOURCES = ("power", "cooling")


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    refresh_s: float = 30.0
    peak_window_h: float = 24.0
    forecast_every_s: float = 3600.0
    history_days: float = 60.0
    forecast: ForecastConfig = field(default_factory=ForecastConfig)


@dataclass(slots=True)
class HeadroomResult:
    time: datetime  # naive UTC of the twin tick it reads
    basis: str
    frame: pl.DataFrame


@dataclass(slots=True)
class SeriesForecast:
    scope: str  # hall id or site id
    resource: str  # power (IT input) or cooling (heat to remove)
    forecast: Forecast | None
    error: str | None
    capacity_n_kw: float | None
    capacity_n1_kw: float | None
    runout_n: Runout | None
    runout_n1: Runout | None


@dataclass(slots=True)
class ForecastResult:
    time: datetime
    history_start: datetime
    series: list[SeriesForecast]


def _f(v: object) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)  # type: ignore[arg-type]


class CapacityService:
    def __init__(self, twin: Twin, config: CapacityConfig | None = None) -> None:
        self.twin = twin
        self.config = config or CapacityConfig()
        self._lock = threading.Lock()
        self._headroom: dict[str, tuple[float, HeadroomResult]] = {}
        self._forecast: tuple[float, ForecastResult] | None = None

    # -- state --------------------------------------------------------------------------

    def state(self, basis: str = "peak") -> tuple[datetime, pl.DataFrame]:
        """The twin's state as headroom's state frame (twin/capacity/headroom.py)."""
        tick = self.twin.current()
        sc = self.twin.scope_index
        cols = tick.rollups
        rack_ids = sc.ids[sc.slices["rack"]]
        cdu_ids = sc.ids[sc.slices["cdu"]]
        rack_kw = np.asarray(cols["power_kw"][sc.slices["rack"]], dtype=float)
        cdu_kw = np.asarray(cols["heat_liquid_kw"][sc.slices["cdu"]], dtype=float)
        if basis == "peak":
            peak = self._peaks(tick.time)
            rack_kw = np.fmax(
                rack_kw, np.array([peak.get((i, "power_kw"), np.nan) for i in rack_ids])
            )
            cdu_kw = np.fmax(
                cdu_kw, np.array([peak.get((i, "heat_liquid_kw"), np.nan) for i in cdu_ids])
            )
        ids = list(rack_ids) + list(cdu_ids)
        metrics = ["power_kw"] * len(rack_ids) + ["heat_kw"] * len(cdu_ids)
        values = list(rack_kw) + list(cdu_kw)
        live = self.twin.latest_readings
        now_ms = tick.time_ms
        stale_ms = self.twin.stale_after_s * 1000.0
        lay = self.twin.layout
        wanted = [(i, "cooling_kw", "heat_kw") for i in lay.crah_ids] + [
            (lay.plant_id, "cooling_load_kw", "heat_kw"),
            (lay.plant_id, "outdoor_wetbulb_c", "outdoor_wetbulb_c"),
        ]
        for dev, metric, as_metric in wanted:
            got = live.reading(dev, metric)
            if got is not None and now_ms - got[1] <= stale_ms:  # stale: not used
                ids.append(dev)
                metrics.append(as_metric)
                values.append(got[0])
        frame = pl.DataFrame({"id": ids, "metric": metrics, "value": values}, schema=STATE_SCHEMA)
        return tick.time, frame

    def _peaks(self, now: datetime) -> dict[tuple[str, str], float]:
        since = now - timedelta(hours=self.config.peak_window_h)
        rows = (
            self.twin.store.cursor()
            .execute(
                "SELECT scope_id, max(power_kw), max(heat_liquid_kw) FROM twin_rollups "
                "WHERE level IN ('rack', 'cdu') AND time >= ? AND time <= ? GROUP BY scope_id",
                [since, now],
            )
            .fetchall()
        )
        out: dict[tuple[str, str], float] = {}
        for scope, p, q in rows:
            if p is not None:
                out[(scope, "power_kw")] = p
            if q is not None:
                out[(scope, "heat_liquid_kw")] = q
        return out

    # -- headroom -----------------------------------------------------------------------

    def compute_headroom(self, basis: str = "peak") -> HeadroomResult:
        at, state = self.state(basis)
        res = HeadroomResult(at, basis, headroom(self.twin.site, state))
        with self._lock:
            self._headroom[basis] = (time.monotonic(), res)
        return res

    def headroom(self, basis: str = "peak") -> HeadroomResult:
        """The kept result when younger than the refresh period, else a fresh one."""
        with self._lock:
            kept = self._headroom.get(basis)
        if kept is not None and time.monotonic() - kept[0] <= self.config.refresh_s:
            return kept[1]
        return self.compute_headroom(basis)

    def kept_headroom(self, basis: str = "peak") -> HeadroomResult | None:
        with self._lock:
            kept = self._headroom.get(basis)
        return None if kept is None else kept[1]

    # -- forecast -----------------------------------------------------------------------

    def _hourly(self, scope: str, start: datetime, end: datetime) -> dict[str, np.ndarray]:
        rs = self.twin.rollup_store
        grid = pl.DataFrame(
            {"bucket": pl.datetime_range(start, end, "1h", eager=True, closed="left")}
        ).with_columns(pl.col("bucket").cast(pl.Datetime("us")))

        def col(name: str) -> pl.Series:
            _src, df = rs.series(scope, name, start, end, HOUR_S)
            df = df.select(pl.col("bucket").cast(pl.Datetime("us")), pl.col("mean").alias(name))
            return grid.join(df, on="bucket", how="left")[name]

        temp = query_series(
            self.twin.store.cursor(),
            self.twin.layout.plant_id,
            "outdoor_drybulb_c",
            start,
            end,
            HOUR_S,
        )
        temp = temp.select(pl.col("bucket").cast(pl.Datetime("us")), pl.col("mean").alias("t"))
        t_c = grid.join(temp, on="bucket", how="left")["t"]
        t_s = grid["bucket"].dt.epoch("s").to_numpy().astype(float)
        return {
            "t_s": t_s,
            "power": col("power_kw").to_numpy().astype(float),
            "cooling": (col("heat_liquid_kw") + col("heat_air_kw").fill_null(0.0))
            .to_numpy()
            .astype(float),
            "temp": t_c.to_numpy().astype(float),
        }

    def _capacities(self, frame: pl.DataFrame) -> dict[tuple[str, str], tuple[float | None, ...]]:
        """(scope, resource) -> (N, N-1) capacity in the forecast's terms."""
        out: dict[tuple[str, str], tuple[float | None, ...]] = {}
        sid = self.twin.site.site.id
        halls = frame.filter(pl.col("kind") == "hall")
        for hall in halls["id"].unique().to_list():
            h = halls.filter(pl.col("id") == hall)
            p = h.filter(pl.col("resource") == "power")
            c = h.filter(pl.col("resource").is_in(["cooling_liquid", "cooling_air"]))
            out[(hall, "power")] = (_f(p["capacity_n_kw"].sum()), _f(p["capacity_n1_kw"].sum()))
            out[(hall, "cooling")] = (
                _f(c["capacity_n_kw"].sum()),
                _f(c["capacity_n1_kw"].sum()),
            )
        ups = frame.filter(pl.col("kind") == "ups").row(0, named=True)
        # UPS capacity on the IT-input side: scaled by the PDU losses of the current load
        it_kw = frame.filter(pl.col("kind") == "hall", pl.col("resource") == "power")[
            "used_kw"
        ].sum()
        ratio = it_kw / ups["used_kw"] if ups["used_kw"] else None
        if ratio is None or not math.isfinite(ratio) or ratio <= 0:
            effs = [p.efficiency for h in self.twin.site.halls for p in h.pdus]
            ratio = float(np.mean(effs)) if effs else 1.0
        out[(sid, "power")] = (ups["capacity_n_kw"] * ratio, ups["capacity_n1_kw"] * ratio)
        plant = frame.filter(pl.col("kind") == "plant", pl.col("weather") == "design_day")
        out[(sid, "cooling")] = (
            _f(plant["capacity_n_kw"][0]) if plant.height else None,
            _f(plant["capacity_n1_kw"][0]) if plant.height else None,
        )
        return out

    def compute_forecast(self) -> ForecastResult:
        cfg = self.config
        end = self.twin.current().time.replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=cfg.history_days)
        caps = self._capacities(self.headroom("peak").frame)
        scopes = [*self.twin.layout.hall_ids, self.twin.layout.site_id]
        series: list[SeriesForecast] = []
        for scope in scopes:
            data = self._hourly(scope, start, end)
            for resource in FORECAST_RESOURCES:
                cap_n, cap_n1 = caps.get((scope, resource), (None, None))
                try:
                    fc = forecast(data["t_s"], data[resource], data["temp"], cfg.forecast)
                except ForecastError as exc:
                    series.append(
                        SeriesForecast(scope, resource, None, str(exc), cap_n, cap_n1, None, None)
                    )
                    continue
                series.append(
                    SeriesForecast(
                        scope,
                        resource,
                        fc,
                        None,
                        cap_n,
                        cap_n1,
                        runout(fc, cap_n),
                        runout(fc, cap_n1),
                    )
                )
        res = ForecastResult(end, start, series)
        with self._lock:
            self._forecast = (time.monotonic(), res)
        return res

    def forecast(self) -> ForecastResult:
        with self._lock:
            kept = self._forecast
        if kept is not None and time.monotonic() - kept[0] <= self.config.forecast_every_s:
            return kept[1]
        return self.compute_forecast()

    def kept_forecast(self) -> ForecastResult | None:
        with self._lock:
            return None if self._forecast is None else self._forecast[1]

    # -- the server's background job ----------------------------------------------------

    def refresh(self) -> None:
        for basis in BASES:
            self.compute_headroom(basis)
        kept = self._forecast
        if kept is None or time.monotonic() - kept[0] >= self.config.forecast_every_s:
            self.compute_forecast()
