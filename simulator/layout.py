"""Index arrays that map every simulated device to its parents, built once from the site.

Every per-device array in the simulator is indexed in the order fixed here: GPUs in rack
order (node-major), PSUs in rack order, CDUs/PDUs/CRAHs in hall order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from domain.site import Site


@dataclass
class SiteLayout:
    """Device ids and parent indices. Plain numpy arrays so that the hot path is vectorized."""

    site: Site
    rack_ids: list[str] = field(init=False)  # full prefix site/hall/row/rack
    rack_keys: list[str] = field(init=False)  # rack name (the partition key)
    gpu_ids: list[str] = field(init=False)
    gpu_rack: np.ndarray = field(init=False)  # rack index per GPU
    gpu_node: np.ndarray = field(init=False)  # node index per GPU
    node_ids: list[str] = field(init=False)
    node_rack: np.ndarray = field(init=False)
    psu_ids: list[str] = field(init=False)
    psu_rack: np.ndarray = field(init=False)
    rack_row: np.ndarray = field(init=False)  # row index per rack
    row_ids: list[str] = field(init=False)
    cdu_ids: list[str] = field(init=False)
    pdu_ids: list[str] = field(init=False)
    row_cdu: np.ndarray = field(init=False)
    row_pdu: np.ndarray = field(init=False)
    crah_ids: list[str] = field(init=False)
    crah_hall: np.ndarray = field(init=False)
    rack_hall: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        s = self.site
        sid = s.site.id
        racks = s.racks()
        self.rack_ids = [r.prefix for r in racks]
        self.rack_keys = [r.rack for r in racks]
        self.hall_ids = [h.id for h in s.halls]
        self.row_ids, self.cdu_ids, self.pdu_ids, self.crah_ids = [], [], [], []
        row_cdu, row_pdu, crah_hall, rack_row, rack_hall = [], [], [], [], []
        self.cdu_spec, self.pdu_spec, self.crah_spec = [], [], []
        cdu_hall: list[int] = []
        pdu_hall: list[int] = []
        for h_idx, hall in enumerate(s.halls):
            cdu_index = {}
            for c in hall.cdus:
                cdu_index[c.id] = len(self.cdu_ids)
                self.cdu_ids.append(f"{sid}/{hall.id}/{c.id}")
                self.cdu_spec.append(c)
                cdu_hall.append(h_idx)
            pdu_index = {}
            for p in hall.pdus:
                pdu_index[p.id] = len(self.pdu_ids)
                self.pdu_ids.append(f"{sid}/{hall.id}/{p.id}")
                self.pdu_spec.append(p)
                pdu_hall.append(h_idx)
            for a in hall.crahs:
                self.crah_ids.append(f"{sid}/{hall.id}/{a.id}")
                self.crah_spec.append(a)
                crah_hall.append(h_idx)
            for row in hall.rows:
                r_idx = len(self.row_ids)
                self.row_ids.append(f"{sid}/{hall.id}/{row.id}")
                row_cdu.append(cdu_index[row.cdu])
                row_pdu.append(pdu_index[row.pdu])
                for _ in row.racks:
                    rack_row.append(r_idx)
                    rack_hall.append(h_idx)
        self.row_cdu = np.array(row_cdu, dtype=int)
        self.row_pdu = np.array(row_pdu, dtype=int)
        self.crah_hall = np.array(crah_hall, dtype=int)
        self.cdu_hall = np.array(cdu_hall, dtype=int)
        self.pdu_hall = np.array(pdu_hall, dtype=int)
        self.rack_row = np.array(rack_row, dtype=int)
        self.rack_hall = np.array(rack_hall, dtype=int)
        self._devices(racks)
        self.rack_cdu = self.row_cdu[self.rack_row] if len(self.row_cdu) else self.rack_row
        self.rack_pdu = self.row_pdu[self.rack_row] if len(self.row_pdu) else self.rack_row
        self.n_gpu, self.n_rack = len(self.gpu_ids), len(self.rack_ids)
        self.n_psu = len(self.psu_ids)
        self.n_node = len(self.node_ids)
        self.n_cdu, self.n_pdu = len(self.cdu_ids), len(self.pdu_ids)
        self.n_crah = len(self.crah_ids)
        self.n_hall = len(s.halls)
        self.rack_gpu_count = np.bincount(self.gpu_rack, minlength=self.n_rack)
        self.cdu_rack_count = np.bincount(self.rack_cdu, minlength=self.n_cdu)
        # per-component parameters as arrays
        self.cdu_rated_kw = np.array([c.rated_kw for c in self.cdu_spec])
        self.cdu_nominal_flow_lpm = np.array([c.nominal_flow_lpm for c in self.cdu_spec])
        self.cdu_cp = np.array([c.fluid.cp_kj_per_kg_k for c in self.cdu_spec])
        self.cdu_rho = np.array([c.fluid.density_kg_per_m3 for c in self.cdu_spec])
        self.pdu_eff = np.array([p.efficiency for p in self.pdu_spec])
        self.crah_rated_kw = np.array([a.rated_kw for a in self.crah_spec])
        self.crah_fan_rated_w = np.array([a.fan_rated_w for a in self.crah_spec])
        self._index: dict[str, tuple[str, int]] | None = None

    def _devices(self, racks) -> None:
        self.gpu_ids, gpu_rack, gpu_node, self.psu_ids, psu_rack = [], [], [], [], []
        self.node_ids, node_rack = [], []
        gpu_tdp, gpu_idle, overhead = [], [], []
        self.rack_nodes, rack_psus, rack_psu_rated, rack_liquid = [], [], [], []
        for k, r in enumerate(racks):
            t = r.template
            for n in range(t.nodes):
                node_idx = len(self.node_ids)
                self.node_ids.append(r.node_id(n))
                node_rack.append(k)
                for g in range(t.gpus_per_node):
                    self.gpu_ids.append(r.gpu_id(n, g))
                    gpu_rack.append(k)
                    gpu_node.append(node_idx)
                    gpu_tdp.append(t.gpu_tdp_w)
                    gpu_idle.append(t.gpu_idle_w)
            for i in range(t.psus):
                self.psu_ids.append(r.psu_id(i))
                psu_rack.append(k)
            overhead.append(t.node_overhead_w * t.nodes)
            self.rack_nodes.append(t.nodes)
            rack_psus.append(t.psus)
            rack_psu_rated.append(t.psu_rated_w)
            rack_liquid.append(t.liquid_fraction)
        self.gpu_rack = np.array(gpu_rack, dtype=int)
        self.gpu_node = np.array(gpu_node, dtype=int)
        self.node_rack = np.array(node_rack, dtype=int)
        self.psu_rack = np.array(psu_rack, dtype=int)
        self.gpu_tdp_w = np.array(gpu_tdp, dtype=float)
        self.gpu_idle_w = np.array(gpu_idle, dtype=float)
        self.node_overhead_w = np.array(overhead, dtype=float)  # per rack: all its nodes
        self.rack_psus = np.array(rack_psus, dtype=int)
        self.rack_psu_rated_w = np.array(rack_psu_rated, dtype=float)
        self.rack_liquid = np.array(rack_liquid, dtype=float)

    @property
    def ups_id(self) -> str:
        return f"{self.site.site.id}/facility/{self.site.ups.id}"

    def index(self) -> dict[str, tuple[str, int]]:
        """device id -> (device class, index in its arrays); built on first use."""
        if self._index is None:
            idx: dict[str, tuple[str, int]] = {}
            for cls, ids in (
                ("gpu", self.gpu_ids),
                ("psu", self.psu_ids),
                ("cdu", self.cdu_ids),
                ("pdu", self.pdu_ids),
                ("crah", self.crah_ids),
                ("node", self.node_ids),
            ):
                for i, d in enumerate(ids):
                    idx[d] = (cls, i)
            for m in self.site.meters:
                idx[self.site.meter_id(m)] = ("meter", 0)
            idx[self.site.plant_id()] = ("plant", 0)
            idx[self.ups_id] = ("ups", 0)
            self._index = idx
        return self._index
