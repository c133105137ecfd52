"""Vector index of a site: devices as contiguous array ranges, parents as index arrays.

Built once from the site model. Every (device, metric) the twin tracks gets a slot in one
flat array; a device class is a block whose slots are metric-major (`block.view(a)` is a
`(n_metrics, n_devices)` view). GPUs and PSUs are ordered rack by rack, and racks row by
row and hall by hall, so per-rack/row/hall reductions are `reduceat` over offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from domain.contract import METRICS, Kind
from domain.site import MeterRole, Site

# Device class -> telemetry kind (as in Site.devices()).
CLASS_KIND: dict[str, Kind] = {
    "gpu": Kind.gpu,
    "psu": Kind.power,
    "cdu": Kind.cooling,
    "pdu": Kind.power,
    "crah": Kind.air,
    "ups": Kind.power,
    "meter": Kind.facility,
    "chiller_plant": Kind.facility,
}


@dataclass
class ClassBlock:
    """One device class: its ids, tracked metrics and first slot."""

    name: str
    ids: list[str]
    metrics: list[str]
    offset: int
    metric_index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.metric_index = {m: i for i, m in enumerate(self.metrics)}

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_slots(self) -> int:
        return self.n * len(self.metrics)

    def slot(self, metric: str, dev: int) -> int:
        return self.offset + self.metric_index[metric] * self.n + dev

    def view(self, flat: np.ndarray) -> np.ndarray:
        """(n_metrics, n_devices) view of this block in a flat slot array."""
        return flat[self.offset : self.offset + self.n_slots].reshape(len(self.metrics), self.n)

    def row(self, flat: np.ndarray, metric: str) -> np.ndarray:
        start = self.offset + self.metric_index[metric] * self.n
        return flat[start : start + self.n]


def _offsets(owner: np.ndarray, n_owner: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and count per owner for items sorted by owner."""
    count = np.bincount(owner, minlength=n_owner) if owner.size else np.zeros(n_owner, int)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    return start, count


