import orjson
import pytest

from domain.contract import (
    ContractError,
    Event,
    EventBatch,
    EventKind,
    Kind,
    SampleColumns,
    TelemetryBatch,
    decode,
    encode,
)


def _batch(**kw) -> TelemetryBatch:
    cols = SampleColumns(
        device_id=["sv1/h1/row1/rk101/n01/gpu0"] * 2,
        metric=["gpu_temp_c", "power_w"],
        value=[61.5, 655.0],
        read_time_ms=[1_790_000_000_000, 1_790_000_000_000],
    )
    return TelemetryBatch(
        collector="c1",
        kind=Kind.gpu,
        site="sv1",
        rack="rk101",
        seq=1,
        interval_s=1.0,
        sent_time_ms=1_790_000_000_100,
        samples=cols,
        **kw,
    )


def test_roundtrip_keeps_every_field():
    b = _batch()
    back = decode(encode(b))
    assert back == b
    assert back.samples.read_time_ms == [1_790_000_000_000] * 2


def test_events_roundtrip():
    e = EventBatch(
        collector="c1",
        site="sv1",
        rack="rk101",
        seq=2,
        sent_time_ms=1,
        events=[
            Event(
                device_id="sv1/h1/row1/rk101/n01/gpu3",
                kind=EventKind.xid,
                severity="critical",
                read_time_ms=1,
                attrs={"xid": 79},
            )
        ],
    )
    assert decode(encode(e)) == e


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"version": 1, "type": "telemetry"', "invalid_json"),
        (b"[1, 2]", "invalid_envelope"),
        (b'{"version": 99, "type": "telemetry"}', "unknown_version"),
        (b'{"version": 1, "type": "gossip"}', "invalid_envelope"),
    ],
)
def test_malformed_messages_get_a_reason(raw, reason):
    with pytest.raises(ContractError) as err:
        decode(raw)
    assert err.value.reason == reason


def test_column_length_mismatch_is_rejected():
    doc = orjson.loads(encode(_batch()))
    doc["samples"]["value"].pop()
    with pytest.raises(ContractError, match="differ in length") as err:
        decode(orjson.dumps(doc))
    assert err.value.reason == "schema"


def test_unknown_metric_is_rejected():
    doc = orjson.loads(encode(_batch()))
    doc["samples"]["metric"][0] = "gpu_vibes"
    with pytest.raises(ContractError) as err:
        decode(orjson.dumps(doc))
    assert err.value.reason == "unknown_metric"
    assert "gpu_vibes" in err.value.detail
