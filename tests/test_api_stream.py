"""`GET /v1/stream` over a real uvicorn server: ids, resume without gaps, reset beyond
the replay buffer, and the live view publishing PUE and rack changes."""

from __future__ import annotations

import contextlib
import threading

import httpx
import pytest

from api.app import create_app
from api.keys import Role
from api.live_view import LiveView
from ingest.store import Store
from tests.apihelpers import bearer, fill_store, keys_per_role, serve
from twin.events import EventBus
from twin.state import Twin


class SseReader:
    """Reads events off an open text/event-stream response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def wait_open(self) -> None:
        """Until the server's opening comment: from here on no published event is lost."""
        for line in self.lines:
            if line.startswith(": dctwin stream"):
                return
        raise AssertionError("stream ended before it opened")

    def next_event(self) -> dict:
        ev: dict = {}
        for line in self.lines:
            if line == "":
                if "data" in ev or "id" in ev:
                    return ev
                ev = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            ev[field] = (
                ev.get(field, "") + ("\n" if field == "data" and field in ev else "") + value
            )
        raise AssertionError("stream ended")

    def take(self, n: int, skip: tuple[str, ...] = ()) -> list[dict]:
        out = []
        while len(out) < n:
            ev = self.next_event()
            if ev.get("event") not in skip:
                out.append(ev)
        return out


@pytest.fixture
def stream_env(tmp_path, site):
    store = Store(tmp_path / "twin.duckdb")
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    bus = EventBus(capacity=16)
    app = create_app(Twin(site, store), keys=keys, bus=bus)
    with serve(app) as url:
        yield url, bus, bearer(tokens[Role.viewer])
    store.close()


def _open(url: str, headers: dict, **params):
    client = httpx.Client(base_url=url, timeout=httpx.Timeout(10.0))
    return client, client.stream("GET", "/v1/stream", headers=headers, params=params)


def test_events_carry_ids_and_resume_after_reconnect_without_gaps(stream_env):
    url, bus, h = stream_env
    client, ctx = _open(url, h)
    with client, ctx as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(res)
        reader.wait_open()
        for i in range(3):
            bus.publish("pue", {"value": 1.2 + i / 100})
        first = reader.take(3)
    assert [e["event"] for e in first] == ["pue"] * 3
    ids = [e["id"] for e in first]
    assert all(i.startswith(bus.epoch + "-") for i in ids)
    last_seen = ids[1]  # pretend the client dropped after the second event
    for i in range(4):  # published while it was away
        bus.publish("alert", {"n": i})
    client, ctx = _open(url, {**h, "Last-Event-ID": last_seen})
    with client, ctx as res:
        got = SseReader(res).take(5)
    assert [e["id"] for e in got] == [ids[2]] + [f"{bus.epoch}-{s}" for s in range(4, 8)]
    assert [e["event"] for e in got] == ["pue", "alert", "alert", "alert", "alert"]
    seqs = [int(e["id"].rsplit("-", 1)[1]) for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + 5)), "a gap in the replay"


def test_resume_when_up_to_date_replays_nothing_old(stream_env):
    url, bus, h = stream_env
    evs = [bus.publish("pue", {"n": i}) for i in range(3)]
    client, ctx = _open(url, {**h, "Last-Event-ID": evs[-1].event_id(bus.epoch)})
    with client, ctx as res:
        reader = SseReader(res)
        reader.wait_open()
        bus.publish("pue", {"n": 3})
        assert reader.next_event()["data"] == '{"n":3}'


def test_query_parameter_resumes_too(stream_env):
    url, bus, h = stream_env
    evs = [bus.publish("racks", {"n": i}) for i in range(3)]
    client, ctx = _open(url, h, last_event_id=evs[0].event_id(bus.epoch))
    with client, ctx as res:
        got = SseReader(res).take(2)
    assert [e["data"] for e in got] == ['{"n":1}', '{"n":2}']


def test_resume_beyond_the_buffer_sends_reset_then_current_state(stream_env):
    url, bus, h = stream_env
    first = bus.publish("pue", {"value": 1.0})
    for i in range(40):  # capacity is 16: the first event is long gone
        bus.publish("racks", {"n": i})
    client, ctx = _open(url, {**h, "Last-Event-ID": first.event_id(bus.epoch)})
    with client, ctx as res:
        reader = SseReader(res)
        reset = reader.next_event()
        assert reset["event"] == "reset"
        assert '"missed":' in reset["data"] and '"buffer_size":16' in reset["data"]
        after = reader.next_event()
    assert after["event"] in ("pue", "racks")


def test_id_from_another_server_run_resets(stream_env):
    url, bus, h = stream_env
    bus.publish("pue", {"value": 1.0})
    client, ctx = _open(url, {**h, "Last-Event-ID": "deadbeef-5"})
    with client, ctx as res:
        assert SseReader(res).next_event()["event"] == "reset"


