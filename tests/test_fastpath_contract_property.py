"""Property: the bulk ingest path and the wire contract's reference decoder agree.

Valid telemetry batches are generated, then mutated the ways real messages go wrong
(keys dropped or repeated, wrong types, implausible values, NaN/Infinity, other encodings,
wrong topic or key, long strings, control characters, truncation, ...). For every message
the bulk path (`Stager.stage`) must give the verdict and reason of `contract.decode`, and
every sample it would store must lie in the contract's plausible range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.contract import (
    MAX_DEVICE_ID_CHARS,
    MAX_NAME_CHARS,
    METRICS,
    RANGES,
    ContractError,
    Kind,
    decode,
    telemetry_topic,
)
from ingest.staging import Stager
from ingest.validate import IngestPolicy
from tests.ingest_messages import Raw

NOW_MS = 1_795_310_735_000
POLICY = IngestPolicy(max_future_s=300.0, max_past_s=86_400.0)
WINDOW = (NOW_MS - int(POLICY.max_past_s * 1000), NOW_MS + int(POLICY.max_future_s * 1000))

# deterministic and bounded: runs in well under a minute on 2 cores
FIXED = settings(
    derandomize=True,
    database=None,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# where each kind's devices sit, and the key they travel under
PLACES: dict[Kind, list[tuple[str, list[str]]]] = {
    Kind.gpu: [("rk101", [f"sv1/h1/row1/rk101/n01/gpu{g}" for g in range(3)])],
    Kind.power: [
        ("rk102", ["sv1/h1/row1/rk102/shelf/psu1", "sv1/h1/row1/rk102/shelf/psu2"]),
        ("h1", ["sv1/h1/pdu-row1"]),
        ("facility", ["sv1/facility/ups"]),
    ],
    Kind.cooling: [("h1", ["sv1/h1/cdu-row1", "sv1/h1/cdu-row2"])],
    Kind.air: [("h2", ["sv1/h2/crah1"])],
    Kind.facility: [("facility", ["sv1/facility/utility", "sv1/plant/chiller-plant"])],
}
names = st.text(  # latin-1, so that every name can be re-encoded in it
    st.characters(
        min_codepoint=0x20,
        max_codepoint=0xFF,
        exclude_categories=("Cc",),
        exclude_characters='"\\:',
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def valid_batches(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(list(Kind)))
    rack, devices = draw(st.sampled_from(PLACES[kind]))
    n = draw(st.integers(1, 6))
    metrics = draw(st.lists(st.sampled_from(sorted(METRICS[kind])), min_size=n, max_size=n))
    values = [
        draw(st.floats(*RANGES[kind][m], allow_nan=False, allow_infinity=False)) for m in metrics
    ]
    return {
        "version": 1,
        "type": "telemetry",
        "batch_id": draw(st.uuids()).hex,
        "collector": draw(names),
        "kind": kind.value,
        "site": "sv1",
        "rack": rack,
        "seq": draw(st.integers(0, 2**40)),
        "interval_s": draw(st.floats(0.01, 3600.0)),
        "sent_time_ms": NOW_MS,
        "samples": {
            "device_id": draw(st.lists(st.sampled_from(devices), min_size=n, max_size=n)),
            "metric": metrics,
            "value": values,
            "read_time_ms": draw(
                st.lists(st.integers(NOW_MS - 3_600_000, NOW_MS), min_size=n, max_size=n)
            ),
        },
    }


WRONG_TYPES = st.sampled_from(["7", 7, -3, 1.5, True, None, [1], {"a": 1}, "", 2**70])
SAMPLE_KEYS = ("device_id", "metric", "value", "read_time_ms")
Message = tuple[bytes, str, bytes]  # value, topic, key
Mutation = Callable[[st.DrawFn, dict[str, Any], Message], Message]


def _dumps(doc: dict[str, Any]) -> bytes:
    # the standard library writes what orjson refuses (2**70, NaN), compact, as collectors do
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def drop_key(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    where = draw(st.sampled_from(["top", "samples"]))
    d = doc if where == "top" else doc["samples"]
    del d[draw(st.sampled_from(sorted(d)))]
    return _dumps(doc), msg[1], msg[2]


def duplicate_key(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    raw = msg[0]
    if draw(st.booleans()):
        k = draw(st.sampled_from([k for k in doc if k != "samples"]))
        v = draw(st.sampled_from([doc[k], 2, "other"]))
        at = 1
    else:
        k = draw(st.sampled_from(SAMPLE_KEYS))
        v = doc["samples"][k]
        at = raw.index(b'"samples":{') + len(b'"samples":{')
    return raw[:at] + orjson.dumps({k: v})[1:-1] + b"," + raw[at:], msg[1], msg[2]


def unknown_key(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    doc[draw(st.sampled_from(["extra", "note"]))] = draw(WRONG_TYPES)
    return _dumps(doc), msg[1], msg[2]


def wrong_type(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    k = draw(st.sampled_from([k for k in doc if k != "samples"]))
    doc[k] = draw(WRONG_TYPES)
    return _dumps(doc), msg[1], msg[2]


def wrong_sample_type(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    s = doc["samples"]
    col = draw(st.sampled_from(SAMPLE_KEYS))
    i = draw(st.integers(0, len(s[col]) - 1))
    s[col][i] = draw(
        {
            "device_id": st.sampled_from([None, [1], {"a": "b"}]),
            "metric": st.sampled_from([None, ["power_w"], {"a": "b"}]),
            "value": st.sampled_from([None, "hot", [1.0], {"a": 1}]),
            "read_time_ms": st.sampled_from(
                [None, "hot", [1], s["read_time_ms"][i] + 0.5, 2**60, 1.0e20]
            ),
        }[col]
    )
    return _dumps(doc), msg[1], msg[2]


def out_of_range(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    s = doc["samples"]
    i = draw(st.integers(0, len(s["value"]) - 1))
    lo, hi = RANGES[Kind(doc["kind"])][s["metric"][i]]
    s["value"][i] = draw(st.sampled_from([hi * 2 + 1, lo - abs(lo) - 1, 1e6, -1e300, 1e300]))
    return _dumps(doc), msg[1], msg[2]


def non_finite(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400"]))
    raw = msg[0]
    at = raw.index(b'"value":[') + len(b'"value":[')
    end = raw.index(b"]", at)
    first = raw[at:end].split(b",")
    first[draw(st.integers(0, len(first) - 1))] = literal
    return raw[:at] + b",".join(first) + raw[end:], msg[1], msg[2]


def encoding(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    doc["collector"] = f"kühler-{doc.get('collector', '')}"
    text = _dumps(doc).decode()
    how = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "ff", "bom"]))
    if how == "ff":
        raw = text.encode().replace(b"k\xc3\xbc", b"k\xff", 1)
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + text.encode()
    else:
        raw = text.encode(how)
    return raw, msg[1], msg[2]


def wrong_topic(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    other = draw(st.sampled_from([k for k in Kind if k.value != doc.get("kind")]))
    return msg[0], draw(st.sampled_from([telemetry_topic(other), "events"])), msg[2]


def wrong_key(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    return msg[0], msg[1], draw(st.sampled_from([b"rk9", b"h1", b"facility", b""]))


def long_string(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    field = draw(st.sampled_from(["collector", "site", "rack", "batch_id", "device_id"]))
    if field == "device_id":
        ids = doc["samples"]["device_id"]
        ids[0] = str(ids[0])
        ids[0] += "x" * draw(st.integers(MAX_DEVICE_ID_CHARS - len(ids[0]) - 2, 400))
    else:
        doc[field] = str(doc.get(field))
        doc[field] += "x" * draw(st.integers(MAX_NAME_CHARS - len(doc[field]) - 2, 300))
    return _dumps(doc), msg[1], msg[2]


def control_char(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    c = draw(st.sampled_from(["\x00", "\x01", "\t", "\n", "\x1b", "\x7f", "\x85", "\x9f"]))
    field = draw(st.sampled_from(["collector", "site", "rack", "batch_id", "device_id"]))
    if field == "device_id":
        doc["samples"]["device_id"][0] = str(doc["samples"]["device_id"][0]) + c
    else:
        doc[field] = str(doc.get(field))
        doc[field] = doc[field][:1] + c + doc[field][1:]
    return _dumps(doc), msg[1], msg[2]


def truncate(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    return msg[0][: draw(st.integers(0, len(msg[0]) - 1))], msg[1], msg[2]


def lengths(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    doc["samples"][draw(st.sampled_from(SAMPLE_KEYS))].pop()
    return _dumps(doc), msg[1], msg[2]


def other_rack(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    ids = doc["samples"]["device_id"]
    ids[0] = draw(
        st.sampled_from(["sv1/h1/row1/rk77/n01/gpu0", "sv9/h1/cdu-row1", "sv1", "sv1/h7/x"])
    )
    return _dumps(doc), msg[1], msg[2]


def odd_value(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    field, value = draw(
        st.sampled_from(
            [
                ("version", 2),
                ("version", "1"),
                ("version", 1.0),
                ("version", True),
                ("type", "events"),
                ("type", "gossip"),
                ("kind", "steam"),
                ("seq", -1),
                ("seq", 2**63),
                ("interval_s", 0),
                ("interval_s", -1.0),
                ("samples", {k: [] for k in SAMPLE_KEYS}),
                ("samples", "none"),
            ]
        )
    )
    doc[field] = value
    return _dumps(doc), msg[1], msg[2]


def skew(draw: st.DrawFn, doc: dict[str, Any], msg: Message) -> Message:
    s = doc["samples"]
    s["read_time_ms"][0] = draw(st.sampled_from([NOW_MS + 10**9, 0, -5, NOW_MS - 10**11]))
    return _dumps(doc), msg[1], msg[2]


MUTATIONS: list[Mutation] = [
    drop_key,
    duplicate_key,
    unknown_key,
    wrong_type,
    wrong_sample_type,
    out_of_range,
    non_finite,
    encoding,
    wrong_topic,
    wrong_key,
    long_string,
    control_char,
    truncate,
    lengths,
    other_rack,
    odd_value,
    skew,
]


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, list[str]]:
    doc = draw(valid_batches())
    msg: Message = (_dumps(doc), telemetry_topic(doc["kind"]), doc["rack"].encode())
    applied = []
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        try:
            doc = orjson.loads(msg[0])
        except orjson.JSONDecodeError:
            break  # already not JSON: further mutations of the document are moot
        if not isinstance(doc, dict) or not isinstance(doc.get("samples"), dict):
            break
        if not all(isinstance(doc["samples"].get(k), list) for k in SAMPLE_KEYS):
            break
        if not all(doc["samples"][k] for k in SAMPLE_KEYS):
            break
        if mutate in (out_of_range, non_finite) and not _well_formed(doc):
            break
        try:
            msg = mutate(draw, doc, msg)
        except (TypeError, KeyError, ValueError, IndexError):
            break  # not applicable to what earlier mutations left
        applied.append(mutate.__name__)
    return msg, applied


def _well_formed(doc: dict[str, Any]) -> bool:
    try:
        kind = Kind(doc.get("kind"))
        s = doc["samples"]
        return bool(s["value"]) and all(m in RANGES[kind] for m in s["metric"])
    except (ValueError, KeyError, TypeError):
        return False


@pytest.fixture(scope="module")
def stager():
    s = Stager(duckdb.connect(), POLICY)
    yield s
    s.close()


def bulk_verdict(stager: Stager, rec: Raw) -> tuple[str, list[tuple[str, str, float]]]:
    """(reason or 'ok', the (kind, metric, value) samples the bulk path would store)."""
    staged = stager.stage([rec], NOW_MS)
    reason = staged.dead[0].reason if staged.dead else "ok"
    if not staged.accepted:
        return reason, []
    where = f"WHERE {staged.row_filter}" if staged.row_filter else ""
    stored = stager.con.execute(
        f"SELECT r.kind, r.metric, r.value FROM _rows r SEMI JOIN _acc USING (i) {where}"
    ).fetchall()
    return reason, stored


def reference_verdict(rec: Raw) -> str:
    try:
        decode(rec.value, topic=rec.topic, key=rec.key, read_window_ms=WINDOW)
    except ContractError as err:
        return err.reason
    return "ok"


@FIXED
@given(messages())
def test_bulk_path_and_contract_agree(stager, case):
    (value, topic, key), applied = case
    rec = Raw(topic, 0, 0, key, value, [])
    reason, stored = bulk_verdict(stager, rec)
    assert reason == reference_verdict(rec), (applied, value[:300])
    for kind, metric, v in stored:
        lo, hi = RANGES[Kind(kind)][metric]
        assert math.isfinite(v) and lo <= v <= hi, (applied, kind, metric, v)
