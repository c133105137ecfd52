"""The bulk decode/validate/store path on a real DuckDB file: reasons, policies, dedupe.

Records are built as kafka-python hands them over (topic, partition, offset, key, value,
headers); the broker round trip is covered by test_ingest_deadletter.py.
"""

from __future__ import annotations

import math

import orjson
import pytest

from ingest.store import Store
from ingest.validate import IngestPolicy
from tests.ingest_messages import Records, batch_doc, encode, gpu_ids, now_ms


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "fast.duckdb")
    yield s
    s.close()


def stored(store: Store, rack: str) -> list[tuple]:
    return (
        store.cursor()
        .execute(
            "SELECT device_id, metric, epoch_ms(read_time), value, kind, rack FROM samples "
            "WHERE rack = ? ORDER BY ALL",
            [rack],
        )
        .fetchall()
    )


def reasons(result) -> dict[int, str]:
    return {d.record.offset: d.reason for d in result.staged.dead}


def test_valid_batches_are_stored_with_their_fields(store):
    rec = Records()
    t = now_ms()
    doc = batch_doc("rk1", t)
    result = store.ingest([rec(doc)], rec.offsets(), IngestPolicy())
    assert result.write.samples_stored == 12 and not result.staged.dead
    rows = stored(store, "rk1")
    want = sorted(
        zip(
            doc["samples"]["device_id"],
            doc["samples"]["metric"],
            doc["samples"]["read_time_ms"],
            doc["samples"]["value"],
            ["gpu"] * 12,
            ["rk1"] * 12,
            strict=True,
        )
    )
    assert rows == [tuple(r) for r in want]
    assert store.offsets() == {("telemetry.gpu", 0): 1}
    latest = (
        store.cursor()
        .execute(
            "SELECT value FROM latest WHERE device_id = ? AND metric = 'power_w'",
            [gpu_ids("rk1")[0]],
        )
        .fetchone()[0]
    )
    assert latest == doc["samples"]["value"][1]
    assert store.cursor().execute(
        "SELECT n_samples, n_rejected FROM ingested_batches WHERE batch_id = ?", [doc["batch_id"]]
    ).fetchone() == (12, 0)


def test_each_bad_message_gets_its_reason_and_good_ones_in_between_are_stored(store):
    rec = Records()
    t = now_ms()
    good = [batch_doc("rk2", t + k * 1000) for k in range(6)]
    nan_raw = encode(batch_doc("rk2", t)).replace(b'"value":[1.0', b'"value":[NaN')
    assert b"NaN" in nan_raw
    bad = {
        "truncated": encode(batch_doc("rk2", t))[:150],
        "strings": encode(
            batch_doc("rk2", t)
            | {
                "samples": {
                    "device_id": gpu_ids("rk2")[:1],
                    "metric": ["power_w"],
                    "value": ["hot"],
                    "read_time_ms": [t],
                }
            }
        ),
        "seq": encode(batch_doc("rk2", t, seq="seven")),
        "nan": nan_raw,
        "future": encode(batch_doc("rk2", t + 365 * 86400 * 1000)),
        "metric": encode(batch_doc("rk2", t, metrics=("warp_speed_c",))),
        "version": encode(batch_doc("rk2", t, version=7)),
        "empty": encode(batch_doc("rk2", t, devices=[])),
        "binary": bytes(range(256)),
        "array": b"[1, 2, 3]",
        "type": encode(batch_doc("rk2", t, type="gossip")),
        "lengths": encode(
            batch_doc("rk2", t)
            | {
                "samples": {
                    "device_id": gpu_ids("rk2")[:2],
                    "metric": ["power_w"],
                    "value": [1.0, 2.0],
                    "read_time_ms": [t, t],
                }
            }
        ),
    }
    expected = {
        "truncated": "invalid_json",
        "strings": "schema",
        "seq": "schema",
        "nan": "non_finite",
        "future": "timestamp_skew",
        "metric": "unknown_metric",
        "version": "unknown_version",
        "empty": "empty_batch",
        "binary": "not_utf8",
        "array": "invalid_envelope",
        "type": "invalid_envelope",
        "lengths": "schema",
    }
    records, offset_of = [], {}
    for k, (name, raw) in enumerate(bad.items()):
        records.append(
            rec(good[k % len(good)] if k < len(good) else batch_doc("rk2", t + (10 + k) * 1000))
        )
        offset_of[name] = rec.offset
        records.append(rec(raw))
    result = store.ingest(records, rec.offsets(), IngestPolicy())
    got = reasons(result)
    assert {name: got.get(off) for name, off in offset_of.items()} == expected
    assert len(stored(store, "rk2")) == 12 * len(bad)  # every good batch, nothing else
    nan = next(d for d in result.staged.dead if d.record.offset == offset_of["nan"])
    # one NaN among 12 samples: the other 11 are kept (policy keep_valid)
    assert (nan.samples_rejected, nan.samples_kept) == (1, 11)
    assert "non_finite=1" in nan.detail
    future = next(d for d in result.staged.dead if d.record.offset == offset_of["future"])
    assert future.samples_kept == 0 and future.samples_rejected == 12
    assert result.staged.samples_rejected["timestamp_skew"] == 12


