"""The one NVIDIA XID catalogue: what each code means, how severe it is, what to do.

Shared by the NVML collector (event severity), the failure-risk features (which codes are
counted) and the alert rules (which codes page). Source: NVIDIA's XID catalogue
(docs.nvidia.com/deploy/xid-errors) and its GPU debug guidelines; the actions are the
catalogue's recommended ones, phrased for a NOC.

`cause`: `hardware` codes say the GPU, its memory or its links need attention;
`application` codes are normally a program's fault (they matter when they recur on one
GPU across jobs); `driver` codes point at firmware/driver state that a reset clears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

XidSeverity = Literal["info", "warning", "critical"]
XidCause = Literal["hardware", "application", "driver"]


@dataclass(frozen=True, slots=True)
class Xid:
    code: int
    meaning: str
    severity: XidSeverity
    cause: XidCause
    action: str
    # counted as a failure-risk feature (a precursor or sign of a failing GPU)
    failure_feature: bool


XIDS: Final[dict[int, Xid]] = {
    x.code: x
    for x in (
        Xid(13, "graphics engine exception", "info", "application",
            "usually the program; if it recurs on this GPU across jobs, run dcgmi diag", False),
        Xid(31, "GPU memory page fault", "info", "application",
            "usually an illegal address in the program; recurring across jobs: dcgmi diag",
            False),
        Xid(43, "GPU stopped processing (channel reset)", "info", "application",
            "the program was stopped; no action unless it recurs with other XIDs", False),
        Xid(45, "preemptive cleanup after a previous error", "info", "driver",
            "a consequence: look at the XID that came before it", False),
        Xid(48, "double-bit ECC error (uncorrectable)", "critical", "hardware",
            "drain the GPU; reset it, replace if it recurs", True),
        Xid(61, "internal micro-controller breakpoint/warning", "warning", "driver",
            "reset the GPU at the next drain; report to NVIDIA if it recurs", True),
        Xid(62, "internal micro-controller halt", "critical", "hardware",
            "drain and reset the GPU (node reboot); RMA if it recurs", True),
        Xid(63, "ECC page retirement / row-remapping event recorded", "warning", "hardware",
            "memory cells are wearing: reset the GPU at the next drain to apply the remap",
            True),
        Xid(64, "ECC page retirement / row-remapping failure (no spare rows left)",
            "critical", "hardware", "replace the GPU", True),
        Xid(68, "video decoder (NVDEC) exception", "warning", "hardware",
            "reset the GPU; RMA if it recurs", True),
        Xid(74, "NVLink error", "critical", "hardware",
            "check the NVLink/NVSwitch path and fabric manager; reseat or replace", True),
        Xid(79, "GPU has fallen off the bus", "critical", "hardware",
            "the GPU is gone: drain the node, power-cycle, RMA if it recurs", True),
        Xid(92, "high single-bit ECC error rate", "warning", "hardware",
            "watch: an ECC storm often precedes XID 94/48; plan a replacement", True),
        Xid(94, "contained ECC error (an application was killed)", "critical", "hardware",
            "drain soon and reset the GPU to remap the row; the memory is failing", True),
        Xid(95, "uncontained ECC error", "critical", "hardware",
            "drain now; reset the GPU, replace if it recurs", True),
        Xid(119, "GSP RPC timeout", "critical", "driver",
            "drain and reset the GPU; update driver/firmware; RMA if it recurs", True),
        Xid(120, "GSP error", "critical", "driver",
            "drain and reset the GPU; update driver/firmware; RMA if it recurs", True),
        Xid(140, "unrecovered ECC error", "critical", "hardware",
            "drain now; reset the GPU, replace if it recurs", True),
    )
}  # fmt: skip

# codes that page: the alert rule `GpuXidCritical`'s default list
CRITICAL_XID_CODES: Final = tuple(sorted(c for c, x in XIDS.items() if x.severity == "critical"))
# codes counted as failure-risk features (`xid<N>_2h`)
FAILURE_XID_CODES: Final = tuple(sorted(c for c, x in XIDS.items() if x.failure_feature))


def xid_info(code: int) -> Xid:
    """The catalogue entry, or a `warning` placeholder for a code not in it."""
    known = XIDS.get(code)
    if known is not None:
        return known
    return Xid(code, "not in dctwin's XID catalogue", "warning", "hardware",
               "see NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors)", False)  # fmt: skip
