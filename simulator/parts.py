"""Identity of the simulated GPUs and PSUs, and the maintenance action that swaps one.

A real GPU reports its NVML UUID (`GPU-8-4-4-4-12` hex) and board serial; a Redfish PSU
its SerialNumber and PartNumber. The simulator gives every slot (a device id) a part per
*generation*: the identity is a hash of (site, seed, device id, generation), so the same seed
and the same swaps give the same UUIDs and serials on every run, and a swap (generation
+1) gives the slot a new part. The simulated source sends the identity as an `inventory`
event when a part first appears and when it changes, like the NVML source does.

A swap replaces the part: the faults of the old part leave with it (an ECC storm, a GPU
fallen off the bus), and the new part's counters start at zero.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from simulator.model import SiteSimulator

DRIVER_VERSION = "550.90.07"
VBIOS_VERSION = "96.00.99.00.01"
PSU_MODEL = "PWS-3K04A-1R"
PSU_PART_NUMBER = "PWS-3K04A-1R-A01"
PSU_MANUFACTURER = "SimPower"
# NVML names and board part numbers of the site's GPU models (site TOML `gpu_model`)
GPU_NAMES = {"H100-SXM5-80GB": ("NVIDIA H100 80GB HBM3", "692-2G520-0200-000")}


def _digest(site_id: str, device_id: str, generation: int) -> bytes:
    return hashlib.blake2b(f"{site_id}|{device_id}|{generation}".encode(), digest_size=16).digest()


def gpu_uuid(site_id: str, device_id: str, generation: int) -> str:
    """An NVML-format UUID, deterministic per (site, slot, part generation)."""
    h = _digest(site_id, device_id, generation).hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def serial_number(site_id: str, device_id: str, generation: int) -> str:
    """A 13-digit board serial (NVML's format), deterministic like the UUID."""
    n = int.from_bytes(_digest(site_id, "serial|" + device_id, generation)[:8], "big")
    return f"1{n % 10**12:012d}"


class PartCatalog:
    """The part in every GPU and PSU slot of a simulated site, and which changed."""

    def __init__(self, sim: SiteSimulator) -> None:
        lay = sim.layout
        # the seed too: another simulated site instance has other parts
        self.site_id = f"{sim.site.site.id}#{sim.seed}"
        self.gpu_ids, self.psu_ids = list(lay.gpu_ids), list(lay.psu_ids)
        self.gpu_index = {d: i for i, d in enumerate(self.gpu_ids)}
        self.psu_index = {d: i for i, d in enumerate(self.psu_ids)}
        self.gpu_generation = np.zeros(len(self.gpu_ids), dtype=np.int64)
        self.psu_generation = np.zeros(len(self.psu_ids), dtype=np.int64)
        self.gpu_model = {
            r.gpu_id(n, g): r.template.gpu_model
            for r in sim.site.racks()
            for n in range(r.template.nodes)
            for g in range(r.template.gpus_per_node)
        }
        # slots whose identity is not reported yet: every slot at start
        self._pending: list[str] = [*self.gpu_ids, *self.psu_ids]

    def generation(self, device_id: str) -> int:
        if device_id in self.gpu_index:
            return int(self.gpu_generation[self.gpu_index[device_id]])
        if device_id in self.psu_index:
            return int(self.psu_generation[self.psu_index[device_id]])
        raise KeyError(f"{device_id!r} is not a GPU or PSU of the site")

    def identity(self, device_id: str) -> dict[str, str | int]:
        """What the device reports about itself (inventory event attrs)."""
        gen = self.generation(device_id)
        serial = serial_number(self.site_id, device_id, gen)
        if device_id in self.gpu_index:
            model = self.gpu_model.get(device_id, "H100-SXM5-80GB")
            name, part = GPU_NAMES.get(model, (f"NVIDIA {model}", "692-0000-0000-000"))
            return {
                "uuid": gpu_uuid(self.site_id, device_id, gen),
                "serial": serial,
                "board_part_number": part,
                "name": name,
                "vbios_version": VBIOS_VERSION,
                "driver_version": DRIVER_VERSION,
                "gpu_index": int(device_id.rsplit("gpu", 1)[-1] or 0),
            }
        return {
            "serial": serial,
            "part_number": PSU_PART_NUMBER,
            "model": PSU_MODEL,
            "manufacturer": PSU_MANUFACTURER,
        }

    def swap(self, device_id: str) -> tuple[dict, dict]:
        """A new part in the slot: (old identity, new identity). Reported at the next read."""
        old = self.identity(device_id)
        if device_id in self.gpu_index:
            self.gpu_generation[self.gpu_index[device_id]] += 1
        else:
            self.psu_generation[self.psu_index[device_id]] += 1
        self._pending.append(device_id)
        return old, self.identity(device_id)

    def drain_changes(self) -> list[tuple[str, dict]]:
        """(device id, identity) of the slots whose part appeared or changed since the
        last call, each once."""
        pending, self._pending = list(dict.fromkeys(self._pending)), []
        return [(d, self.identity(d)) for d in pending]


def swap_part(sim: SiteSimulator, device_id: str) -> tuple[dict, dict]:
    """Maintenance: replace the GPU or PSU in a slot with a new part. The old part's
    faults leave with it; the new GPU's error counters start at zero."""
    old, new = sim.parts.swap(device_id)
    inj = sim.faults
    inj.physical = [f for f in inj.physical if f.device_id != device_id]
    if device_id in sim.parts.gpu_index:
        i = sim.parts.gpu_index[device_id]
        inj.gpu_lost[i] = inj.gpu_failed[i] = False
        for counters in (
            sim.gpu_ecc_corrected,
            sim.gpu_ecc_uncorrected,
            sim.gpu_remapped_correctable,
            sim.gpu_remapped_uncorrectable,
        ):
            counters[i] = 0.0
    return old, new