def test_nan_batch_stores_valid_samples_and_infinity_is_rejected(store):
    rec = Records()
    t = now_ms()
    doc = batch_doc("rk3", t)
    raw = encode(doc).replace(b'"value":[1.0,2.0', b'"value":[Infinity,-Infinity')
    result = store.ingest([rec(raw)], rec.offsets(), IngestPolicy())
    (d,) = result.staged.dead
    assert d.reason == "non_finite" and (d.samples_rejected, d.samples_kept) == (2, 10)
    values = [r[3] for r in stored(store, "rk3")]
    assert len(values) == 10 and all(math.isfinite(v) for v in values)


def test_reject_batch_policy_stores_nothing_from_a_partly_bad_batch(store):
    rec = Records()
    raw = encode(batch_doc("rk4", now_ms())).replace(b'"value":[1.0', b'"value":[NaN')
    result = store.ingest([rec(raw)], rec.offsets(), IngestPolicy(partial="reject_batch"))
    assert result.staged.dead[0].samples_kept == 0
    assert result.staged.samples_rejected == {"non_finite": 1, "batch_rejected": 11}
    assert stored(store, "rk4") == []


def test_unknown_devices_are_counted_and_the_policy_decides(store, site):
    rec = Records()
    gpus = [d for d in site.devices() if d.device_class == "gpu"]
    rack = gpus[0].rack  # devices travel under their own rack's key
    known = [d.id for d in gpus if d.rack == rack][:2]
    devices = [*known, known[0].replace("/gpu", "/gpu9")]  # same rack, not in the site
    t = now_ms() - 10_000

    def rows_at(t_ms: int) -> list[tuple]:
        return [r for r in stored(store, rack) if r[2] == t_ms]

    accept = IngestPolicy.for_site(site)
    r1 = store.ingest([rec(batch_doc(rack, t, devices=devices))], rec.offsets(), accept)
    assert r1.staged.unknown_device_samples == 3 and not r1.staged.dead
    assert len(rows_at(t)) == 9
    reject = IngestPolicy.for_site(site, unknown_device="reject")
    r2 = store.ingest([rec(batch_doc(rack, t + 1, devices=devices))], rec.offsets(), reject)
    (d,) = r2.staged.dead
    assert d.reason == "unknown_device" and (d.samples_rejected, d.samples_kept) == (3, 6)
    assert {r[0] for r in rows_at(t + 1)} == set(known)
    # a malformed id is never accepted: it does not even start with the site
    r3 = store.ingest([rec(batch_doc("rk7", now_ms(), devices=["123"]))], rec.offsets(), accept)
    assert r3.staged.dead[0].reason == "bad_device_id"


def test_replayed_resent_and_rebatched_samples_are_stored_once(store):
    rec = Records()
    t = now_ms()
    a, b = batch_doc("rk8", t), batch_doc("rk8", t + 1000)
    merged = batch_doc("rk8", t)  # a collector re-batching a and b into one new batch
    for key in ("device_id", "metric", "value", "read_time_ms"):
        merged["samples"][key] = a["samples"][key] + b["samples"][key]
    policy = IngestPolicy()
    r1 = store.ingest([rec(a), rec(a), rec(merged)], rec.offsets(), policy)  # same poll
    assert r1.write.batches_skipped == 1  # the second copy of a
    assert r1.write.duplicate_samples == 12  # a's samples inside `merged`
    assert r1.write.samples_stored == 24
    r2 = store.ingest([rec(a), rec(b), rec(merged)], rec.offsets(), policy)  # replay later
    assert r2.write.samples_stored == 0
    assert r2.write.batches_skipped == 2 and r2.write.duplicate_samples == 12
    rows = stored(store, "rk8")
    assert len(rows) == 24 == len({r[:3] for r in rows})
    n = (
        store.cursor()
        .execute(
            "SELECT sum(n_samples) FROM ingested_batches WHERE batch_id IN (?, ?, ?)",
            [a["batch_id"], b["batch_id"], merged["batch_id"]],
        )
        .fetchone()[0]
    )
    assert n == 24  # per-batch counts add up to what is stored


def test_late_samples_are_stored_in_read_order_per_series(store):
    rec = Records()
    t = now_ms()
    policy = IngestPolicy()
    store.ingest([rec(batch_doc("rk9", t + 5000))], rec.offsets(), policy)
    late = store.ingest(
        [rec(batch_doc("rk9", t)), rec(batch_doc("rk9", t + 5000))], rec.offsets(), policy
    )
    assert late.write.samples_stored == 12 and late.write.duplicate_samples == 12
    assert len(stored(store, "rk9")) == 24


def test_a_batch_listing_a_sample_twice_needs_exact_dedupe(store):
    rec = Records()
    doc = batch_doc("rk10", now_ms(), devices=gpu_ids("rk10", 1))
    for key in doc["samples"]:
        doc["samples"][key] = doc["samples"][key] * 2
    exact = store.ingest([rec(doc)], rec.offsets(), IngestPolicy(exact_dedupe=True))
    assert exact.write.samples_stored == 3 and exact.write.duplicate_samples == 3
    assert len(stored(store, "rk10")) == 3


