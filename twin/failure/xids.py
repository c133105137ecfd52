"""Critical NVIDIA XIDs used as failure features (docs.nvidia.com/deploy/xid-errors)."""

from __future__ import annotations

# xid -> (meaning, what an operator does about it)
CRITICAL_XIDS: dict[int, tuple[str, str]] = {
    48: ("double-bit ECC error (uncorrectable)", "drain the GPU; reset, replace if it recurs"),
    63: (
        "ECC page retirement / row-remapping event recorded",
        "watch: memory cells are wearing; reset to apply the remap",
    ),
    64: ("row-remapping failure (no spare rows left)", "replace the GPU"),
    74: ("NVLink error", "check the NVLink/NVSwitch path; reseat or replace"),
    79: ("GPU has fallen off the bus", "the GPU is gone: drain the node, power-cycle, RMA"),
    92: ("high single-bit ECC error rate", "watch: an ECC storm often precedes 94/48"),
    94: ("contained ECC error (an application was killed)", "drain soon; the memory is failing"),
    95: ("uncontained ECC error", "drain now; reset the GPU, replace if it recurs"),
}
