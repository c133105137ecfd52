"""Event-level scoring of alarms against fault labels.

- An **alarm event** is a maximal run of intervals in which a device's score is at or
  above the threshold (runs less than ``merge_gap`` intervals apart are one event), or,
  inside such a run, a *new cause*: the device's top contributing component changes to
  one that was not its top component at any alarming interval in the previous
  ``cause_window`` intervals. That is what an operator is told anew (the explanation
  changed); without it a fault on a device already alarming for another reason (a
  neighbour's fault, a load change) could never be seen. Every event counts in precision.
- A **fault** is detected when one of its devices (the faulted device; for a node fault,
  its GPUs) starts an alarm (for a sensor fault: or an alarm names that sensor's metric
  as its top contributor) between its onset and its failure (or, for faults that do not
  end in failure, the end of the run), plus ``grace`` intervals. Detection delay is
  counted in intervals from the onset. Gradual faults with a failure time also report
  whether the first alarm came before the failure.
- An alarm event is **true** if it starts after the onset of a fault on the same device
  (*strict*), or on a device the fault physically acts on (*topological*:
  the racks a CDU cools, a PSU's rack-mates that take its load, a GPU's node and power
  shelf, the CRAHs and air-cooled PSUs sharing a hall, everything the chilled-water
  plant cools, and the site meters for faults that change site power).
  Precision = true alarm events / all alarm events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

import numpy as np
import polars as pl

from twin.anomaly.incidents import Relations

ABRUPT = "abrupt"
EPOCH = datetime(1970, 1, 1)
SITE_CLASSES = ("meter", "ups", "chiller_plant")


@dataclass(frozen=True)
class MatchConfig:
    threshold: float = 0.6
    merge_gap: int = 10  # intervals
    grace: int = 10  # intervals after failure (or run end) a detection still counts
    cause_window: int = 30  # intervals: a top component not seen in this long is a new cause


def alarm_events(scores: pl.DataFrame, cfg: MatchConfig) -> pl.DataFrame:
    """device_id, start, end (buckets) of each alarm event."""
    cols = ["device_id", "bucket"] + (
        ["top_component"] if "top_component" in scores.columns else []
    )
    a = scores.filter(pl.col("score") >= cfg.threshold).select(cols).sort("device_id", "bucket")
    if a.height == 0:
        return pl.DataFrame(schema={"device_id": pl.String, "start": pl.Int64, "end": pl.Int64})
    a = a.with_columns(gap=pl.col("bucket").diff().over("device_id"))
    a = a.with_columns(
        new=(pl.col("gap").is_null() | (pl.col("gap") > cfg.merge_gap)).cast(pl.Int64).cum_sum()
    )
    a = a.with_columns(end=pl.col("bucket").max().over("new"))
    runs = (
        a.group_by("device_id", "new")
        .agg(start=pl.col("bucket").min(), end=pl.col("end").first())
        .drop("new")
    )
    if "top_component" not in a.columns:
        return runs
    # a new cause is reported at its interval; it ends with the run it belongs to
    c = a.with_columns(prev_same=pl.col("bucket").shift(1).over("device_id", "top_component"))
    causes = c.filter(
        pl.col("gap").is_not_null()
        & (pl.col("gap") <= cfg.cause_window)
        & (
            pl.col("prev_same").is_null()
            | (pl.col("bucket") - pl.col("prev_same") > cfg.cause_window)
        )
    )
    return (
        pl.concat([runs, causes.select("device_id", start=pl.col("bucket"), end=pl.col("end"))])
        .unique()
        .sort("device_id", "start")
    )


def _targets(label: dict, devices: pl.DataFrame) -> set[str]:
    dev = label["device_id"]
    ids = devices["device_id"]
    if label["device_class"] == "node":
        return set(ids.filter(ids.str.starts_with(dev + "/")).to_list())
    return {dev}


def _affected(label: dict, targets: set[str], devices: pl.DataFrame) -> set[str]:
    """Devices a fault acts on physically (see module docstring)."""
    cls, dev = label["device_class"], label["device_id"]
    d = devices
    out = set(targets)
    site_wide = set(d.filter(pl.col("device_class").is_in(SITE_CLASSES))["device_id"])
    if label["fault"] in ("sensor_drift", "sensor_stuck"):
        return out
    if cls == "cdu":
        racks = d.filter(pl.col("cdu_id") == dev)
        out |= set(racks["device_id"]) | set(racks["pdu_id"].drop_nulls())
    elif cls == "crah":  # the hall's air: the other CRAHs and the air-cooled PSUs
        hall = d.filter(pl.col("device_id") == dev)["hall"].to_list()
        out |= set(
            d.filter(pl.col("device_class").is_in(["crah", "psu"]) & pl.col("hall").is_in(hall))[
                "device_id"
            ]
        )
    elif cls in ("plant", "chiller_plant"):  # warmer water reaches everything it cools
        out |= set(
            d.filter(pl.col("device_class").is_in(["cdu", "crah", "gpu", "psu"]))["device_id"]
        )
    elif cls in ("psu", "gpu", "node"):
        rows = d.filter(pl.col("device_id").is_in(list(targets)))
        rack_ids = rows["rack_id"].drop_nulls().to_list()
        nodes = {t.rsplit("/", 1)[0] + "/" for t in targets if "/n" in t}
        mates = d.filter(
            pl.col("rack_id").is_in(rack_ids)
            & (
                (pl.col("device_class") == "psu")
                | pl.col("device_id").map_elements(
                    lambda x: any(x.startswith(n) for n in nodes), return_dtype=pl.Boolean
                )
            )
        )
        out |= set(mates["device_id"]) | set(rows["pdu_id"].drop_nulls())
    return out | site_wide


def match(
    scores: pl.DataFrame,
    labels: pl.DataFrame,
    devices: pl.DataFrame,
    interval_s: float,
    last_bucket: int,
    cfg: MatchConfig,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per fault with detection figures, one row per alarm event with its verdict)."""
    events = alarm_events(scores, cfg)
    first_alarm = scores.filter(pl.col("score") >= cfg.threshold)

    def bucket(t: datetime | None) -> int | None:  # naive UTC, as DuckDB returns them
        return None if t is None else int((t - EPOCH).total_seconds() // interval_s)

    faults = []
    windows = []  # (device, onset bucket, strict?)
    for lab in labels.iter_rows(named=True):
        onset_b = bucket(lab["onset"])
        assert onset_b is not None  # every fault has an onset
        fail_b = bucket(lab["failure_time"])
        targets = _targets(lab, devices)
        affected = _affected(lab, targets, devices)
        end_b = (fail_b if fail_b is not None else last_bucket) + cfg.grace
        # a detection is an alarm that *starts* after the onset: one already running
        # when the fault began says nothing about the fault
        starts = events.filter(
            pl.col("device_id").is_in(list(targets)) & pl.col("start").is_between(onset_b, end_b)
        )
        det_b = int(cast(int, starts["start"].min())) if starts.height else None
        if lab["metric"]:  # a sensor fault: also when a running alarm names that sensor
            named = first_alarm.filter(
                pl.col("device_id").is_in(list(targets))
                & pl.col("bucket").is_between(onset_b, end_b)
                & (pl.col("top_metric") == lab["metric"])
            )
            if named.height:
                b = int(cast(int, named["bucket"].min()))
                det_b = b if det_b is None else min(det_b, b)
        hit = (
            first_alarm.filter(
                pl.col("device_id").is_in(list(targets)) & (pl.col("bucket") == det_b)
            )
            if det_b is not None
            else None
        )
        top = hit.row(0, named=True)["top_component"] if hit is not None and hit.height else None
        faults.append(
            {
                "fault_id": lab["fault_id"],
                "fault": lab["fault"],
                "device_id": lab["device_id"],
                "signature": lab["signature"],
                "fails": fail_b is not None,
                "onset_bucket": onset_b,
                "failure_bucket": fail_b,
                "detected": det_b is not None,
                "delay_intervals": None if det_b is None else det_b - onset_b,
                "before_failure": None if (fail_b is None or det_b is None) else det_b < fail_b,
                "lead_min": None
                if (fail_b is None or det_b is None)
                else (fail_b - det_b) * interval_s / 60.0,
                "detected_by": top,
            }
        )
        for dev in affected:
            windows.append((dev, onset_b, dev in targets))
    win = pl.DataFrame(
        windows,
        schema={"device_id": pl.String, "onset": pl.Int64, "strict": pl.Boolean},
        orient="row",
    )
    ev = events.join(win, on="device_id", how="left").with_columns(
        hit=pl.col("onset").is_not_null() & (pl.col("start") >= pl.col("onset"))
    )
    verdict = ev.group_by("device_id", "start", "end").agg(
        true_topological=pl.col("hit").any(),
        true_strict=(pl.col("hit") & pl.col("strict").fill_null(False)).any(),
    )
    return pl.DataFrame(faults), verdict.sort("device_id", "start")


def summarize(faults: pl.DataFrame, alarms: pl.DataFrame) -> dict:
    """Headline figures across scenarios."""
    n = faults.height
    abrupt = faults.filter(pl.col("signature") == ABRUPT)
    delays = abrupt["delay_intervals"].drop_nulls().to_numpy()
    gradual = faults.filter((pl.col("signature") != ABRUPT) & pl.col("fails"))
    n_alarm = alarms.height
    return {
        "faults": n,
        "recall": float(faults["detected"].sum() / n) if n else float("nan"),
        "precision_topological": float(alarms["true_topological"].sum() / n_alarm)
        if n_alarm
        else float("nan"),
        "precision_strict": float(alarms["true_strict"].sum() / n_alarm)
        if n_alarm
        else float("nan"),
        "alarm_events": n_alarm,
        "false_alarm_events": int(n_alarm - alarms["true_topological"].sum()),
        "abrupt_median_delay_intervals": float(np.median(delays)) if len(delays) else None,
        "gradual_before_failure": float(
            cast(float, gradual["before_failure"].fill_null(False).mean())
        )
        if gradual.height
        else None,
    }


def per_type(faults: pl.DataFrame) -> pl.DataFrame:
    return (
        faults.group_by("fault", "signature")
        .agg(
            n=pl.len(),
            detected=pl.col("detected").sum(),
            recall=pl.col("detected").mean(),
            median_delay_intervals=pl.col("delay_intervals").median(),
            before_failure=pl.col("before_failure").drop_nulls().mean(),
            median_lead_min=pl.col("lead_min").median(),
            detected_by=pl.col("detected_by").drop_nulls().mode().first(),
        )
        .sort("signature", "fault")
    )


# -- incidents (issue 20): strict precision is the headline ---------------------------------


def _strict_set(targets: set[str], rel: Relations) -> set[str]:
    """The faulted device(s) and their direct scored parents and children."""
    out = set(targets)
    for t in targets:
        out |= rel.neighbours(t)
    return out


def match_incidents(
    incidents: pl.DataFrame,
    labels: pl.DataFrame,
    devices: pl.DataFrame,
    rel: Relations,
    interval_s: float,
    last_bucket: int,
    cfg: MatchConfig,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per fault, one row per incident with its verdict).

    An incident is *true* (strict) for a fault when its top root cause is a faulted device
    or a direct parent/child of one (`Relations.neighbours`) and it opened between the
    onset and the failure (or run end) plus ``grace`` intervals; *topological* when its
    root cause is anywhere the fault acts on (`_affected`) and it opened after the onset.
    A fault is detected when a strictly true incident exists for it; its delay is that
    incident's opening interval minus the onset; incidents per fault count them all.
    """

    def bucket(t: datetime | None) -> int | None:
        return None if t is None else int((t - EPOCH).total_seconds() // interval_s)

    inc = incidents.select("id", "opened_bucket", "root_device", "devices")
    faults, hits = [], []
    for lab in labels.iter_rows(named=True):
        onset_b = bucket(lab["onset"])
        assert onset_b is not None
        fail_b = bucket(lab["failure_time"])
        end_b = (fail_b if fail_b is not None else last_bucket) + cfg.grace
        targets = _targets(lab, devices)
        strict = _strict_set(targets, rel)
        affected = _affected(lab, targets, devices)
        in_window = pl.col("opened_bucket").is_between(onset_b, end_b)
        mine = inc.filter(in_window & pl.col("root_device").is_in(list(strict)))
        topo = inc.filter(
            (pl.col("opened_bucket") >= onset_b) & pl.col("root_device").is_in(list(affected))
        )
        hits.append(
            pl.DataFrame(
                {
                    "id": mine["id"].to_list() + topo["id"].to_list(),
                    "strict": [True] * mine.height + [False] * topo.height,
                },
                schema={"id": pl.String, "strict": pl.Boolean},
            )
        )
        det = int(cast(int, mine["opened_bucket"].min())) if mine.height else None
        faults.append(
            {
                "fault_id": lab["fault_id"],
                "fault": lab["fault"],
                "device_id": lab["device_id"],
                "signature": lab["signature"],
                "fails": fail_b is not None,
                "onset_bucket": onset_b,
                "failure_bucket": fail_b,
                "detected": det is not None,
                "delay_intervals": None if det is None else det - onset_b,
                "before_failure": None if (fail_b is None or det is None) else det < fail_b,
                "lead_min": None
                if (fail_b is None or det is None)
                else (fail_b - det) * interval_s / 60.0,
                "incidents": mine.height,
                "detected_by": mine.sort("opened_bucket")["root_device"][0]
                if mine.height
                else None,
            }
        )
    h = pl.concat(hits) if hits else pl.DataFrame(schema={"id": pl.String, "strict": pl.Boolean})
    verdict = inc.join(
        h.group_by("id").agg(true_strict=pl.col("strict").any(), true_topological=pl.lit(True)),
        on="id",
        how="left",
    ).with_columns(pl.col("true_strict", "true_topological").fill_null(False))
    fault_schema = {
        "fault_id": pl.String,
        "fault": pl.String,
        "device_id": pl.String,
        "signature": pl.String,
        "fails": pl.Boolean,
        "onset_bucket": pl.Int64,
        "failure_bucket": pl.Int64,
        "detected": pl.Boolean,
        "delay_intervals": pl.Int64,
        "before_failure": pl.Boolean,
        "lead_min": pl.Float64,
        "incidents": pl.Int64,
        "detected_by": pl.String,
    }
    return pl.DataFrame(faults, schema=fault_schema), verdict.sort("opened_bucket", "id")


def summarize_incidents(
    faults: pl.DataFrame, incidents: pl.DataFrame, healthy_incidents: int, healthy_days: float
) -> dict:
    """Headline figures: strict precision first; false incidents per healthy day from the
    fault-free runs."""
    n, n_inc = faults.height, incidents.height
    abrupt = faults.filter(pl.col("signature") == ABRUPT)
    delays = abrupt["delay_intervals"].drop_nulls().to_numpy()
    per_fault = faults.filter(pl.col("detected"))["incidents"].to_numpy()
    gradual = faults.filter((pl.col("signature") != ABRUPT) & pl.col("fails"))
    return {
        "faults": n,
        "recall": float(faults["detected"].sum() / n) if n else float("nan"),
        "incidents": n_inc,
        "precision_strict": float(incidents["true_strict"].sum() / n_inc)
        if n_inc
        else float("nan"),
        "precision_topological": float(incidents["true_topological"].sum() / n_inc)
        if n_inc
        else float("nan"),
        "false_incidents": int(n_inc - incidents["true_strict"].sum()),
        "median_incidents_per_fault": float(np.median(per_fault)) if len(per_fault) else None,
        "healthy_days": healthy_days,
        "healthy_incidents": healthy_incidents,
        "false_incidents_per_healthy_day": healthy_incidents / healthy_days
        if healthy_days > 0
        else None,
        "abrupt_median_delay_intervals": float(np.median(delays)) if len(delays) else None,
        "gradual_before_failure": float(
            cast(float, gradual["before_failure"].fill_null(False).mean())
        )
        if gradual.height
        else None,
    }


def per_type_incidents(faults: pl.DataFrame) -> pl.DataFrame:
    return (
        faults.group_by("fault", "signature")
        .agg(
            n=pl.len(),
            detected=pl.col("detected").sum(),
            recall=pl.col("detected").mean(),
            median_delay_intervals=pl.col("delay_intervals").median(),
            median_incidents=pl.col("incidents").filter(pl.col("detected")).median(),
            before_failure=pl.col("before_failure").drop_nulls().mean(),
            detected_by=pl.col("detected_by").drop_nulls().first(),
        )
        .sort("signature", "fault")
    )
