"""Carbon and water (issue 27, item 4): CUE (ISO/IEC 30134-8) and WUE (ISO/IEC 30134-9).

CUE = the CO2-equivalent emissions of the energy the data centre takes / IT energy, in
kgCO2e/kWh. With a time-varying grid, each hour's facility energy is weighed by that
hour's grid carbon intensity: CUE = sum_h(E_facility,h * CI_h) / 1000 / sum_h(E_IT,h).
WUE = site water use / IT energy, in L/kWh; the water is the cooling towers' make-up
(evaporation + blowdown), metered as the plant's `makeup_water_lpm` (a flow: an hour's
litres = its mean flow x 60 min).

Grid carbon intensity: a CSV file or an HTTP(S) URL that returns one, two columns with a
header, `timestamp,gco2e_per_kwh`; timestamps RFC 3339 (a zone or Z; naive = UTC), rising;
each value holds from its timestamp until the next (hourly is usual; the last holds one
hour). Flexible load (a site input, settings DCTWIN_FLEX_LOAD_*): `kw` of IT load that
runs `hours` a day starting at `start_hour` UTC and may move within the day; the advice
gives, per day, the window of lowest mean intensity and the kgCO2e moving there saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import polars as pl

from ingest.history import query_series

Period = Literal["day", "month"]
HOUR_S = 3600.0


class IntensityError(ValueError):
    """The carbon-intensity series cannot be read; the message names source and line."""


def cue(facility_kwh: np.ndarray, intensity_g_per_kwh: np.ndarray, it_kwh: np.ndarray) -> float:
    """kgCO2e per kWh of IT energy; NaN when there is no IT energy."""
    it = float(np.sum(it_kwh))
    return float(np.sum(facility_kwh * intensity_g_per_kwh) / 1000.0 / it) if it > 0 else np.nan


def wue(water_l: np.ndarray, it_kwh: np.ndarray) -> float:
    """Litres of site water per kWh of IT energy; NaN when there is no IT energy."""
    it = float(np.sum(it_kwh))
    return float(np.sum(water_l) / it) if it > 0 else np.nan


def parse_intensity(text: str, source: str) -> pl.DataFrame:
    """(time naive UTC, gco2e_per_kwh) from CSV text; IntensityError naming the line."""
    lines = text.strip().splitlines()
    if not lines or [c.strip() for c in lines[0].split(",")] != ["timestamp", "gco2e_per_kwh"]:
        raise IntensityError(f"{source}: line 1: the header must be 'timestamp,gco2e_per_kwh'")
    times: list[datetime] = []
    values: list[float] = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise IntensityError(f"{source}: line {n}: expected 2 fields, got {len(parts)}")
        try:
            t = datetime.fromisoformat(parts[0].replace("Z", "+00:00"))
        except ValueError:
            raise IntensityError(
                f"{source}: line {n}: {parts[0]!r} is not an RFC 3339 time"
            ) from None
        try:
            v = float(parts[1])
        except ValueError:
            raise IntensityError(f"{source}: line {n}: {parts[1]!r} is not a number") from None
        if not 0.0 <= v <= 5000.0:
            raise IntensityError(f"{source}: line {n}: {v} gCO2e/kWh is outside [0, 5000]")
        if t.tzinfo is not None:
            t = t.astimezone(UTC).replace(tzinfo=None)
        if times and t <= times[-1]:
            raise IntensityError(f"{source}: line {n}: timestamps must rise")
        times.append(t)
        values.append(v)
    if not times:
        raise IntensityError(f"{source}: no rows")
    return pl.DataFrame({"time": times, "gco2e_per_kwh": values})


def load_intensity(source: str, timeout_s: float = 10.0) -> pl.DataFrame:
    """The series from a file path or an http(s) URL."""
    if source.startswith(("http://", "https://")):
        try:
            resp = httpx.get(source, timeout=timeout_s)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise IntensityError(f"{source}: {exc}") from exc
        return parse_intensity(resp.text, source)
    try:
        return parse_intensity(Path(source).read_text(), source)
    except OSError as exc:
        raise IntensityError(f"{source}: {exc}") from exc


def intensity_at(series: pl.DataFrame, times: list[datetime]) -> np.ndarray:
    """The intensity in force at each time (NaN before the first or past the last + 1 h)."""
    if not times:
        return np.empty(0)
    q = pl.DataFrame({"time": times}).with_row_index("i").sort("time")
    last = series["time"][-1]
    j = q.join_asof(series.sort("time"), on="time", strategy="backward")
    j = j.with_columns(
        pl.when(pl.col("time") >= last + timedelta(seconds=HOUR_S))
        .then(None)
        .otherwise(pl.col("gco2e_per_kwh"))
        .alias("gco2e_per_kwh")
    ).sort("i")
    return j["gco2e_per_kwh"].fill_null(np.nan).to_numpy().astype(float)


@dataclass(frozen=True)
class FlexibleLoad:
    kw: float
    hours: int
    start_hour: int = 0  # UTC hour it runs from today


def flexible_advice(series: pl.DataFrame, flex: FlexibleLoad, pue: float) -> list[dict[str, Any]]:
    """Per whole UTC day of the series: the window of `hours` consecutive hours with the
    lowest mean intensity against the documented schedule, and the kgCO2e the shift
    saves: kw x pue x sum(CI_schedule - CI_best) / 1000 (facility energy follows IT)."""
    hourly = (
        series.sort("time")
        .upsample("time", every="1h")
        .with_columns(pl.col("gco2e_per_kwh").forward_fill())
        .filter(pl.col("time").dt.minute() == 0)
    )
    out = []
    for (day,), part in hourly.group_by(pl.col("time").dt.date(), maintain_order=True):
        if part.height < 24:
            continue  # only whole days
        ci = part.sort("time")["gco2e_per_kwh"].to_numpy()[:24]
        h = flex.hours
        window = np.convolve(ci, np.ones(h), "valid")  # sum over each start hour
        sched = flex.start_hour if flex.start_hour + h <= 24 else 24 - h
        best = int(np.argmin(window))
        saved_kg = flex.kw * pue * (window[sched] - window[best]) / 1000.0
        out.append(
            {
                "day": str(day),
                "scheduled_start_hour": sched,
                "best_start_hour": best,
                "scheduled_mean_gco2e_per_kwh": round(float(window[sched] / h), 2),
                "best_mean_gco2e_per_kwh": round(float(window[best] / h), 2),
                "saving_kgco2e": round(float(saved_kg), 3),
                "shift": best != sched and saved_kg > 0,
            }
        )
    return out


class SustainabilityService:
    """Daily and monthly CUE and WUE of the site from the twin's energy and the plant's
    make-up water meter; flexible-load advice from the intensity series."""

    def __init__(
        self,
        twin: Any,  # twin.state.Twin (Any: keeps this module free of the twin's imports)
        intensity_source: str | None = None,
        flex: FlexibleLoad | None = None,
    ) -> None:
        self.twin, self.intensity_source, self.flex = twin, intensity_source, flex
        self._series: pl.DataFrame | None = None

    def intensity(self) -> pl.DataFrame | None:
        """The series, re-read on each call from a URL (it may be a forecast), once from a
        file."""
        if self.intensity_source is None:
            return None
        if self._series is None or self.intensity_source.startswith("http"):
            self._series = load_intensity(self.intensity_source)
        return self._series

    def hourly(self, start: datetime, end: datetime) -> pl.DataFrame:
        """Per hour: facility and IT energy (kWh, as the PUE figures), make-up water (L)."""
        fig = self.twin.pue_interval("site", start, end, step_s=HOUR_S)
        rows = [
            (f.start, f.total, f.it)
            for f in fig.series
            if f.start is not None and f.total is not None and f.it is not None
        ]
        energy = pl.DataFrame(
            {
                "time": [r[0] for r in rows],
                "facility_kwh": [float(r[1]) for r in rows],
                "it_kwh": [float(r[2]) for r in rows],
            },
            schema={"time": pl.Datetime("us"), "facility_kwh": pl.Float64, "it_kwh": pl.Float64},
        )
        water = query_series(
            self.twin.store.cursor(),
            self.twin.site.plant_id(),
            "makeup_water_lpm",
            start,
            end,
            HOUR_S,
        )
        if water.height:
            tcol = water.columns[0]
            water = water.select(
                pl.col(tcol).cast(pl.Datetime("us")).alias("time"),
                (pl.col("mean") * 60.0).alias("water_l"),
            )
        else:
            water = pl.DataFrame(schema={"time": pl.Datetime("us"), "water_l": pl.Float64})
        return energy.join(water, on="time", how="left")

    def figures(self, period: Period, start: datetime, end: datetime) -> dict[str, Any]:
        h = self.hourly(start, end)
        series = self.intensity()
        ci = (
            intensity_at(series, h["time"].to_list())
            if series is not None
            else np.full(h.height, np.nan)
        )
        h = h.with_columns(pl.Series("gco2e_per_kwh", ci, dtype=pl.Float64).fill_nan(None))
        trunc = "1d" if period == "day" else "1mo"
        rows = []
        for (t,), p in h.group_by(pl.col("time").dt.truncate(trunc), maintain_order=True):
            with_ci = p.filter(pl.col("gco2e_per_kwh").is_not_null())
            with_w = p.filter(pl.col("water_l").is_not_null())
            rows.append(
                {
                    "start": t.replace(tzinfo=UTC).isoformat(),
                    "hours": p.height,
                    "it_energy_kwh": round(float(p["it_kwh"].sum()), 3),
                    "facility_energy_kwh": round(float(p["facility_kwh"].sum()), 3),
                    "emissions_kgco2e": round(
                        float((with_ci["facility_kwh"] * with_ci["gco2e_per_kwh"]).sum()) / 1000.0,
                        3,
                    )
                    if with_ci.height
                    else None,
                    "cue_kgco2e_per_kwh": _num(
                        cue(
                            with_ci["facility_kwh"].to_numpy(),
                            with_ci["gco2e_per_kwh"].to_numpy(),
                            with_ci["it_kwh"].to_numpy(),
                        )
                    )
                    if with_ci.height
                    else None,
                    "cue_hours": with_ci.height,
                    "water_l": round(float(with_w["water_l"].sum()), 1) if with_w.height else None,
                    "wue_l_per_kwh": _num(
                        wue(with_w["water_l"].to_numpy(), with_w["it_kwh"].to_numpy())
                    )
                    if with_w.height
                    else None,
                    "wue_hours": with_w.height,
                }
            )
        rows.sort(key=lambda r: r["start"])
        it, fac = float(h["it_kwh"].sum()), float(h["facility_kwh"].sum())
        pue = fac / it if it > 0 else 1.0
        advice = (
            flexible_advice(series, self.flex, pue)
            if series is not None and self.flex is not None
            else []
        )
        return {
            "period": period,
            "start": start.replace(tzinfo=UTC).isoformat(),
            "end": end.replace(tzinfo=UTC).isoformat(),
            "intensity_source": self.intensity_source,
            "figures": rows,
            "flexible_load": None
            if self.flex is None
            else {"kw": self.flex.kw, "hours": self.flex.hours, "start_hour": self.flex.start_hour},
            "advice": advice,
            "saving_kgco2e_total": round(sum(a["saving_kgco2e"] for a in advice), 3),
        }


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)
