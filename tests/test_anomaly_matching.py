"""Evaluation matching (alarm events, new causes) and alarm-storm scoring."""

from __future__ import annotations

import numpy as np
import polars as pl

from experiments.anomaly.matching import MatchConfig, alarm_events
from twin.anomaly.fleet import STORM_P, FleetScorer


def _scores(device: str, buckets, components, score: float = 0.9) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device_id": device,
            "bucket": list(buckets),
            "score": score,
            "top_component": list(components),
        }
    )


def test_a_new_top_cause_inside_a_running_alarm_is_an_event_and_flicker_is_not():
    # alarming 0..59 on "a"; "b" takes over at 30, then a and b alternate
    comps = ["a"] * 30 + ["b", "a"] * 15
    ev = alarm_events(_scores("d1", range(60), comps), MatchConfig(cause_window=30))
    assert ev.sort("start").rows() == [("d1", 0, 59), ("d1", 30, 59)]
    # "c" again after more than the window without it is news again
    comps2 = ["c"] + ["a"] * 40 + ["c"]
    ev2 = alarm_events(_scores("d2", range(42), comps2), MatchConfig(cause_window=30))
    assert sorted(ev2["start"].to_list()) == [0, 1, 41]
    # below the threshold nothing is an event; a gap longer than merge_gap starts a new run
    quiet = _scores("d3", range(5), ["a"] * 5, score=0.1)
    assert alarm_events(quiet, MatchConfig()).height == 0
    split = _scores("d4", [0, 1, 2, 20, 21], ["a"] * 5)
    assert sorted(alarm_events(split, MatchConfig(merge_gap=10))["start"].to_list()) == [0, 20]


def _class_devices(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device_id": [f"g{i}" for i in range(n)],
            "device_class": "gpu",
            "hall": "h1",
            "rack_id": None,
            "cdu_id": None,
            "pdu_id": None,
        },
        schema_overrides={"rack_id": pl.String, "cdu_id": pl.String, "pdu_id": pl.String},
    )


def test_a_storm_over_most_of_a_class_is_scored_against_the_class():
    n = 10
    scorer = FleetScorer(_class_devices(n), 30.0)
    p = np.full(n, 1e-8)
    p[0], p[1], p[2] = 1e-14, 0.5, 0.5  # one device far beyond the rest of the storm
    dev = pl.DataFrame({"device_id": [f"g{i}" for i in range(n)], "bucket": 7, "p": p})
    out = dict(scorer._less_storm(dev).select("device_id", "p").rows())
    assert np.isclose(out["g0"], 1e-6)  # stands out of its class by 1e-6
    assert all(out[f"g{i}"] >= 0.99 for i in range(3, n))  # the storm itself: nothing
    # two devices alarming out of ten is not a storm: p unchanged
    q = np.full(n, 0.3)
    q[:2] = STORM_P / 100
    calm = pl.DataFrame({"device_id": [f"g{i}" for i in range(n)], "bucket": 8, "p": q})
    assert np.allclose(scorer._less_storm(calm)["p"].to_numpy(), q)
