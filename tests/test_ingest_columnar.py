"""Issue 24: the columnar sample decoder builds exactly the rows the JSON reader builds.

`Stager.stage` decodes an ordinary poll's sample columns straight to Arrow and leaves
anything unusual to DuckDB's JSON reader (on which the verdicts rest). Both are run on the
same polls here: verdicts, counters and the rows that would be stored must be identical,
and ordinary messages must really take the columnar path.
"""

from __future__ import annotations

import json

import duckdb
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contract import telemetry_topic
from ingest.staging import Stager
from tests.ingest_messages import Raw
from tests.test_fastpath_contract_property import FIXED, NOW_MS, POLICY, messages, valid_batches


@pytest.fixture(scope="module")
def stagers():
    pair = (Stager(duckdb.connect(), POLICY), Stager(duckdb.connect(), POLICY, columnar=False))
    yield pair
    for s in pair:
        s.close()


def outcome(stager: Stager, recs: list[Raw]):
    staged = stager.stage(recs, NOW_MS)
    dead = [(d.record.offset, d.reason, d.detail, d.samples_rejected) for d in staged.dead]
    rows = []
    if staged.accepted:
        where = f"WHERE {staged.row_filter}" if staged.row_filter else ""
        order = "r.rid" if staged.columnar else "r.rowid"  # poll order on either path
        rows = stager.con.execute(
            "SELECT r.i, r.kind, r.rack, r.site, r.device_id, r.metric, r.value, "
            f"r.read_time_ms FROM _rows r SEMI JOIN _acc USING (i) {where} ORDER BY {order}"
        ).fetchall()
    counters = (staged.accepted, staged.partial, dict(staged.samples_rejected))
    return dead, counters, rows, staged.columnar


def records(values: list[tuple[bytes, str, bytes | None]]) -> list[Raw]:
    return [Raw(topic, 0, k, key, value, []) for k, (value, topic, key) in enumerate(values)]


# fewer examples than the contract property (which covers single messages): each one
# stages a poll twice; keeps this file within its time budget on 2 cores
FEWER = settings(FIXED, max_examples=80)


@FEWER
@given(st.lists(messages(), min_size=1, max_size=3))
def test_columnar_and_json_reader_agree_on_any_poll(stagers, cases):
    recs = records([msg for msg, _ in cases])
    columnar, reader = (outcome(s, recs) for s in stagers)
    assert columnar[:3] == reader[:3], [applied for _, applied in cases]
    assert not reader[3]


def _doc(draw_doc: dict) -> tuple[bytes, str, bytes]:
    return orjson.dumps(draw_doc), telemetry_topic(draw_doc["kind"]), draw_doc["rack"].encode()


@settings(FIXED, max_examples=30)
@given(st.lists(valid_batches(), min_size=1, max_size=4))
def test_ordinary_polls_take_the_columnar_path(stagers, docs):
    recs = records([_doc(d) for d in docs])
    columnar, reader = (outcome(s, recs) for s in stagers)
    assert columnar[:3] == reader[:3]
    if columnar[1][0] == len(docs):  # every message valid: no reason to decline
        assert columnar[3]


def _variants(doc: dict) -> dict[str, bytes]:
    """The same batch written the ways a producer other than ours might write it."""
    s = doc["samples"]
    first_time = {**{k: v for k, v in doc.items() if k != "samples"}}
    reordered = {"samples": {k: s[k] for k in reversed(list(s))}, **first_time}
    return {
        "compact": orjson.dumps(doc),
        "spaces": json.dumps(doc).encode(),  # ", " and ": " separators
        "indented": json.dumps(doc, indent=2).encode(),  # newlines: re-encoded
        "samples first": orjson.dumps(reordered),
        "columns reversed": orjson.dumps({**first_time, "samples": reordered["samples"]}),
        "integer values": orjson.dumps(
            {**doc, "samples": {**s, "value": [int(v) for v in s["value"]]}}
        ),
        "numeric strings": orjson.dumps(
            {**doc, "samples": {**s, "value": [str(v) for v in s["value"]]}}
        ),
        "boolean value": orjson.dumps({**doc, "samples": {**s, "value": [True, *s["value"][1:]]}}),
        "null value": orjson.dumps({**doc, "samples": {**s, "value": [None, *s["value"][1:]]}}),
        "fractional time": orjson.dumps(
            {**doc, "samples": {**s, "read_time_ms": [t + 0.5 for t in s["read_time_ms"]]}}
        ),
        "escaped id": orjson.dumps(
            {
                **doc,
                "samples": {**s, "device_id": [d + '\\",\\"metric\\":' for d in s["device_id"]]},
            }
        ),
        "short column": orjson.dumps({**doc, "samples": {**s, "metric": s["metric"][1:]}}),
        "extra column": orjson.dumps({**doc, "samples": {**s, "unit": ["W"] * len(s["value"])}}),
        "trailing junk": orjson.dumps(doc)[:-1] + b',"x":1}',
        "truncated": orjson.dumps(doc)[:-3],
    }


def test_odd_layouts_agree_and_plain_ones_are_columnar(stagers):
    base = {
        "version": 1,
        "type": "telemetry",
        "batch_id": "b-odd",
        "collector": "c1",
        "kind": "gpu",
        "site": "sv1",
        "rack": "rk101",
        "seq": 3,
        "interval_s": 1.0,
        "sent_time_ms": NOW_MS,
        "samples": {
            "device_id": ["sv1/h1/row1/rk101/n01/gpu0", "sv1/h1/row1/rk101/n01/gpu1"],
            "metric": ["power_w", "gpu_temp_c"],
            "value": [350.5, 61.0],
            "read_time_ms": [NOW_MS - 1000, NOW_MS - 1000],
        },
    }
    topic = telemetry_topic("gpu")
    plain = ("compact", "spaces", "indented", "samples first", "columns reversed", "integer values")
    for name, value in _variants(base).items():
        recs = records([(value, topic, b"rk101")])
        columnar, reader = (outcome(s, recs) for s in stagers)
        assert columnar[:3] == reader[:3], name
        if name in plain:
            assert columnar[3] and len(columnar[2]) == 2, name
        # and beside an ordinary message in the same poll
        recs = records([(orjson.dumps(base), topic, b"rk101"), (value, topic, b"rk101")])
        columnar, reader = (outcome(s, recs) for s in stagers)
        assert columnar[:3] == reader[:3], name
