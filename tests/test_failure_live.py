"""The incremental live features equal the SQL reference (`compute_features`) at every
tick, and the serving table built from them equals `failure_risks` (the SQL path)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.xids import FAILURE_XID_CODES
from experiments.failure.dataset import BASE_START
from experiments.simulate import run_simulation
from ingest.store import SCHEMA, Store
from simulator.model import SiteSimulator
from simulator.sitegen import synthetic_site
from twin.failure import registry
from twin.failure.features import compute_features
from twin.failure.live import LiveFeatures, tick_floor
from twin.failure.model import FailureModel, label_rows
from twin.failure.risk import failure_risks
from twin.failure.service import FailureRiskService

B = 300
T0 = datetime(2025, 1, 15)  # on the 5-min grid
KEYS = ("t", "device_id", "device_class", "rack")

# (device, kind, rack, metrics); a PSU whose output metric is sometimes missing has no
# class in that bucket (the SQL drops it), the PDU never has one
DEVICES = [
    *[(f"r{r}/gpu{g}", "gpu", f"r{r}", "gpu") for r in (1, 2) for g in (0, 1)],
    ("r1/psu0", "power", "r1", "psu"),
    ("r1/psu1", "power", "r1", "psu"),
    ("r2/psu0", "power", "r2", "psu"),
    ("r2/pdu", "power", "r2", "pdu"),
    ("h1/cdu0", "cooling", "h1", "cdu"),
    ("h1/crah0", "air", "h1", "crah"),
    ("h1/crah1", "air", "h1", "crah"),
]
COUNTERS = (
    "ecc_corrected_total",
    "ecc_uncorrected_total",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
)


def _values(role: str, rng: np.random.Generator, state: dict) -> dict[str, float]:
    """One read of a device: a random subset of its metrics (metrics go missing)."""
    if role == "gpu":
        for c in COUNTERS:
            if rng.random() < 0.03:
                state[c] = 0.0  # a reset (driver reload, swap): counters are not monotone
            state[c] = state.get(c, 0.0) + float(rng.poisson(2.0) if rng.random() < 0.3 else 0)
        vals = {
            "gpu_temp_c": round(float(rng.normal(65, 8)), 2),
            "power_w": round(float(rng.uniform(100, 700)), 1),
            "throttle_reasons": float(rng.choice([0, 0, 0, 4, 8, 32, 64, 72])),
            "row_remap_pending": float(rng.random() < 0.1),
            "row_remap_failure": float(rng.random() < 0.05),
            "mem_temp_c": 70.0,
            **{c: state[c] for c in COUNTERS},
        }
    elif role in ("psu", "pdu"):
        inp = round(float(rng.uniform(800, 3000)), 1)
        vals = {"input_power_w": inp, "temp_c": round(float(rng.normal(40, 3)), 1)}
        if role == "psu" and rng.random() < 0.9:
            vals["output_power_w"] = round(inp * float(rng.uniform(0.85, 0.97)), 1)
    elif role == "cdu":
        vals = {
            "pump_speed_pct": round(float(rng.uniform(40, 90)), 1),
            "flow_lpm": float(rng.choice([0.0, 300.0, 310.5, 295.2])),
            "pump_power_w": round(float(rng.uniform(500, 900)), 1),
            "reservoir_level_pct": round(float(rng.uniform(30, 90)), 1),
            "leak_detected": float(rng.random() < 0.05),
        }
    else:
        vals = {
            "fan_power_w": round(float(rng.uniform(1000, 3000)), 1),
            "fan_speed_pct": float(rng.choice([0.0, 55.0, 60.5, 70.0])),
            "return_air_temp_c": round(float(rng.normal(30, 2)), 2),
        }
    return {k: v for k, v in vals.items() if rng.random() < 0.92}


def _stream(seed: int, hours: float, late_frac: float):
    """Samples and events with arrival ticks: (arrival_bucket, row) lists."""
    rng = np.random.default_rng(seed)
    samples: list[tuple] = []
    events: list[tuple] = []
    end_s = hours * 3600
    for dev, kind, rack, role in DEVICES:
        interval = float(rng.choice([30, 60, 90, 120]))
        # a silence somewhere, sometimes for good (a device gone longer than the lookback
        # leaves the rows)
        s0 = rng.uniform(0, end_s)
        s1 = s0 + (end_s if rng.random() < 0.2 else rng.uniform(300, 3 * 3600))
        state: dict = {}
        t = rng.uniform(0, interval)
        while t < end_s:
            if not (s0 <= t < s1):
                rt = T0 + timedelta(seconds=round(t, 3))
                for m, v in _values(role, rng, state).items():
                    samples.append((rt, dev, m, v, kind, rack))
            t += interval * float(rng.uniform(0.8, 1.2))
    for _ in range(int(rng.integers(5, 40))):
        rt = T0 + timedelta(seconds=float(rng.uniform(0, end_s)))
        target = str(rng.choice([d[0] for d in DEVICES if d[3] == "gpu"] + ["r1", "r2"]))
        if rng.random() < 0.7:
            code = int(rng.choice([*FAILURE_XID_CODES, 13]))
            events.append((rt, target, "xid", "critical", "x", json.dumps({"xid": code})))
        else:
            events.append((rt, target, "source_error", "warning", "e", None))

    def arrival(rt: datetime) -> int:
        """The tick (bucket index) after which a row is stored: its own bucket's end, or
        with probability late_frac one bucket later (late, within the re-read bucket)."""
        bucket = int(np.ceil((rt - T0).total_seconds() / B))
        return bucket + int(rng.random() < late_frac)

    # part swaps (the twin's part_swapped events) on GPU and PSU slots, one slot swapped
    # twice sometimes; the twin writes them seconds after the inventory report, so some
    # arrive after their bucket was read, up to 3 buckets late
    swapped = [
        (a, e)
        for _ in range(int(rng.integers(1, 5)))
        for e in [
            (
                T0 + timedelta(seconds=float(rng.uniform(0, end_s))),
                str(rng.choice([d[0] for d in DEVICES if d[3] in ("gpu", "psu")])),
                "part_swapped",
                "info",
                "part swapped",
                json.dumps({"new_serial": "x"}),
            )
        ]
        for a in [int(np.ceil((e[0] - T0).total_seconds() / B)) + int(rng.integers(0, 4))]
    ]
    return (
        [(arrival(r[0]), r) for r in samples],
        [(arrival(e[0]), e) for e in events] + swapped,
    )


def _same(live: pl.DataFrame, ref: pl.DataFrame, where: str) -> None:
    ref = ref.sort("device_id")
    assert live["device_id"].to_list() == ref["device_id"].to_list(), where
    assert set(live.columns) == set(ref.columns), where
    for c in ref.columns:
        if c in KEYS:
            assert live[c].to_list() == ref[c].to_list(), f"{c} at {where}"
            continue
        # NULL and NaN are both "missing" to the model (it reads floats)
        a = live[c].cast(pl.Float64).fill_nan(None)
        b = ref[c].cast(pl.Float64).fill_nan(None)
        ok = ((a - b).abs() <= 1e-6 * (1 + b.abs())) | (a.is_null() & b.is_null())
        bad = (~ok.fill_null(False)).arg_true()
        assert bad.len() == 0, (
            f"{c} at {where}: {live['device_id'][bad[0]]} live {a[bad[0]]} sql {b[bad[0]]}"
        )


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    late_frac=st.sampled_from([0.0, 0.1, 0.3]),
    strides=st.lists(st.integers(1, 14), min_size=5, max_size=7),
)
def test_live_features_equal_the_sql_reference(seed, late_frac, strides):
    """Random streams (gaps, devices gone for good, missing metrics, counter resets, XID
    and collector events on devices and racks, samples up to one bucket late, part swaps
    learnt up to 3 buckets late), compared tick by tick over more than the 6-h lookback
    (ticks skip buckets now and then)."""
    hours = 8.0
    samples, events = _stream(seed, hours, late_frac)
    con = duckdb.connect()
    con.execute(SCHEMA)
    first = 15 + int(seed % 60)  # first tick after 75 min to 6 h: warm-up reads the lookback
    ticks = [first]
    for s in strides * 3:
        if ticks[-1] + s > hours * 12:
            break
        ticks.append(ticks[-1] + s)
    live = LiveFeatures(B)
    stored = -1
    for k in ticks:
        # everything that arrived by tick k (late rows arrive one bucket after their own)
        con.executemany(
            "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)",
            [r for a, r in samples if stored < a <= k],
        ) if any(stored < a <= k for a, _ in samples) else None
        ev = [e for a, e in events if stored < a <= k]
        if ev:
            con.executemany(
                "INSERT INTO events (read_time, device_id, kind, severity, message, attrs) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ev,
            )
        stored = k
        t = T0 + timedelta(seconds=k * B)
        got = live.advance(con, t)
        ref = compute_features(con, t, t)
        if ref.is_empty():
            assert got.is_empty()
            continue
        _same(got, ref, f"tick {t} (seed {seed})")


def test_tick_must_be_on_the_grid():
    con = duckdb.connect()
    con.execute(SCHEMA)
    with pytest.raises(ValueError, match="grid"):
        LiveFeatures(B).advance(con, T0 + timedelta(seconds=30))
    assert tick_floor(T0 + timedelta(seconds=299.9)) == T0


SPEC = (
    "ecc_storm@any:onset=20m,fail_after=80m; psu_aging@any:onset=10m,fail_after=90m,"
    "severity=3; gpu_off_bus@any:onset=102m; pump_degradation@any:onset=0,fail_after=3h"
)


def test_service_table_equals_the_sql_path(tmp_path):
    """FailureRiskService (incremental features, every 5-min tick) gives the table
    failure_risks (SQL features) gives, tick after tick; between ticks the loss rule
    shows a GPU that fell off the bus."""
    path = tmp_path / "run.duckdb"
    sim = SiteSimulator(
        synthetic_site(32, racks_per_row=1, rows_per_hall=2),
        seed=3,
        start_time_s=BASE_START.timestamp(),
        faults=SPEC,
        horizon_s=2.5 * 3600,
    )
    run_simulation(sim, 2.5, path, step_s=30.0, fmt="duckdb", progress=False)
    con = duckdb.connect(str(path))
    start, end = con.sql("SELECT min(read_time), max(read_time) FROM samples").fetchall()[0]
    feats = compute_features(con, start + timedelta(minutes=20), end)
    labels = con.sql("SELECT fault_id, fault, device_id, onset, failure_time FROM labels").pl()
    lost_dev, fail_t = con.sql(
        "SELECT device_id, failure_time FROM labels WHERE fault = 'gpu_off_bus'"
    ).fetchall()[0]
    con.close()
    rows = label_rows(feats, labels, 1800, "run").filter(
        pl.col("device_class").is_in(["gpu", "psu"])  # two classes fit faster than four
    )
    model = FailureModel(1800).fit(rows, rows)  # fit quality is not the point here
    v = registry.save(model, {"note": "test"}, tmp_path / "models")
    registry.approve(v.version, tmp_path / "models")

    store = Store(path)
    try:
        svc = FailureRiskService(store, 1800, tmp_path / "models")
        before = tick_floor(fail_t - timedelta(seconds=1))  # fails inside the next bucket
        for k in (2, 1, 0):
            t = before - timedelta(minutes=5 * k)
            assert svc.refresh(t) is True
            assert svc.table is not None
            ref = failure_risks(store, t, 1800, tmp_path / "models")
            cols = ["device_id", "risk", "alarm", "status", "reasons", "model_version"]
            a, b = svc.table.select(cols).sort("device_id"), ref.select(cols).sort("device_id")
            assert a["device_id"].to_list() == b["device_id"].to_list()
            assert np.allclose(a["risk"].to_numpy(), b["risk"].to_numpy(), atol=1e-9)
            assert a.drop("risk").equals(b.drop("risk")), f"tick {t}"
        assert svc.by_device[lost_dev]["status"] == "ok"
        # a loss tick between feature ticks: the GPU that fell off the bus at fail_t
        # (XID 79, then silence) shows before the bucket closes
        at = fail_t + timedelta(seconds=90)
        assert tick_floor(at) == before
        assert svc.refresh(at) is True and svc.scored_at == at
        now = svc.by_device[lost_dev]
        assert now["status"] in ("failed", "lost") and now["risk"] == 1.0
        assert now["reasons"]
    finally:
        store.close()


def test_a_fresh_store_has_risk_before_its_first_feature_tick(tmp_path):
    """Every reading newer than the last 5-min grid tick (a site's first minutes, the
    demo's): the service scores with the reference as of the newest reading instead of
    serving an empty table until the bucket closes."""
    path = tmp_path / "fresh.duckdb"
    start = BASE_START + timedelta(seconds=30)  # just after a grid tick
    sim = SiteSimulator(
        synthetic_site(8, racks_per_row=1, rows_per_hall=1),
        seed=4,
        start_time_s=start.timestamp(),
        horizon_s=600,
    )
    run_simulation(sim, 4 / 60, path, step_s=30.0, fmt="duckdb", progress=False)
    models = tmp_path / "no-site-model"  # the shipped default serves
    store = Store(path)
    try:
        svc = FailureRiskService(store, 3600, models)
        as_of = (BASE_START + timedelta(minutes=4)).replace(tzinfo=None)
        assert tick_floor(as_of) == BASE_START.replace(tzinfo=None)
        assert svc.refresh(as_of) is True
        assert svc.table is not None and svc.table.height > 0 and svc.scored_at == as_of
        ref = failure_risks(store, as_of, 3600, models)
        cols = ["device_id", "risk", "status"]
        assert svc.table.select(cols).sort("device_id").equals(ref.select(cols).sort("device_id"))
    finally:
        store.close()


def test_a_part_swap_starts_the_features_afresh(tmp_path):
    """A GPU swapped in its slot (the twin's part history writes `part_swapped` from the
    inventory reports): from the swap on, the slot's features, live and SQL alike, see
    only the new part: not the old part's XIDs, temperatures or failure, even when the
    swap event lands after its bucket was read. The rack's events still count."""
    from domain.contract import Event, EventBatch, EventKind
    from twin.failure.features import failed_devices
    from twin.parts import PartHistory

    gpu, peer = "sv1/h1/row1/rk101/n01/gpu0", "sv1/h1/row1/rk101/n01/gpu1"
    rack = "rk101"
    swap_t = T0 + timedelta(hours=2, seconds=130)  # inside the bucket ending at 2 h 5 min
    store = Store(tmp_path / "swap.duckdb")

    def store_events(*evs: tuple[datetime, str, EventKind, dict]) -> None:
        """As ingest stores an event batch off the events topic."""
        batch = EventBatch(
            collector="test",
            site="sv1",
            rack=rack,
            seq=len(evs) + int(evs[0][0].timestamp()),
            sent_time_ms=0,
            events=[
                Event(
                    device_id=d,
                    kind=k,
                    severity="info" if k == EventKind.inventory else "critical",
                    read_time_ms=int((t - datetime(1970, 1, 1)).total_seconds() * 1000),
                    attrs=a,
                )
                for t, d, k, a in evs
            ],
        )
        store.write([], [batch], {})

    def samples_until(minutes: float, since: float) -> None:
        rows = []
        for m in np.arange(since, minutes, 1.0):
            rt = T0 + timedelta(minutes=float(m))
            new = rt >= swap_t
            # the old part runs hot and piles up corrected ECC errors; the new one is cool
            temp = 60.0 if new else 90.0
            ecc = (m - 122) if new else 10.0 * m
            for dev, tc, e in ((gpu, temp, ecc), (peer, 70.0, 0.0)):
                for metric, v in (
                    ("gpu_temp_c", tc),
                    ("power_w", 400.0),
                    ("ecc_corrected_total", e),
                ):
                    rows.append((rt, dev, metric, float(v), "gpu", rack))
        store.cursor().executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)", rows)

    def at(minutes: float) -> datetime:
        return T0 + timedelta(minutes=minutes)

    try:
        ph = PartHistory(store)
        old, new = {"uuid": "GPU-old", "serial": "100"}, {"uuid": "GPU-new", "serial": "200"}
        store_events(
            (T0, gpu, EventKind.inventory, old),
            (T0, peer, EventKind.inventory, {"uuid": "GPU-peer", "serial": "300"}),
        )
        ph.update()
        samples_until(120, 0)
        store_events(
            (at(100), gpu, EventKind.xid, {"xid": 94}),
            (at(101), gpu, EventKind.xid, {"xid": 94}),
            (at(110), gpu, EventKind.xid, {"xid": 79}),  # the old part fell off the bus
            (at(105), peer, EventKind.xid, {"xid": 94}),
            (at(115), rack, EventKind.source_error, {}),
        )
        live = LiveFeatures(B)
        con = store.cursor()

        def both(t: datetime) -> pl.DataFrame:
            got, ref = live.advance(con, t), compute_features(con, t, t)
            _same(got, ref, f"tick {t}")
            return got.filter(pl.col("device_id") == gpu)

        before = both(at(120))
        assert before["xid94_2h"].to_list() == [2] and before["temp_c"][0] == pytest.approx(90)
        assert gpu in failed_devices(con, at(120))["device_id"].to_list()

        # the new part reports (inventory and readings); the twin's part history has not
        # run yet, so the first tick after the swap does not know of it
        store_events((swap_t, gpu, EventKind.inventory, new))
        samples_until(125, 120)
        unaware = both(at(125))
        assert unaware["xid94_2h"].to_list() == [2]
        samples_until(130, 125)
        assert ph.update() == 1  # writes part_swapped at swap_t, a bucket late
        [(t_swap,)] = con.execute(
            "SELECT read_time FROM events WHERE kind = 'part_swapped' AND device_id = ?", [gpu]
        ).fetchall()
        assert t_swap == swap_t

        after = both(at(130))  # live reads the swap's bucket again, without the old part
        row = after.row(0, named=True)
        assert row["xid94_2h"] == 0 and row["xid79_2h"] == 0  # the old part's XIDs
        assert row["temp_c"] == pytest.approx(60)  # no old-part reading in its buckets
        assert row["temp_slope_kph"] == pytest.approx(0, abs=1e-9)
        assert row["ecc_corr_1h"] < 10  # the new part's counter, not 10 a minute
        assert row["collector_errors_1h"] == 1  # the rack's error still counts
        assert gpu not in failed_devices(con, at(130))["device_id"].to_list()
        peer_row = live.features(at(130)).filter(pl.col("device_id") == peer)
        assert peer_row["xid94_2h"].to_list() == [1]
        # a restarted service (warm-up over the lookback) agrees
        assert LiveFeatures(B).advance(con, at(130)).equals(live.features(at(130)))
    finally:
        store.close()