def test_messages_with_newlines_and_events_are_stored(store):
    rec = Records()
    t = now_ms()
    pretty = orjson.dumps(batch_doc("rk11", t), option=orjson.OPT_INDENT_2)
    assert b"\n" in pretty
    event = {
        "version": 1,
        "type": "events",
        "batch_id": "ev-1",
        "collector": "c",
        "site": "sv1",
        "rack": "rk11",
        "seq": 1,
        "sent_time_ms": t,
        "events": [
            {
                "device_id": gpu_ids("rk11")[0],
                "kind": "xid",
                "severity": "critical",
                "read_time_ms": t,
                "message": "XID 79",
                "attrs": {"xid": 79},
            }
        ],
    }
    events = Records("events")  # events travel on their own topic
    result = store.ingest(
        [rec(pretty), events(event)], rec.offsets() | events.offsets(), IngestPolicy()
    )
    assert not result.staged.dead
    assert result.write.samples_stored == 12 and result.write.events_stored == 1
    assert store.cursor().execute(
        "SELECT kind, attrs->>'xid' FROM events WHERE batch_id = 'ev-1'"
    ).fetchone() == ("xid", "79")


def test_too_large_messages_are_refused_before_parsing(store):
    rec = Records()
    doc = batch_doc("rk12", now_ms(), devices=gpu_ids("rk12", 3000))
    raw = encode(doc)
    policy = IngestPolicy(max_message_bytes=len(raw) - 1)
    result = store.ingest([rec(raw)], rec.offsets(), policy)
    assert reasons(result) == {0: "too_large"}
    assert store.offsets() == {("telemetry.gpu", 0): 1}  # consumed, not retried forever


def test_envelope_fields_after_the_samples_are_read_too(store):
    """Collectors put "samples" last and ingest reads the envelope from the part before
    it; any other key order must give the same verdicts."""
    rec = Records()
    t = now_ms()
    first = batch_doc("rk13", t)
    samples_first = {"samples": first.pop("samples"), **first}
    middle = batch_doc("rk13", t + 1000)
    items = list(middle.items())
    in_middle = dict(items[:3] + [items[-1]] + items[3:-1])
    bad = batch_doc("rk13", t + 2000, version=7)
    bad_items = list(bad.items())
    version_after = dict(bad_items[1:] + bad_items[:1])
    result = store.ingest(
        [rec(samples_first), rec(in_middle), rec(version_after)], rec.offsets(), IngestPolicy()
    )
    assert reasons(result) == {2: "unknown_version"}
    assert result.write.samples_stored == 24


def test_rows_are_appended_in_read_order_per_series_whatever_is_filtered(store):
    """Per device and metric, rowid order follows read order, also when some messages of
    the poll are skipped, rejected or partly rejected (filters must not reorder)."""
    rec = Records()
    t = now_ms() - 500_000
    devices = gpu_ids("rk14", 16)
    docs = [
        batch_doc("rk14", t + k * 1000, devices=devices, value=float(k)) for k in range(400)
    ]  # 19,200 samples: many vectors, so parallel operators
    records = []
    for k, doc in enumerate(docs):
        records.append(rec(doc))
        if k % 9 == 0:
            records.append(rec(doc))  # a re-send: skipped
        if k % 11 == 0:
            records.append(rec(batch_doc("rk14", t + k * 1000 + 500, version=3)))
        if k % 13 == 0:
            raw = encode(batch_doc("rk14", t + k * 1000 + 700)).replace(
                b'"value":[1.0', b'"value":[NaN'
            )
            records.append(rec(raw))  # partly bad: the rest is stored
    result = store.ingest(records, rec.offsets(), IngestPolicy())
    assert result.write.batches_skipped == 45 and result.staged.partial
    bad = (
        store.cursor()
        .execute("""
        SELECT count(*) FROM (
            SELECT read_time - lag(read_time) OVER (PARTITION BY device_id, metric
                                                    ORDER BY rowid) AS step
            FROM samples WHERE rack = 'rk14') WHERE step <= INTERVAL 0 SECOND""")
        .fetchone()[0]
    )
    assert bad == 0


def test_staging_files_do_not_outlive_a_poll_or_a_killed_process(store, tmp_path):
    import os
    import subprocess

    from ingest.staging import Stager

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"dctwin-ingest-{dead.pid}-0.ndjson"  # left by a SIGKILLed worker
    stale.write_bytes(b"{}")
    mine = tmp_path / f"dctwin-ingest-{os.getpid()}-99.ndjson"  # a live process's file
    mine.write_bytes(b"{}")
    stager = Stager(store.con, IngestPolicy(), spool_dir=str(tmp_path))
    assert not stale.exists() and mine.exists()
    rec = Records()
    staged = stager.stage([rec(batch_doc("rk15", now_ms()))], now_ms())
    assert staged.accepted == 1
    assert not os.path.exists(stager.path)  # read and removed within the poll
