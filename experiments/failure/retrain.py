"""Retrain on the site's own history, and promote only a model that beats the serving one.

Data: feature rows from the site's store (`compute_features` over all stored samples),
labelled by the imported failure records (`twin/failure/records.py`): a record with
failure = true is a failure of that device at that time, so a row (device, t) is
positive when the device has such a record in (t, t + horizon]. Rows at a failure time
are dropped (detection, not risk). A record known by serial only labels the slot the
twin's parts history (`part_tenures`) had that part in at the record's time
(`place_by_serial`); one it cannot place (a serial no slot reported, or a part in no slot
then) labels nothing and is reported: count and examples in meta.json, report.json and
the CLI's output.

Split, in time order over the store's scoring times: the earliest half trains, the next
quarter calibrates (risk calibration and operating thresholds), the latest quarter is
held out. A slice's rows stop one horizon before the next slice starts, so no label looks
into a later slice (`check_disjoint`, LeakageError otherwise).

Prior (optional): simulator runs (the shipped default's training seeds) are appended to
the training slice only; calibration and the held-out check use the site's rows alone,
so thresholds and the promotion decision are the site's.

Promotion gate: the candidate and the serving model are scored on the same held-out rows.
A class is judged when the held-out slice holds at least MIN_EPISODES failure episodes
of it. The candidate is promoted when, over the judged classes, its mean PR-AUC is higher
than the serving model's and no judged class loses more than MAX_CLASS_DROP. With no
judged class (too few failures in the latest period) nothing is promoted: the figures
could not tell the models apart. With no serving model for the horizon, the candidate
must beat chance (PR-AUC above the held-out positive rate) in every judged class. The
report (both models' figures, the decision and why) is written to report.json beside
the candidate and into its meta.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import duckdb
import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

from experiments.failure.evaluate import evaluate
from twin.failure import registry
from twin.failure.features import compute_features
from twin.failure.model import ClassModel, FailureModel, check_disjoint
from twin.failure.records import PLACE_EXAMPLES, load_records, place_by_serial

MIN_EPISODES = 2  # held-out failure episodes a class needs to be judged
MAX_CLASS_DROP = 0.05  # PR-AUC a judged class may lose while the mean improves
ONSET_S = 6 * 3600  # a site failure's "onset" for lead times: alarms this far back count
BUCKET_S = 300
TRAIN_FRAC, CALIBRATE_FRAC = 0.5, 0.25  # the rest, the latest, is held out


class RetrainError(RuntimeError):
    pass


@dataclass(frozen=True)
class RetrainResult:
    version: registry.ModelVersion
    promoted: bool
    reason: str
    report: dict


def site_labels(records: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Failure events (device_id, failure_time, record_id, action) from the records
    (serial-only ones already placed in their slot), and how many failure records name
    no device (a serial the parts history could not place)."""
    fails = records.filter(pl.col("failure"))
    unresolved = fails.filter(pl.col("device_id").is_null()).height
    return (
        fails.filter(pl.col("device_id").is_not_null())
        .select(
            "device_id",
            pl.col("time").cast(pl.Datetime("us")).alias("failure_time"),
            "record_id",
            "action",
        )
        .unique()
        .sort("failure_time"),
        unresolved,
    )


def label_site_rows(
    feats: pl.DataFrame, fails: pl.DataFrame, horizon_s: float, run: str = "site"
) -> pl.DataFrame:
    """y = the device's next failure record lies in (t, t + horizon]; the columns
    FailureModel and evaluate() read (run, episode, failure_time, onset, fault,
    has_precursor). A device may fail more than once (a replaced part fails again)."""
    feats = feats.with_columns(pl.col("t").cast(pl.Datetime("us"))).sort("t")
    nxt = fails.select(
        "device_id",
        pl.col("failure_time").alias("next_failure"),
        pl.col("failure_time").alias("_ft"),
        pl.col("record_id"),
        pl.col("action"),
    ).sort("_ft")
    out = feats.join_asof(
        nxt, left_on="t", right_on="_ft", by="device_id", strategy="forward", check_sortedness=False
    ).drop("_ft")
    h = pl.duration(milliseconds=int(horizon_s * 1000))
    out = out.filter(pl.col("next_failure").is_null() | (pl.col("next_failure") > pl.col("t")))
    y = (pl.col("next_failure") <= pl.col("t") + h).fill_null(False)
    return out.with_columns(
        pl.lit(run).alias("run"),
        y.cast(pl.Int8).alias("y"),
        # a row belongs to a failure episode while the failure is within the horizon;
        # further out it is a negative of a device that will fail (as in label_rows)
        pl.when(y).then(pl.lit(run + ":") + pl.col("record_id")).alias("episode"),
        pl.when(y).then(pl.col("next_failure")).alias("failure_time"),
        pl.when(y).then(pl.col("next_failure") - pl.duration(seconds=ONSET_S)).alias("onset"),
        pl.when(y).then(pl.lit("site:") + pl.col("action")).alias("fault"),
        pl.lit(True).alias("has_precursor"),
    ).drop("next_failure", "record_id", "action")


