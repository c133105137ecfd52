"""The twin's live state as a what-if starts from it (domain.whatif.LiveState).

From the store's `latest` table: every GPU's utilisation, temperature and power, the
plant's setpoints, water temperatures and outdoor conditions, the CRAHs' supply-air
setpoints. Only readings within `stale_after_s` of the newest GPU reading count; the
state's time is that newest reading (so a what-if of a site whose telemetry stopped
starts when the site was last seen, not now).
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


class NoLiveStateError(ValueError):
    """The twin has no GPU telemetry yet: nothing to start from."""


def live_state(
    store: Store, stale_after_s: float, pue: float | None = None, known: set[str] | None = None
) -> LiveState:
    """`known`: the site's device ids; readings of other devices (not in the site file)
    are not part of the state."""
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
    return st
