"""Topology graph of the example site: power and cooling chains, meters, queries."""

from __future__ import annotations

import pytest

from twin.topology import Topology

GPU = "sv1/h1/row2/rk203/n05/gpu3"


@pytest.fixture(scope="module")
def topo(site) -> Topology:
    return Topology(site)


def test_power_chain_of_a_gpu(topo):
    up = topo.feeds(GPU)
    assert up[0] == "sv1/h1/row2/rk203/n05"
    n = 48  # the rack's PSUs share one DC bus: each feeds every node
    assert set(up[1 : n + 1]) == {f"sv1/h1/row2/rk203/shelf/psu{i}" for i in range(1, n + 1)}
    assert up[n + 1 :] == [
        "sv1/h1/row2/rk203/shelf",
        "sv1/h1/pdu-row2",
        "sv1/facility/ups",
        "sv1/utility",
        "sv1/facility/ups/battery",  # carries the UPS when the utility fails
    ]
    assert topo.parents(GPU, "power") == ["sv1/h1/row2/rk203/n05"]


def test_cooling_chain_of_a_gpu(topo):
    up = topo.upstream(GPU, "cooling")
    assert up[:2] == ["sv1/h1/row2/rk203/n05", "sv1/h1/row2/rk203"]
    assert set(up[2:4]) == {"sv1/h1/cdu-row2", "sv1/h1/air"}  # liquid and air share
    assert "sv1/plant/chiller-plant" in up
    assert {"sv1/h1/crah1", "sv1/h1/crah4"} <= set(up)


def test_what_a_cdu_cools(topo, site):
    racks = topo.cools("sv1/h1/cdu-row1", "rack")
    assert racks == [f"sv1/h1/row1/rk10{i}" for i in range(1, 9)]
    counts = topo.counts(topo.cools("sv1/h1/cdu-row1"))
    assert counts == {"rack": 8, "node": 64, "gpu": 512}
    # the chiller plant cools every GPU of the site, through CDUs and CRAHs
    assert len(topo.cools("sv1/plant/chiller-plant", "gpu")) == site.gpu_count()


def test_downstream_of_a_pdu(topo):
    down = topo.downstream("sv1/h1/pdu-row3", "power")
    counts = topo.counts(down)
    assert counts == {"shelf": 8, "psu": 8 * 48, "node": 64, "gpu": 512}
    assert all(
        g.startswith("sv1/h1/row3/") for g in topo.downstream("sv1/h1/pdu-row3", "power", "gpu")
    )
    # the UPS feeds all IT; CDU pumps and CRAH fans hang off the utility board
    assert topo.counts(topo.downstream("sv1/facility/ups", "power"))["gpu"] == 2048
    assert {"sv1/h1/cdu-row1", "sv1/h1/crah1", "sv1/plant/chiller-plant"} <= set(
        topo.children("sv1/utility", "power")
    )


def test_meters_annotate_what_they_measure(topo):
    assert topo.get("sv1/facility/utility").attrs["measures"] == ["sv1/utility"]
    assert topo.get("sv1/utility").attrs["meters"] == ["sv1/facility/utility"]
    assert topo.get("sv1/facility/ups").attrs["meters"] == ["sv1/facility/ups-out"]
    assert topo.get("sv1/facility/ups-out").attrs["role"] == "ups_output"


def test_every_site_device_is_a_node(topo, site):
    for d in site.devices():
        assert topo.get(d.id) is not None, d.id
        assert topo.get(d.id).cls == ("meter" if d.device_class == "meter" else d.device_class)


def test_subgraph_depths(topo):
    nodes, edges = topo.subgraph("facility", ("power", "cooling"))
    classes = {n.cls for n in nodes}
    assert "rack" not in classes and {"ups", "pdu", "cdu", "crah", "meter"} <= classes
    assert ("power", "sv1/facility/ups", "sv1/h1/pdu-row1") in edges
    assert ("cooling", "sv1/h1/crah2", "sv1/h1/air") in edges
    nodes, edges = topo.subgraph("rack", ("cooling", "location"))
    assert sum(n.cls == "rack" for n in nodes) == 32
    assert ("cooling", "sv1/h1/cdu-row4", "sv1/h1/row4/rk401") in edges
    assert ("location", "sv1/h1", "sv1/h1/row1") in edges
    nodes, _ = topo.subgraph("gpu", ("power",))
    assert sum(n.cls == "gpu" for n in nodes) == 2048
