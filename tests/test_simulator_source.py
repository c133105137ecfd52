"""The real-time simulated source: faults from its config, events with the readings, a GPU
fallen off the bus stops reporting, labels written beside the run."""

from __future__ import annotations

import json

from collectors.sources import build_source
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import EventKind, known_metric
from domain.site import EXAMPLE_SITE, load_site
from simulator.model import SiteSimulator

GPU = "sv1/h1/row2/rk203/n04/gpu1"


def incidents(events):
    """The events other than identity (`inventory`, sent per GPU/PSU at start)."""
    return [e for e in events if e.kind != EventKind.inventory]


def test_source_config_faults_events_and_stopped_telemetry(tmp_path):
    labels = tmp_path / "labels.jsonl"
    spec = f"gpu_off_bus@{GPU}:onset=30s; coolant_leak@sv1/h1/cdu-row1:onset=0,detect_after=20s"
    cfg = SimulatedSourceConfig(seed=2, faults=spec, labels_file=labels)
    site = load_site(EXAMPLE_SITE)
    sim = SiteSimulator(site, seed=2, start_time_s=1.7e9, faults=spec)
    source = SimulatedSource(cfg, simulator=sim)
    first = source.snapshot(1)
    assert GPU in first.device_id and not incidents(first.events)
    assert {e.device_id for e in first.events} == {*sim.layout.gpu_ids, *sim.layout.psu_ids}
    for kind, metric in set(zip(first.kind, first.metric, strict=True)):
        assert known_metric(kind, metric)  # every metric is in the wire contract
    sim.step(40.0)
    later = source.snapshot(2)
    assert GPU not in later.device_id  # telemetry stops
    assert len(first) - len(later) == 11  # its 11 metrics
    kinds = {(e.device_id, e.kind) for e in later.events}
    assert {
        (GPU, EventKind.xid),
        (GPU, EventKind.device_lost),
        ("sv1/h1/cdu-row1", EventKind.leak_detected),
    } <= kinds
    xid = next(e for e in later.events if e.kind == EventKind.xid)
    assert xid.attrs == {"xid": 79} and xid.read_time_ms == int((1.7e9 + 30) * 1000)
    assert not source.snapshot(3).events  # each event once
    rows = [json.loads(x) for x in labels.read_text().splitlines()]
    assert [r["fault"] for r in rows] == ["gpu_off_bus", "coolant_leak"]
    assert rows[0]["device_id"] == GPU and rows[0]["onset_time"].startswith("2023-11-14")


def test_source_rack_filter_keeps_its_racks_events_only():
    spec = f"gpu_off_bus@{GPU}:onset=0; gpu_off_bus@sv1/h1/row1/rk101/n01/gpu0:onset=0"
    site = load_site(EXAMPLE_SITE)
    sim = SiteSimulator(site, seed=2, start_time_s=1.7e9, faults=spec)
    source = SimulatedSource(SimulatedSourceConfig(racks=["rk101"], faults=spec), simulator=sim)
    sim.step(5.0)
    r = source.snapshot(1)
    assert set(r.rack) == {"rk101"}
    assert {e.device_id for e in incidents(r.events)} == {"sv1/h1/row1/rk101/n01/gpu0"}
    assert {e.device_id.split("/")[3] for e in r.events} == {"rk101"}  # identity too


def test_source_config_rejects_a_bad_fault_spec_naming_it():
    import pytest

    from simulator.faults import FaultSpecError

    with pytest.raises(FaultSpecError, match="faults item 1.*unknown fault 'meltdown'"):
        build_source({"type": "simulated", "faults": "meltdown@any"}, 0)
