"""Regressions of issue #25 point 7: messages the bulk ingest path stored (or refused with
another reason) although the wire contract refuses them. Each is checked on both paths:
the bulk path (`Stager.stage`, no broker needed) and the reference (`contract.decode`).
"""

from __future__ import annotations

from typing import Any

import duckdb
import orjson
import pytest

from domain import contract
from domain.contract import ContractError, decode
from ingest.staging import Stager
from ingest.validate import IngestPolicy
from tests.ingest_messages import Raw, batch_doc, encode, gpu_ids, now_ms

POLICY = IngestPolicy()


def fast_poll(records: list[Raw], policy: IngestPolicy = POLICY) -> list[tuple[str, int]]:
    """Per record (offsets 0..n-1): (reason or 'ok', samples kept of a dead-lettered
    batch), from the bulk path staging them as one poll."""
    stager = Stager(duckdb.connect(), policy)
    try:
        staged = stager.stage(records, now_ms())
    finally:
        stager.close()
    out = [("ok", -1)] * len(records)
    for d in staged.dead:
        out[d.record.offset] = (d.reason, d.samples_kept)
    return out


def fast(rec: Raw, policy: IngestPolicy = POLICY) -> tuple[str, int]:
    return fast_poll([rec._replace(offset=0)], policy)[0]


def reference(rec: Raw, policy: IngestPolicy = POLICY) -> str:
    t = now_ms()
    window = (t - int(policy.max_past_s * 1000), t + int(policy.max_future_s * 1000))
    try:
        decode(rec.value, topic=rec.topic, key=rec.key, read_window_ms=window)
    except ContractError as err:
        return err.reason
    return "ok"


def raw(value: bytes | dict, topic: str = "telemetry.gpu", key: bytes | None = None) -> Raw:
    if isinstance(value, dict):
        key = key if key is not None else value["rack"].encode()
        value = encode(value)
    return Raw(topic, 0, 0, key if key is not None else b"rk1", value, [])


def check(rec: Raw, want: str) -> None:
    """Both paths give `want` ('ok' or the reason); the bulk path is asked first."""
    assert fast(rec)[0] == want, "bulk path"
    assert reference(rec) == want, "contract.decode"


def test_a_valid_batch_is_accepted_by_both():
    check(raw(batch_doc("rk1", now_ms())), "ok")


def test_duplicate_keys_are_refused():
    body = encode(batch_doc("rk1", now_ms()))
    assert body.startswith(b'{"version":1,')
    twice = body.replace(b'{"version":1,', b'{"version":1,"version":2,', 1)
    check(raw(twice, key=b"rk1"), "duplicate_key")
    in_samples = body.replace(b'"value":[', b'"value":[9.0,9.0,9.0],"value":[', 1)
    check(raw(in_samples, key=b"rk1"), "duplicate_key")


def test_a_fractional_read_time_is_refused_not_rounded():
    doc = batch_doc("rk1", now_ms())
    doc["samples"]["read_time_ms"][0] += 0.5
    check(raw(doc), "schema")


@pytest.mark.parametrize(
    ("metric", "value"),
    [("gpu_temp_c", 1e6), ("energy_mj", -5.0), ("power_w", -1.0), ("gpu_temp_c", -273.15)],
)
def test_implausible_values_are_out_of_range_and_the_rest_is_kept(metric, value):
    doc = batch_doc("rk1", now_ms())  # 4 GPUs x (gpu_temp_c, power_w, energy_mj)
    k = doc["samples"]["metric"].index(metric)
    doc["samples"]["value"][k] = value
    assert fast(raw(doc)) == ("out_of_range", 11)
    assert reference(raw(doc)) == "out_of_range"


def test_every_metric_has_a_range_and_the_bounds_hold_on_both_paths():
    assert {k: set(v) for k, v in contract.RANGES.items()} == {
        k: set(v) for k, v in contract.METRICS.items()
    }
    cases, records = [], []
    for kind, ranges in contract.RANGES.items():
        for metric, (lo, hi) in ranges.items():
            base = dict(metrics=(metric,), devices=[f"sv1/h1/row1/rk1/n01/dev{kind.value}"])
            for v, want in ((lo, "ok"), (hi, "ok"), (hi * 1.01 + 1, "out_of_range")):
                doc = batch_doc("rk1", now_ms(), kind=kind.value, value=v, **base)
                rec = raw(doc, topic=f"telemetry.{kind.value}")._replace(offset=len(records))
                cases.append((kind, metric, v, want))
                records.append(rec)
    got = fast_poll(records)
    for (kind, metric, v, want), rec, (reason, _) in zip(cases, records, got, strict=True):
        assert (reason, reference(rec)) == (want, want), (kind, metric, v)


def test_a_batch_on_another_kinds_topic_is_refused():
    cooling = batch_doc("h1", now_ms(), devices=["sv1/h1/cdu-row1"], metrics=("flow_lpm",))
    cooling["kind"] = "cooling"
    check(raw(cooling, topic="telemetry.gpu"), "wrong_topic")
    check(raw(cooling, topic="telemetry.cooling"), "ok")


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85"])
def test_device_ids_with_control_characters_are_refused(char):
    ids = gpu_ids("rk1")
    ids[1] = ids[1].replace("gpu1", f"gpu{char}1")
    check(raw(batch_doc("rk1", now_ms(), devices=ids)), "bad_device_id")


def test_devices_of_another_rack_and_a_key_that_is_not_the_rack_are_refused():
    rk77 = batch_doc("rk9", now_ms(), devices=gpu_ids("rk77"))  # keyed and labelled rk9
    check(raw(rk77), "bad_device_id")
    labelled = batch_doc("rk77", now_ms(), devices=gpu_ids("rk77"))
    check(raw(labelled, key=b"rk9"), "wrong_key")
    # hall-level and site-level devices travel under the hall's and `facility` keys
    cdu = batch_doc("h1", now_ms(), devices=["sv1/h1/cdu-row1"], metrics=("flow_lpm",))
    check(raw(cdu | {"kind": "cooling"}, topic="telemetry.cooling"), "ok")
    meter = batch_doc("facility", now_ms(), devices=["sv1/plant/chiller-plant"])
    meter |= {"kind": "facility", "samples": meter["samples"] | {"metric": ["power_kw"] * 3}}
    meter["samples"]["device_id"] = meter["samples"]["device_id"][:1] * 3
    meter["samples"]["read_time_ms"] = [
        t + k for k, t in enumerate(meter["samples"]["read_time_ms"])
    ]
    check(raw(meter, topic="telemetry.facility"), "ok")


def test_string_fields_are_bounded():
    huge = batch_doc("rk1", now_ms(), collector="c" * 5_000_000)
    check(raw(huge), "schema")
    long_id = batch_doc("rk1", now_ms(), devices=[gpu_ids("rk1")[0] + "x" * 300])
    check(raw(long_id), "bad_device_id")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32", "latin-1"])
def test_a_batch_not_in_utf8_is_refused_as_such(codec):
    doc: dict[str, Any] = batch_doc("rk1", now_ms(), collector="kühler")
    body = orjson.dumps(doc).decode().encode(codec)
    check(raw(body, key=b"rk1"), "not_utf8")
