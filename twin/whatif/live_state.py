"""The twin's live state as a what-if starts from it (domain.whatif.LiveState).

From the store's `latest` table: every GPU's utilisation, temperature and power, the
plant's setpoints, water temperatures and outdoor conditions, the CRAHs' supply-air
setpoints. Only readings within `stale_after_s` of the newest GPU reading count; the
state's time is that newest reading (so a what-if of a site whose telemetry stopped
starts when the site was last seen, not now).

Each GPU's readings of the last `CALIBRATION_WINDOW_S` (temperature and power from the
`samples` table, paired by read time, oldest first) come with the state: the what-if fits
the GPU's coolant-to-die thermal resistance over them (simulator/whatif.py), where a single
reading is off by the 1 K temperature resolution, the sensor's read noise and the die's
20 s lag behind a load that moved.
"""

from __future__ import annotations

import polars as pl

from domain.whatif import LiveState
from ingest.store import Store

GPU_METRICS = {"util_gpu_pct": "gpu_util", "gpu_temp_c": "gpu_temp_c", "power_w": "gpu_power_w"}
PLANT = {
    "outdoor_drybulb_c": "outdoor_drybulb_c",
    "outdoor_wetbulb_c": "outdoor_wetbulb_c",
    "chw_supply_temp_c": "chw_supply_c",
    "cw_supply_temp_c": "cw_supply_c",
}
SETPOINTS = ("chw_supply_setpoint_c", "cw_supply_setpoint_c")
# 10 min: 60 reads at the 10 s telemetry rate, enough to average the 1 K resolution and
# the load's swings, short enough that the coolant and the part stay as they are now
CALIBRATION_WINDOW_S = 600.0
# per GPU: its temperature and power reads of the window, paired by read time (one
# query, grouped in DuckDB: no per-sample Python)
WINDOW_SQL = """
WITH w AS (
    SELECT device_id, read_time,
        max(value) FILTER (WHERE metric = 'gpu_temp_c') AS temp_c,
        max(value) FILTER (WHERE metric = 'power_w') AS power_w
    FROM samples
    WHERE kind = 'gpu' AND metric IN ('gpu_temp_c', 'power_w')
        AND read_time > make_timestamp($since_us) AND read_time <= make_timestamp($until_us)
    GROUP BY device_id, read_time
)
SELECT device_id, list(temp_c ORDER BY read_time) AS temp_c,
    list(power_w ORDER BY read_time) AS power_w
FROM w WHERE temp_c IS NOT NULL AND power_w IS NOT NULL
GROUP BY device_id
"""


class NoLiveStateError(ValueError):
    """The twin has no GPU telemetry yet: nothing to start from."""


def live_state(
    store: Store,
    stale_after_s: float,
    pue: float | None = None,
    known: set[str] | None = None,
    window_s: float = CALIBRATION_WINDOW_S,
) -> LiveState:
    """`known`: the site's device ids; readings of other devices (not in the site file)
    are not part of the state. `window_s`: the GPUs' recent readings carried (0: none)."""
    metrics = [*GPU_METRICS, *PLANT, *SETPOINTS, "supply_air_setpoint_c", "supply_temp_c"]
    df = pl.from_arrow(
        store.cursor()
        .sql(
            "SELECT device_id, metric, value, epoch_ms(read_time) AS t_ms, kind FROM latest "
            "WHERE list_contains($metrics, metric)",
            params={"metrics": metrics},
        )
        .to_arrow_table()
    )
    assert isinstance(df, pl.DataFrame)
    if known is not None:
        df = df.filter(pl.col("device_id").is_in(list(known)))
    gpus = df.filter(pl.col("kind") == "gpu")
    if gpus.is_empty():
        raise NoLiveStateError("no GPU telemetry yet: the twin has no live state to start from")
    t_ms = int(gpus["t_ms"].max())  # type: ignore[arg-type]
    df = df.filter(pl.col("t_ms") >= t_ms - stale_after_s * 1000.0)
    st = LiveState(time_s=t_ms / 1000.0, pue=pue)

    def pairs(kind: str, metric: str) -> dict[str, float]:
        part = df.filter((pl.col("kind") == kind) & (pl.col("metric") == metric))
        return dict(zip(part["device_id"].to_list(), part["value"].to_list(), strict=True))

    st.gpu_util = {k: v / 100.0 for k, v in pairs("gpu", "util_gpu_pct").items()}
    st.gpu_temp_c = pairs("gpu", "gpu_temp_c")
    st.gpu_power_w = pairs("gpu", "power_w")
    st.crah_supply_setpoint_c = pairs("air", "supply_air_setpoint_c")
    st.cdu_supply_c = pairs("cooling", "supply_temp_c")
    for metric, attr in PLANT.items():
        vals = list(pairs("facility", metric).values())
        if vals:
            setattr(st, attr, float(vals[0]))
    for name in SETPOINTS:
        vals = list(pairs("facility", name).values())
        if vals:
            st.setpoints[name] = float(vals[0])
    if window_s > 0:
        _windows(store, st, t_ms, window_s, set(st.gpu_temp_c))
    return st


def _windows(store: Store, st: LiveState, t_ms: int, window_s: float, gpus: set[str]) -> None:
    """The GPUs' (in `gpus`) reads of the `window_s` up to `t_ms` into `st`."""
    w = pl.from_arrow(
        store.cursor()
        .sql(
            WINDOW_SQL,
            params={"since_us": int((t_ms - window_s * 1000.0) * 1000), "until_us": t_ms * 1000},
        )
        .to_arrow_table()
    )
    assert isinstance(w, pl.DataFrame)
    w = w.filter(pl.col("device_id").is_in(list(gpus)))
    ids = w["device_id"].to_list()
    st.gpu_temp_window_c = dict(zip(ids, w["temp_c"].to_list(), strict=True))
    st.gpu_power_window_w = dict(zip(ids, w["power_w"].to_list(), strict=True))