def time_slices(
    rows: pl.DataFrame, horizon_s: float
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Earliest half / next quarter / latest quarter of the scoring times; each slice
    ends one horizon before the next begins (checked with check_disjoint)."""
    times = rows["t"].unique().sort()
    if times.len() < 8:
        raise RetrainError(f"only {times.len()} scoring times in the store: too little history")
    b1 = cast(datetime, times[int(times.len() * TRAIN_FRAC)])
    b2 = cast(datetime, times[int(times.len() * (TRAIN_FRAC + CALIBRATE_FRAC))])
    h = timedelta(seconds=horizon_s)
    train = rows.filter(pl.col("t") + h < b1).with_columns(pl.lit("site:train").alias("run"))
    cal = rows.filter((pl.col("t") >= b1) & (pl.col("t") + h < b2)).with_columns(
        pl.lit("site:calibrate").alias("run")
    )
    test = rows.filter(pl.col("t") >= b2).with_columns(pl.lit("site:heldout").alias("run"))
    check_disjoint(train, cal, horizon_s, ("train", "calibrate"))
    check_disjoint(cal, test, horizon_s, ("calibrate", "held-out"))
    return train, cal, test


def _judged(report: dict) -> dict[str, dict]:
    return {
        c: r
        for c, r in report["classes"].items()
        if r.get("episodes", 0) >= MIN_EPISODES and r.get("pr_auc") is not None
    }


def gate(candidate: dict, serving: dict | None, test: pl.DataFrame) -> tuple[bool, str]:
    """(promote?, why) from both models' held-out reports (see the module doc)."""
    judged = _judged(candidate)
    if not judged:
        return False, (
            f"too few failures in the held-out period: no class has >= {MIN_EPISODES} "
            "failure episodes there, so the figures cannot tell the models apart"
        )
    if serving is None:
        chance = {
            c: float(test.filter(pl.col("device_class") == c)["y"].cast(pl.Float64).mean() or 0.0)  # type: ignore[arg-type]
            for c in judged
        }
        weak = [c for c in judged if judged[c]["pr_auc"] <= chance[c]]
        if weak:
            return False, f"no better than chance on {weak} (no serving model to compare)"
        return True, "no serving model for this horizon; beats chance in every judged class"
    new = {c: judged[c]["pr_auc"] for c in judged}
    old = {c: (serving["classes"].get(c) or {}).get("pr_auc") or 0.0 for c in judged}
    mean_new, mean_old = float(np.mean(list(new.values()))), float(np.mean(list(old.values())))
    drops = {c: round(old[c] - new[c], 3) for c in judged if old[c] - new[c] > MAX_CLASS_DROP}
    figures = ", ".join(f"{c} {new[c]:.3f} vs {old[c]:.3f}" for c in judged)
    if mean_new <= mean_old:
        return False, (
            f"held-out mean PR-AUC {mean_new:.3f} is not above the serving model's "
            f"{mean_old:.3f} ({figures})"
        )
    if drops:
        return False, f"mean PR-AUC improves but these classes lose > {MAX_CLASS_DROP}: {drops}"
    return True, f"held-out mean PR-AUC {mean_new:.3f} > {mean_old:.3f} ({figures})"


def _prior_rows(seeds: list[int], data: Path, horizon_s: float) -> pl.DataFrame:
    from experiments.failure.dataset import RunSpec, generate
    from experiments.failure.default_model import DefaultSpec
    from experiments.failure.evaluate import load_rows

    spec = DefaultSpec()
    paths = [generate(RunSpec(s, spec.hours, spec.step_s, spec.gpus), data) for s in seeds]
    return load_rows(paths, horizon_s).with_columns(
        ("prior:" + pl.col("run")).alias("run"),
        ("prior:" + pl.col("episode")).alias("episode"),
    )


def site_rows(con: duckdb.DuckDBPyConnection, horizon_s: float) -> tuple[pl.DataFrame, dict]:
    """Labelled feature rows over the whole store, and what the records contributed."""
    recs, unplaced = place_by_serial(con, load_records(con))
    fails, unresolved = site_labels(recs)
    unplaced = unplaced.join(recs.filter(pl.col("failure")).select("record_id"), on="record_id")
    placed = int(recs.filter(pl.col("failure") & pl.col("placed_by_serial")).height)
    placement = {
        "failure_records_by_serial": placed + unresolved,
        "placed_by_serial": placed,
        "unresolved_serial_only": unresolved,
        "unresolved_examples": [
            {**r, "time": r["time"].isoformat()}
            for r in unplaced.head(PLACE_EXAMPLES).iter_rows(named=True)
        ],
    }
    if fails.is_empty():
        raise RetrainError(
            "no failure records that name a device in the store (a device_id, or a serial "
            "the parts history places in a slot): import some with "
            "`dctwin failure import-records`"
            + (f"; {records_note(placement)}" if unresolved else "")
        )
    start, end = con.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
    if start is None:
        raise RetrainError("the store holds no samples")
    feats = compute_features(con, start + timedelta(hours=1), end, BUCKET_S)
    rows = label_site_rows(feats, fails, horizon_s)
    info = {
        "records": recs.height,
        "failure_records": fails.height,
        **placement,
        "devices_failed": fails["device_id"].n_unique(),
        "history": [start.isoformat(), end.isoformat()],
    }
    return rows, info


def records_note(info: dict) -> str:
    """What the serial-only failure records became, in words (report and CLI)."""
    n, placed = info["failure_records_by_serial"], info["placed_by_serial"]
    text = f"{placed} of {n} failure record(s) given by serial placed in their slot"
    left = info["unresolved_serial_only"]
    if left:
        examples = "; ".join(
            f"{e['serial']} at {e['time']}: {e['reason']}" for e in info["unresolved_examples"]
        )
        text += f"; {left} not placed, so they label nothing (e.g. {examples})"
    return text


def untrained_reason(cls: str, m: ClassModel, cal: pl.DataFrame) -> str:
    """Why `fit` left the class without a classifier, in words (FailureModel.fit's
    conditions: >= 2 failure and >= 2 healthy training rows, failure and healthy rows
    in the calibration slice, at least one feature the site reports)."""
    if not m.features:
        return f"{cls}: the site reports none of its features ({', '.join(m.unreported)})"
    y_cal = cal.filter(pl.col("device_class") == cls)["y"]
    pos_cal = int(y_cal.sum())
    return (
        f"{cls}: {m.n_pos} failure and {m.n_train - m.n_pos} healthy row(s) in the training "
        f"slice (needs >= 2 of each), {pos_cal} failure and {y_cal.len() - pos_cal} healthy "
        "row(s) in the calibration slice (needs >= 1 of each)"
    )


def retrain(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    horizon_s: float = 3600.0,
    prior_seeds: list[int] | None = None,
    data: Path = Path("var/failure-data"),
    progress=None,
) -> RetrainResult:
    rows, info = site_rows(con, horizon_s)
    train, cal, test = time_slices(rows, horizon_s)
    fit_rows = train
    if prior_seeds:
        fit_rows = pl.concat(
            [train, _prior_rows(prior_seeds, data, horizon_s)], how="diagonal_relaxed"
        )
    with threadpool_limits(1):  # see default_model.py: OpenMP spinning on busy machines
        model = FailureModel(horizon_s).fit(fit_rows, cal, progress=progress)
    site_classes = sorted(set(rows["device_class"].drop_nulls()))
    if not any(model.classes[c].clf is not None for c in site_classes if c in model.classes):
        # a candidate that scores nothing is no candidate: say what each class lacked
        raise RetrainError(
            "no device class could be trained: "
            + "; ".join(untrained_reason(c, model.classes[c], cal) for c in site_classes)
            + ". Import failure records spread over the store's history, or retrain once "
            "it is longer"
        )
    # features no training row has a value of (metrics the site does not report): left
    # out of the candidate's feature lists, so it never reads them when scoring
    unreported = {
        c: list(m.unreported)
        for c, m in model.classes.items()
        if c in site_classes and m.unreported
    }
    cand = evaluate(model, test)
    try:
        serving_v: registry.ModelVersion | None = registry.newest_approved(root, horizon_s)
    except registry.RegistryError:
        serving_v = None
    serving = None
    if serving_v is not None:
        serving = evaluate(serving_v.load(), test)
    promote, reason = gate(cand, serving, test)

    def window(df: pl.DataFrame) -> list[str] | None:
        if df.is_empty():
            return None
        return [
            cast(datetime, df["t"].min()).isoformat(),
            cast(datetime, df["t"].max()).isoformat(),
        ]

    report = {
        "decision": "promoted" if promote else "refused",
        "reason": reason,
        "records": {**info, "note": records_note(info)},
        "metric": (
            f"mean PR-AUC over classes with >= {MIN_EPISODES} held-out failure episodes; "
            f"no judged class may lose more than {MAX_CLASS_DROP}"
        ),
        "heldout_window": window(test),
        "judged_classes": sorted(_judged(cand)),
        "unreported_features": unreported,
        "candidate": cand,
        "serving": None
        if serving_v is None
        else {"version": serving_v.version, "source": serving_v.source, **(serving or {})},
    }
    meta = {
        "training_data": (
            f"site records ({info['failure_records']} failures on {info['devices_failed']} "
            f"devices, store history {info['history'][0]} to {info['history'][1]})"
            + (f" + simulator prior seeds {prior_seeds}" if prior_seeds else "")
        ),
        "records": info,
        "prior_seeds": prior_seeds or [],
        "unreported_features": unreported,
        "data_window": {"train": window(train), "calibrate": window(cal), "test": window(test)},
        "metrics": cand,
        "validation": {
            "method": f"held-out latest period of the site's store ({window(test)})",
            **cand,
        },
        "promotion": report,
    }
    meta = json.loads(json.dumps(meta, default=str))
    v = registry.save(model, meta, root)
    (v.path / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if promote:
        v = registry.approve(v.version, root)
    return RetrainResult(v, promote, reason, report)
