"""Per-class feature frames and the physics residuals defined on them.

Each device class gets a wide frame (one row per device and bucket) holding its own
metrics plus what physics says drives them: the coolant temperature of the CDU that
cools a GPU, the IT power a CDU loop or a CRAH's hall carries, the median of a rack's
GPUs (its peers run the same job). A `Residual` names a target column and its drivers;
residuals.py fits target ~ drivers per device on healthy history, and what the fit
cannot explain is the residual the detectors watch:

- GPU temperature against power (with the thermal lag) and coolant temperature: a
  degraded thermal interface raises it long before any temperature threshold.
- PSU input power against output power (the efficiency curve): aging shows as loss.
- CDU flow and pressure against pump speed: a worn pump needs more speed for the flow.
- CDU heat balance: flow x (return - supply) against the IT power of the loop's racks.
- CRAH fan speed and air temperature rise against the hall's air-side load.
- Chiller power against cooling load and water temperatures (COP): low refrigerant.

A residual whose columns a site does not report is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from twin.anomaly.frames import wide


@dataclass(frozen=True)
class Residual:
    name: str
    device_class: str
    target: str
    drivers: tuple[str, ...]
    blame: str  # metric named in explanations
    pooled: bool = False  # one fit for the class (+ per-device offset) instead of per device
    common: str | None = None  # group whose shared residual (median) is removed

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.target, *self.drivers)


RESIDUALS: tuple[Residual, ...] = (
    # die (and memory) temperature above the coolant against power, with the thermal lag
    # and the rack's coolant rise: the coolant's own coefficient is 1 by physics (it barely
    # moves in healthy history, so it could not be learned)
    Residual(
        "gpu_thermal",
        "gpu",
        "gpu_rise_k",
        ("power_w", "power_w_lag1", "power_w_lag2", "rack_heat_per_flow"),
        "gpu_temp_c",
        common="rack_id",
    ),
    Residual(
        "gpu_mem_thermal",
        "gpu",
        "mem_rise_k",
        ("power_w", "power_w_lag1", "power_w_lag2", "rack_heat_per_flow"),
        "mem_temp_c",
        common="rack_id",
    ),
    Residual("gpu_power_peer", "gpu", "power_w", ("peer_power_w",), "power_w"),  # node-mates
    Residual(
        "psu_loss",
        "psu",
        "input_power_w",
        ("output_power_w", "output_power_w_sq"),
        "input_power_w",
        pooled=True,
        # issue 20 part anom2: a rack's PSUs share its load (current sharing), so a load
        # the training window never saw moves the efficiency-curve error of all of them
        # alike (on a healthy dev day: 76 PSUs alarming for an hour after a job started);
        # one aging PSU still departs from its rack-mates
        common="rack_id",
    ),
    Residual(
        "psu_temp",
        "psu",
        "temp_c",
        ("output_power_w", "output_power_w_sq", "hall_supply_air_c", "hall_air_load"),
        "temp_c",
        pooled=True,
        common="hall",
    ),
    Residual("psu_share", "psu", "output_power_w", ("peer_output_power_w",), "output_power_w"),
    Residual(
        "cdu_flow",
        "cdu",
        "flow_lpm",
        ("pump_speed_pct", "pump_speed_sq"),
        "flow_lpm",
        pooled=True,
        common="hall",
    ),
    Residual(
        "cdu_dp",
        "cdu",
        "diff_pressure_kpa",
        ("pump_speed_pct", "pump_speed_sq"),
        "diff_pressure_kpa",
        pooled=True,
        common="hall",
    ),
    Residual(
        "cdu_pump_power",
        "cdu",
        "pump_power_w",
        ("pump_speed_sq", "pump_speed_cu"),
        "pump_power_w",
        pooled=True,
        # issue 20 part anom2: the hall's pumps answer a load change together (all four
        # CDUs alarmed at once on a healthy dev day); a worn pump departs from the others
        common="hall",
    ),
    Residual(
        "cdu_heat_balance", "cdu", "heat_flow", ("loop_it_w",), "return_temp_c", common="hall"
    ),
    Residual(
        "cdu_supply",
        "cdu",
        "supply_temp_c",
        ("chw_supply_c", "loop_it_w"),
        "supply_temp_c",
        common="hall",
    ),
    # exchanger hot-end approach (secondary return - primary return): near zero while the
    # exchanger is clean; fouling opens it long before the supply temperature moves
    Residual("cdu_hx", "cdu", "hx_approach_k", (), "primary_return_temp_c", common="hall"),
    # the exchanger moves one heat: primary flow x rise against secondary flow x drop; the
    # only check on the primary flow and supply sensors, which nothing else depends on
    Residual("cdu_primary_balance", "cdu", "primary_heat_flow", ("heat_flow",), "primary_flow_lpm"),
    Residual(
        "crah_fan_speed",
        "crah",
        "fan_speed_pct",
        ("hall_it_w", "hall_it_per_running"),
        "fan_speed_pct",
    ),
    Residual(
        "crah_fan_power",
        "crah",
        "fan_power_w",
        ("fan_speed_sq", "fan_speed_cu"),
        "fan_power_w",
        pooled=True,
    ),
    Residual(
        "crah_air_rise",
        "crah",
        "air_rise_k",
        ("hall_it_w", "hall_it_per_running"),
        "return_air_temp_c",
    ),
    Residual(
        "plant_chiller",
        "chiller_plant",
        "chiller_power_kw",
        ("cooling_load_kw", "load_x_chw", "load_x_cw"),
        "chiller_power_kw",
    ),
    Residual(
        "plant_chw_hold",
        "chiller_plant",
        "chw_supply_temp_c",
        ("chw_supply_setpoint_c",),
        "chw_supply_temp_c",
    ),
    Residual("pdu_power", "pdu", "power_w", ("pdu_psu_in_w",), "power_w"),
)

CLASSES = ("gpu", "psu", "cdu", "crah", "pdu", "chiller_plant")
# The metrics `class_frames` reads (by name, or as a residual's column): a model fit needs
# no other, so the service's fit loads only these (issue 24: the fit's memory). Keep in
# step with class_frames; tests/test_anomaly_memory.py checks the frames are the same.
FIT_METRICS = frozenset(
    {
        *(c for r in RESIDUALS for c in r.columns),
        "gpu_temp_c",
        "mem_temp_c",
        "power_w",
        "supply_temp_c",
        "return_temp_c",
        "flow_lpm",
        "input_power_w",
        "output_power_w",
        "fan_speed_pct",
        "supply_air_temp_c",
        "return_air_temp_c",
        "airflow_m3h",
        "chw_supply_temp_c",
        "cw_supply_temp_c",
        "cooling_load_kw",
        "pump_speed_pct",
        "primary_flow_lpm",
        "primary_return_temp_c",
        "primary_supply_temp_c",
    }
)


def _lag(col: str, k: int) -> pl.Expr:
    """The device's value k buckets earlier; null when that bucket has no row (a gap, or
    history stored every few minutes): the row k places back is then from another time,
    and a thermal model fitted on such "lags" mistakes every live transient for a fault
    (a quiet demo opened 21 GPU/CDU incidents in 10 min from a 5-minute history)."""
    earlier = pl.col("bucket").shift(k).over("device_id", order_by="bucket")
    return (
        pl.when(earlier == pl.col("bucket") - k)
        .then(pl.col(col).shift(k).over("device_id", order_by="bucket"))
        .alias(f"{col}_lag{k}")
    )


def _peer(frame: pl.DataFrame, group: str, col: str) -> pl.DataFrame:
    if col not in frame.columns:
        return frame
    return frame.with_columns(pl.col(col).median().over(group, "bucket").alias(f"peer_{col}"))


def _sum_by(
    g: pl.DataFrame, devices: pl.DataFrame, metric: str, by: str, name: str
) -> pl.DataFrame:
    """Per (``by`` device, bucket): sum of ``metric`` over the devices mapped to it."""
    return (
        g.filter(pl.col("metric") == metric)
        .join(devices.select("device_id", by), on="device_id")
        .group_by(by, "bucket")
        .agg(pl.col("value").sum().alias(name))
        .rename({by: "device_id"})
    )


def class_frames(g: pl.DataFrame, devices: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Wide feature frame per device class from the long grid ``g``."""
    out: dict[str, pl.DataFrame] = {}
    by_class = {c: devices.filter(pl.col("device_class") == c) for c in CLASSES}
    psus = by_class["psu"]

    gpus = by_class["gpu"]
    f = wide(g, gpus["device_id"])
    if f.height:
        f = f.join(gpus.select("device_id", "rack_id", "cdu_id"), on="device_id", how="left")
        # coolant at the rack: CDU supply plus half the rack's rise, which goes with the
        # rack's heat over the loop's flow (Q = m_dot c_p dT)
        loop = (
            g.filter(pl.col("metric").is_in(["supply_temp_c", "flow_lpm"]))
            .pivot(
                on="metric",
                index=["device_id", "bucket"],
                values="value",
                aggregate_function="last",
            )
            .rename({"device_id": "cdu_id", "supply_temp_c": "coolant_c"}, strict=False)
        )
        f = f.join(loop, on=["cdu_id", "bucket"], how="left")
        rack_w = _sum_by(g, psus, "input_power_w", "rack_id", "rack_in_w").rename(
            {"device_id": "rack_id"}
        )
        f = f.join(rack_w, on=["rack_id", "bucket"], how="left")
        for metric, rise in (("gpu_temp_c", "gpu_rise_k"), ("mem_temp_c", "mem_rise_k")):
            if {metric, "coolant_c"} <= set(f.columns):
                f = f.with_columns((pl.col(metric) - pl.col("coolant_c")).alias(rise))
        if {"rack_in_w", "flow_lpm"} <= set(f.columns):
            f = f.with_columns(
                rack_heat_per_flow=pl.col("rack_in_w") / pl.col("flow_lpm").clip(lower_bound=1.0)
            )
        if "power_w" in f.columns:
            f = f.with_columns(_lag("power_w", 1), _lag("power_w", 2))
        # issue 20 part anom2: peers are the GPU's node-mates (a node runs one job; a
        # rack may run several, and a job starting on half a rack put ~100 GPUs of a
        # healthy dev day in alarm); a drained node (a GPU off the bus) moves together
        # and does not out-shout the lost GPU
        f = f.with_columns(node_id=pl.col("device_id").str.replace(r"/[^/]+$", ""))
        f = _peer(f, "node_id", "power_w")
        out["gpu"] = f

    # hall air as the racks see it: supply of the running CRAHs, and heat per airflow
    # (above what the fans move, hot air recirculates to the inlets)
    crahs = by_class["crah"]
    psu_cdu = psus.select("device_id", "cdu_id", "hall", "pdu_id")
    hall_it = _sum_by(g, psu_cdu, "input_power_w", "hall", "hall_it_w").rename(
        {"device_id": "hall"}
    )
    air = wide(g, crahs["device_id"])
    hall_air = None
    if {"fan_speed_pct", "supply_air_temp_c", "airflow_m3h"} <= set(air.columns):
        run = pl.col("fan_speed_pct") > 1.0
        hall_air = (
            air.join(crahs.select("device_id", "hall"), on="device_id")
            .group_by("hall", "bucket")
            .agg(
                hall_supply_air_c=pl.col("supply_air_temp_c").filter(run).mean(),
                hall_airflow_m3h=pl.col("airflow_m3h").sum(),
                running=run.sum(),
            )
            .join(hall_it, on=["hall", "bucket"], how="left")
            .with_columns(
                hall_air_load=pl.col("hall_it_w")
                / pl.col("hall_airflow_m3h").clip(lower_bound=1.0),
                hall_it_per_running=pl.col("hall_it_w") / pl.col("running").clip(lower_bound=1),
            )
        )
    f = wide(g, psus["device_id"])
    if f.height:
        f = f.join(psus.select("device_id", "rack_id", "hall"), on="device_id", how="left")
        if hall_air is not None:
            f = f.join(
                hall_air.select("hall", "bucket", "hall_supply_air_c", "hall_air_load"),
                on=["hall", "bucket"],
                how="left",
            )
        if "output_power_w" in f.columns:
            f = f.with_columns(output_power_w_sq=(pl.col("output_power_w") / 1e3) ** 2)
        out["psu"] = _peer(f, "rack_id", "output_power_w")

    # IT power per CDU loop, from PSU input power
    f = wide(g, by_class["cdu"]["device_id"])
    if f.height:
        f = f.join(by_class["cdu"].select("device_id", "hall"), on="device_id", how="left")
        f = f.join(
            _sum_by(g, psu_cdu, "input_power_w", "cdu_id", "loop_it_w"),
            on=["device_id", "bucket"],
            how="left",
        )
        plant = (
            g.filter(pl.col("metric") == "chw_supply_temp_c")
            .group_by("bucket")
            .agg(pl.col("value").mean().alias("chw_supply_c"))
        )
        f = f.join(plant, on="bucket", how="left")
        if "pump_speed_pct" in f.columns:
            sp = pl.col("pump_speed_pct") / 100.0
            f = f.with_columns(pump_speed_sq=sp**2, pump_speed_cu=sp**3)
        if {"flow_lpm", "return_temp_c", "supply_temp_c"} <= set(f.columns):
            f = f.with_columns(
                heat_flow=pl.col("flow_lpm") * (pl.col("return_temp_c") - pl.col("supply_temp_c"))
            )
        if {"primary_flow_lpm", "primary_return_temp_c", "primary_supply_temp_c"} <= set(f.columns):
            f = f.with_columns(
                primary_heat_flow=pl.col("primary_flow_lpm")
                * (pl.col("primary_return_temp_c") - pl.col("primary_supply_temp_c"))
            )
        if {"return_temp_c", "primary_return_temp_c"} <= set(f.columns):
            f = f.with_columns(
                hx_approach_k=pl.col("return_temp_c") - pl.col("primary_return_temp_c")
            )
        out["cdu"] = f

    f = air
    if f.height:
        f = f.join(crahs.select("device_id", "hall"), on="device_id", how="left")
        f = f.join(hall_it, on=["hall", "bucket"], how="left")
        if hall_air is not None:
            f = f.join(
                hall_air.select("hall", "bucket", "hall_it_per_running"),
                on=["hall", "bucket"],
                how="left",
            )
        if "fan_speed_pct" in f.columns:
            sp = pl.col("fan_speed_pct") / 100.0
            f = f.with_columns(fan_speed_sq=sp**2, fan_speed_cu=sp**3)
        if {"return_air_temp_c", "supply_air_temp_c"} <= set(f.columns):
            f = f.with_columns(air_rise_k=pl.col("return_air_temp_c") - pl.col("supply_air_temp_c"))
        out["crah"] = f

    f = wide(g, by_class["pdu"]["device_id"])
    if f.height:
        out["pdu"] = f.join(
            _sum_by(g, psu_cdu, "input_power_w", "pdu_id", "pdu_psu_in_w"),
            on=["device_id", "bucket"],
            how="left",
        )

    f = wide(g, by_class["chiller_plant"]["device_id"])
    if f.height:
        if {"cooling_load_kw", "chw_supply_temp_c", "cw_supply_temp_c"} <= set(f.columns):
            load = pl.col("cooling_load_kw")
            f = f.with_columns(
                load_x_chw=load * pl.col("chw_supply_temp_c") / 20.0,
                load_x_cw=load * pl.col("cw_supply_temp_c") / 30.0,
            )
        out["chiller_plant"] = f
    return out


def residuals_for(device_class: str, frame: pl.DataFrame) -> list[Residual]:
    """The residuals of a class whose columns this frame has."""
    cols = set(frame.columns)
    return [r for r in RESIDUALS if r.device_class == device_class and set(r.columns) <= cols]