class SiteIndex:
    def __init__(self, site: Site) -> None:
        self.site = site
        sid = site.site.id
        self.site_id = sid
        racks = site.racks()
        self.hall_keys = [h.id for h in site.halls]
        self.hall_ids = [f"{sid}/{h}" for h in self.hall_keys]
        self.row_ids: list[str] = []
        row_hall: list[int] = []
        self.cdu_ids: list[str] = []
        self.pdu_ids: list[str] = []
        self.crah_ids: list[str] = []
        cdu_hall: list[int] = []
        pdu_hall: list[int] = []
        crah_hall: list[int] = []
        cp: list[float] = []
        rho: list[float] = []
        airflow: list[float] = []
        cdu_of: dict[tuple[str, str], int] = {}
        pdu_of: dict[tuple[str, str], int] = {}
        for h_idx, hall in enumerate(site.halls):
            for row in hall.rows:
                self.row_ids.append(f"{sid}/{hall.id}/{row.id}")
                row_hall.append(h_idx)
            for c in hall.cdus:
                cdu_of[(hall.id, c.id)] = len(self.cdu_ids)
                self.cdu_ids.append(f"{sid}/{hall.id}/{c.id}")
                cdu_hall.append(h_idx)
                cp.append(c.fluid.cp_kj_per_kg_k)
                rho.append(c.fluid.density_kg_per_m3)
            for p in hall.pdus:
                pdu_of[(hall.id, p.id)] = len(self.pdu_ids)
                self.pdu_ids.append(f"{sid}/{hall.id}/{p.id}")
                pdu_hall.append(h_idx)
            for a in hall.crahs:
                self.crah_ids.append(f"{sid}/{hall.id}/{a.id}")
                crah_hall.append(h_idx)
                airflow.append(np.nan if a.rated_airflow_m3h is None else a.rated_airflow_m3h)
        self.row_hall = np.array(row_hall, dtype=np.int64)
        self.cdu_hall = np.array(cdu_hall, dtype=np.int64)
        self.pdu_hall = np.array(pdu_hall, dtype=np.int64)
        self.crah_hall = np.array(crah_hall, dtype=np.int64)
        self.cdu_cp_kj_kg_k = np.array(cp, dtype=float)
        self.cdu_rho_kg_m3 = np.array(rho, dtype=float)
        self.crah_rated_airflow_m3h = np.array(airflow, dtype=float)

        row_index = {rid: i for i, rid in enumerate(self.row_ids)}
        self.racks = racks
        self.rack_ids = [r.prefix for r in racks]
        self.rack_row = np.array(
            [row_index[f"{sid}/{r.hall}/{r.row}"] for r in racks], dtype=np.int64
        )
        self.rack_hall = self.row_hall[self.rack_row] if racks else np.zeros(0, np.int64)
        self.rack_cdu = np.array([cdu_of[(r.hall, r.cdu)] for r in racks], dtype=np.int64)
        self.rack_pdu = np.array([pdu_of[(r.hall, r.pdu)] for r in racks], dtype=np.int64)
        self.rack_liquid_fraction = np.array([r.template.liquid_fraction for r in racks])
        self.gpu_ids = [
            r.gpu_id(n, g)
            for r in racks
            for n in range(r.template.nodes)
            for g in range(r.template.gpus_per_node)
        ]
        self.gpu_rack = np.repeat(
            np.arange(len(racks)), [r.template.nodes * r.template.gpus_per_node for r in racks]
        )
        self.psu_ids = [r.psu_id(i) for r in racks for i in range(r.template.psus)]
        self.psu_rack = np.repeat(np.arange(len(racks)), [r.template.psus for r in racks])
        self.rack_gpu_start, self.rack_gpu_count = _offsets(self.gpu_rack, len(racks))
        self.rack_psu_start, self.rack_psu_count = _offsets(self.psu_rack, len(racks))
        self.row_rack_start, self.row_rack_count = _offsets(self.rack_row, len(self.row_ids))
        self.hall_rack_start, self.hall_rack_count = _offsets(self.rack_hall, len(self.hall_ids))

        self.meter_ids = {m.role: site.meter_id(m) for m in site.meters}
        self.meter_list = [site.meter_id(m) for m in site.meters]
        self.ups_id = f"{sid}/facility/{site.ups.id}"
        self.plant_id = site.plant_id()
        devices = {
            "gpu": self.gpu_ids,
            "psu": self.psu_ids,
            "cdu": self.cdu_ids,
            "pdu": self.pdu_ids,
            "crah": self.crah_ids,
            "ups": [self.ups_id],
            "meter": self.meter_list,
            "chiller_plant": [self.plant_id],
        }
        self.blocks: dict[str, ClassBlock] = {}
        offset = 0
        for name, ids in devices.items():
            block = ClassBlock(name, ids, list(METRICS[CLASS_KIND[name]]), offset)
            self.blocks[name] = block
            offset += block.n_slots
        self.n_slots = offset
        self.device_index: dict[str, tuple[str, int]] = {
            d: (name, i) for name, ids in devices.items() for i, d in enumerate(ids)
        }

    # -- lookups ------------------------------------------------------------------------

    def meter(self, role: MeterRole) -> str | None:
        return self.meter_ids.get(role)

    def slot_of(self, device_id: str, metric: str) -> int | None:
        found = self.device_index.get(device_id)
        if found is None:
            return None
        block = self.blocks[found[0]]
        if metric not in block.metric_index:
            return None
        return block.slot(metric, found[1])

    def device_table(self) -> dict[str, list]:
        """Columns (device_id, cls, dev) for mapping store rows to slots in SQL."""
        names = list(self.blocks)
        ids, cls, dev = [], [], []
        for c, name in enumerate(names):
            block = self.blocks[name]
            ids += block.ids
            cls += [c] * block.n
            dev += list(range(block.n))
        return {"device_id": ids, "cls": cls, "dev": dev}

    def metric_table(self) -> dict[str, list]:
        """Columns (cls, metric, base) with base = first slot of that metric's row."""
        cls, metric, base = [], [], []
        for c, name in enumerate(self.blocks):
            block = self.blocks[name]
            for m, i in block.metric_index.items():
                cls.append(c)
                metric.append(m)
                base.append(block.offset + i * block.n)
        return {"cls": cls, "metric": metric, "base": base}