def test_new_subscriber_gets_latest_of_each_type_first(stream_env):
    url, bus, h = stream_env
    bus.publish("pue", {"value": 1.1})
    bus.publish("pue", {"value": 1.2})
    bus.publish("racks", {"n": 1})
    client, ctx = _open(url, h)
    with client, ctx as res:
        got = SseReader(res).take(2)
    assert [(e["event"], e["data"]) for e in got] == [
        ("pue", '{"value":1.2}'),
        ("racks", '{"n":1}'),
    ]


@contextlib.contextmanager
def _live_stream(tmp_path, site, minutes: int = 0, feeds_of=lambda twin: []):
    """A served app whose live view ticks only when the test says, and an open stream:
    yields (base url, SSE reader, live view, store, tokens per role)."""
    store = Store(tmp_path / "twin.duckdb")
    if minutes:
        fill_store(store, site, minutes=minutes)
    keys, tokens = keys_per_role(tmp_path / "keys.duckdb")
    bus = EventBus()
    twin = Twin(site, store)
    live = LiveView(twin, bus, interval_s=0.2, feeds=feeds_of(twin))
    app = create_app(twin, keys=keys, bus=bus, live=live)
    try:
        with serve(app) as url:
            client, ctx = _open(url, bearer(tokens[Role.viewer]))
            with client, ctx as res:
                reader = SseReader(res)
                reader.wait_open()
                yield url, reader, live, store, tokens
    finally:
        store.close()


def test_live_view_publishes_pue_and_racks_from_the_store(tmp_path, site):
    with _live_stream(tmp_path, site, minutes=1) as (url, reader, live, _, tokens):
        threading.Thread(target=live.tick, daemon=True).start()
        got = {e["event"]: e for e in reader.take(2)}
        api_pue = httpx.get(f"{url}/v1/pue", headers=bearer(tokens[Role.viewer])).json()
    import json

    pue = json.loads(got["pue"]["data"])
    assert pue["value"] == pytest.approx(api_pue["value"], rel=1e-12)
    assert pue["category"] == "PUE1" and pue["it_kw"] > 0
    racks = json.loads(got["racks"]["data"])
    assert len(racks["racks"]) == 32
    assert racks["fields"][:2] == ["gpu_max_temp_c", "power_kw"]
    assert all(v[0] is not None and 20 < v[0] < 100 for v in racks["racks"].values())


def test_bus_replay_bookkeeping():
    bus = EventBus(capacity=4)
    evs = [bus.publish("x", i) for i in range(6)]  # seq 1..6, buffer keeps 3..6
    assert [e.seq for e in bus.since(4).events] == [5, 6]
    r = bus.since(1)
    assert r.gap and r.missed == 1 and [e.seq for e in r.events] == [3, 4, 5, 6]
    assert not bus.since(2).gap  # 3 is the oldest kept: nothing lost after 2
    assert bus.since(6).events == [] and not bus.since(6).gap
    assert bus.since(99).gap  # an id from the future is not ours
    assert bus.parse_id(evs[0].event_id(bus.epoch)) == 1
    assert bus.parse_id("other-1") is None and bus.parse_id("junk") is None


def test_recommendations_stream_as_they_are_proposed_and_decided(tmp_path, site):
    """The live view's recommendations feed: an event when one is proposed and when an
    operator decides it over the API, none while nothing changes."""
    import json

    from api.feeds import recommendations_feed
    from twin.optimizer.recommendations import RecommendationStore, store_opener
    from twin.optimizer.search import Decision

    with _live_stream(
        tmp_path,
        site,
        feeds_of=lambda twin: [recommendations_feed(store_opener(twin.store.cursor))],
    ) as (
        url,
        reader,
        live,
        store,
        tokens,
    ):
        live.tick()  # nothing proposed yet
        first = reader.take(1, skip=("pue", "racks"))[0]
        rec_id = RecommendationStore(store.cursor()).propose(
            Decision(
                recommended={"chw_supply_setpoint_c": 20.0},
                reason="saves power",
                category="recommended",
                current={"chw_supply_setpoint_c": 18.0},
                state={"it_kw": 1200.0},
                model_version="opt-test",
                predicted_savings_kw=12.5,
            ),
            site.site.id,
        )
        live.tick()
        live.tick()  # unchanged: no second event
        proposed = reader.take(1, skip=("pue", "racks"))[0]
        r = httpx.post(
            f"{url}/v1/recommendations/{rec_id}/accept", headers=bearer(tokens[Role.operator])
        )
        assert r.status_code == 200, r.text
        live.tick()
        accepted = reader.take(1, skip=("pue", "racks"))[0]
    assert first["event"] == proposed["event"] == accepted["event"] == "recommendations"
    assert json.loads(first["data"]) == {"items": []}
    assert json.loads(proposed["data"])["items"] == [
        {
            "id": rec_id,
            "status": "proposed",
            "predicted_savings_kw": 12.5,
            "realised_savings_kw": None,
        }
    ]
    assert json.loads(accepted["data"])["items"][0]["status"] == "accepted"
    assert int(accepted["id"].rsplit("-", 1)[-1]) > int(proposed["id"].rsplit("-", 1)[-1])
