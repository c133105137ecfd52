"""Topology graph of a site: power chain, cooling chain, location, and meters.

Power: utility -> UPS -> PDU -> rack power shelf -> PSU -> node -> GPU, and the UPS's
battery string -> UPS (it carries the load when the utility fails); the mechanical
loads (chiller plant, CDU pumps, CRAH fans) hang off the utility board, not the UPS
(as in the simulator's energy flow). Cooling: chiller plant -> CDU (primary loop) ->
rack (secondary loop) -> node -> GPU, and chiller plant -> CRAH -> hall air -> rack
for racks with an air share. Location: site -> hall -> row -> rack. Meters are nodes
that `measure` points of the power chain; their roles fix the PUE category.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from domain.site import MeterRole, Site

CHAINS = ("power", "cooling", "location")
# Classes shown at each depth of GET /v1/topology (deeper includes shallower).
DEPTHS = {
    "facility": {
        "site",
        "utility",
        "ups",
        "ups_battery",
        "pdu",
        "chiller_plant",
        "cdu",
        "crah",
        "hall_air",
        "meter",
        "hall",
    },
    "rack": {"row", "rack", "shelf"},
    "node": {"psu", "node"},
    "gpu": {"gpu"},
}
DEPTH_ORDER = ("facility", "rack", "node", "gpu")


@dataclass(slots=True)
class Node:
    id: str
    cls: str
    hall: str | None = None
    row: str | None = None
    rack: str | None = None
    attrs: dict | None = None


class Topology:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.nodes: dict[str, Node] = {}
        self.down: dict[str, dict[str, list[str]]] = {c: {} for c in CHAINS}
        self.up: dict[str, dict[str, list[str]]] = {c: {} for c in CHAINS}
        self._build(site)

    # -- construction -------------------------------------------------------------------

    def _add(self, node: Node) -> str:
        if node.id in self.nodes:
            raise ValueError(f"topology: two nodes share the id {node.id!r}")
        self.nodes[node.id] = node
        return node.id

    def _edge(self, chain: str, parent: str, child: str) -> None:
        self.down[chain].setdefault(parent, []).append(child)
        self.up[chain].setdefault(child, []).append(parent)

    def _build(self, site: Site) -> None:
        sid = site.site.id
        root = self._add(Node(sid, "site", attrs={"name": site.site.name}))
        utility = self._add(Node(f"{sid}/utility", "utility"))
        ups = self._add(
            Node(
                f"{sid}/facility/{site.ups.id}",
                "ups",
                attrs={"rated_kw": site.ups.rated_kw, "efficiency": site.ups.efficiency},
            )
        )
        plant = self._add(
            Node(site.plant_id(), "chiller_plant", attrs={"rated_kw": site.plant.rated_kw})
        )
        bat = site.ups.battery
        due = bat.replacement_due()
        battery = self._add(
            Node(
                f"{ups}/battery",
                "ups_battery",
                attrs={
                    "chemistry": bat.chemistry.value,
                    "usable_energy_kwh": round(site.ups.battery_energy_kwh(), 3),
                    "nominal_runtime_s": round(site.ups.battery_runtime_s(site.ups.rated_kw), 1),
                    "required_ride_through_s": bat.required_ride_through_s,
                    "nominal_voltage_v": bat.nominal_voltage_v,
                    "installed": bat.installed.isoformat() if bat.installed else None,
                    "replace_by": due.isoformat() if due else None,
                },
            )
        )
        self.nodes[ups].attrs["battery"] = battery  # type: ignore[index]
        self._edge("power", utility, ups)
        self._edge("power", battery, ups)
        self._edge("power", utility, plant)
        pdus: list[str] = []
        shelves: list[str] = []
        for hall in site.halls:
            hid = self._add(Node(f"{sid}/{hall.id}", "hall", hall=hall.id))
            self._edge("location", root, hid)
            air = self._add(Node(f"{hid}/air", "hall_air", hall=hall.id))
            for c in hall.cdus:
                cid = self._add(
                    Node(
                        f"{hid}/{c.id}",
                        "cdu",
                        hall=hall.id,
                        attrs={
                            "rated_kw": c.rated_kw,
                            "nominal_flow_lpm": c.nominal_flow_lpm,
                            "fluid": c.fluid.model_dump(),
                        },
                    )
                )
                self._edge("power", utility, cid)
                self._edge("cooling", plant, cid)
            for p in hall.pdus:
                pid = self._add(
                    Node(f"{hid}/{p.id}", "pdu", hall=hall.id, attrs={"rated_kw": p.rated_kw})
                )
                self._edge("power", ups, pid)
                pdus.append(pid)
            for a in hall.crahs:
                aid = self._add(
                    Node(f"{hid}/{a.id}", "crah", hall=hall.id, attrs={"rated_kw": a.rated_kw})
                )
                self._edge("power", utility, aid)
                self._edge("cooling", plant, aid)
                self._edge("cooling", aid, air)
            for row in hall.rows:
                rid = self._add(Node(f"{hid}/{row.id}", "row", hall=hall.id, row=row.id))
                self._edge("location", hid, rid)
        template_of = {(h.id, row.id): row.template for h in site.halls for row in h.rows}
        for r in site.racks():
            t = r.template
            rk = self._add(
                Node(
                    r.prefix,
                    "rack",
                    r.hall,
                    r.row,
                    r.rack,
                    attrs={
                        "template": template_of[(r.hall, r.row)],
                        "liquid_fraction": t.liquid_fraction,
                        "gpus": t.nodes * t.gpus_per_node,
                    },
                )
            )
            self._edge("location", f"{sid}/{r.hall}/{r.row}", rk)
            self._edge("cooling", f"{sid}/{r.hall}/{r.cdu}", rk)
            if t.liquid_fraction < 1.0:
                self._edge("cooling", f"{sid}/{r.hall}/air", rk)
            shelf = self._add(Node(f"{r.prefix}/shelf", "shelf", r.hall, r.row, r.rack))
            shelves.append(shelf)
            self._edge("power", f"{sid}/{r.hall}/{r.pdu}", shelf)
            self._edge("location", rk, shelf)
            psus = [
                self._add(Node(r.psu_id(i), "psu", r.hall, r.row, r.rack)) for i in range(t.psus)
            ]
            for psu in psus:
                self._edge("power", shelf, psu)
                self._edge("location", shelf, psu)
            for n in range(t.nodes):
                nid = self._add(Node(r.node_id(n), "node", r.hall, r.row, r.rack))
                self._edge("location", rk, nid)
                self._edge("cooling", rk, nid)
                for psu in psus:  # a shelf's PSUs share one DC bus: each feeds every node
                    self._edge("power", psu, nid)
                for g in range(t.gpus_per_node):
                    gid = self._add(Node(r.gpu_id(n, g), "gpu", r.hall, r.row, r.rack))
                    self._edge("power", nid, gid)
                    self._edge("cooling", nid, gid)
                    self._edge("location", nid, gid)
        measured = {
            MeterRole.facility_input: [utility],
            MeterRole.ups_output: [ups],
            MeterRole.pdu_output: pdus,
            MeterRole.it_input: shelves,
            MeterRole.cooling_plant: [plant],
        }
        for m in site.meters:
            mid = self._add(
                Node(
                    site.meter_id(m),
                    "meter",
                    attrs={"role": m.role.value, "description": m.description},
                )
            )
            for point in measured[m.role]:
                node = self.nodes[point]
                node.attrs = {
                    **(node.attrs or {}),
                    "meters": [*((node.attrs or {}).get("meters", [])), mid],
                }
            self.nodes[mid].attrs["measures"] = measured[m.role]  # type: ignore[index]

    # -- queries ------------------------------------------------------------------------

    def get(self, node_id: str) -> Node | None:
        return self.nodes.get(node_id)

    def parents(self, node_id: str, chain: str) -> list[str]:
        return list(self.up[chain].get(node_id, ()))

    def children(self, node_id: str, chain: str) -> list[str]:
        return list(self.down[chain].get(node_id, ()))

    def _walk(self, start: str, adj: dict[str, list[str]]) -> list[str]:
        seen = {start}
        order: list[str] = []
        queue = deque(adj.get(start, ()))
        while queue:
            n = queue.popleft()
            if n in seen:
                continue
            seen.add(n)
            order.append(n)
            queue.extend(adj.get(n, ()))
        return order

    def upstream(self, node_id: str, chain: str) -> list[str]:
        """Everything that feeds (power) or cools (cooling) this node, nearest first."""
        return self._walk(node_id, self.up[chain])

    def downstream(self, node_id: str, chain: str, cls: str | None = None) -> list[str]:
        """Everything this node feeds or cools, nearest first; optionally one class."""
        out = self._walk(node_id, self.down[chain])
        return [n for n in out if self.nodes[n].cls == cls] if cls else out

    def feeds(self, node_id: str) -> list[str]:
        """What feeds this device with power, nearest first (e.g. GPU: node, PSUs,
        shelf, PDU, UPS, utility)."""
        return self.upstream(node_id, "power")

    def cools(self, node_id: str, cls: str | None = None) -> list[str]:
        """What this CDU, CRAH or plant cools (racks, nodes, GPUs), nearest first."""
        return self.downstream(node_id, "cooling", cls)

    def counts(self, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in ids:
            c = self.nodes[i].cls
            out[c] = out.get(c, 0) + 1
        return out

    def subgraph(self, depth: str, chains: tuple[str, ...]) -> tuple[list[Node], list[tuple]]:
        """Nodes down to `depth` and the edges among them for the given chains."""
        allowed: set[str] = set()
        for d in DEPTH_ORDER[: DEPTH_ORDER.index(depth) + 1]:
            allowed |= DEPTHS[d]
        nodes = [n for n in self.nodes.values() if n.cls in allowed]
        keep = {n.id for n in nodes}
        edges = [
            (chain, p, c)
            for chain in chains
            for p, kids in self.down[chain].items()
            if p in keep
            for c in kids
            if c in keep
        ]
        return nodes, edges
