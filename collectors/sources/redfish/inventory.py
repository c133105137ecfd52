"""PSU identity from Redfish: an `inventory` event per power supply, at start and on change.

A PowerSupply (PowerSubsystem/PowerSupplies/*) or a legacy Power.PowerSupplies[] member
carries SerialNumber, PartNumber, Model, Manufacturer and FirmwareVersion; the twin keys
its slot -> part history on the serial (twin/parts.py), so a swapped PSU is seen.
"""

from __future__ import annotations

import re
from typing import Any

from collectors.base import now_ms
from collectors.sources.redfish import fields as rmap
from domain.contract import CONTROL_CHARS, MAX_ATTR_CHARS, AttrValue, Event, EventKind

# Redfish property -> inventory attr (the names the NVML source and the twin use)
PSU_IDENTITY: dict[str, str] = {
    "SerialNumber": "serial",
    "PartNumber": "part_number",
    "Model": "model",
    "Manufacturer": "manufacturer",
    "FirmwareVersion": "firmware_version",
}
_CONTROL_RE = re.compile(CONTROL_CHARS)


def _text(value: Any) -> str | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None  # a misbehaving BMC's object or list: not an identity
    text = _CONTROL_RE.sub("", str(value)).strip()[:MAX_ATTR_CHARS]
    return text or None


def psu_documents(rtype: str, uri: str, doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(uri, document) of each power supply a resource describes."""
    if rtype == "PowerSupply":
        return [(uri, doc)]
    if rtype == "Power":
        return [(m.uri, m.doc) for m in rmap.legacy_members(uri, doc) if m.array == "PowerSupplies"]
    return []


class PsuInventory:
    """Remembers the identity last sent per PSU; `events` returns the new or changed ones."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self.sent: dict[str, dict[str, AttrValue]] = {}  # device id -> identity sent

    def events(self, device_id: str, doc: dict[str, Any]) -> list[Event]:
        if (doc.get("Status") or {}).get("State") == "Absent":
            return []  # an empty bay: no part to name
        ident: dict[str, AttrValue] = {a: _text(doc.get(p)) for p, a in PSU_IDENTITY.items()}
        if ident["serial"] is None and ident["part_number"] is None:
            return []
        before = self.sent.get(device_id)
        if ident == before:
            return []
        self.sent[device_id] = ident
        message = f"PSU {ident['model']} serial {ident['serial']}"
        if before is not None:
            message = "PSU identity changed: " + ", ".join(
                f"{k} {before.get(k)} -> {v}" for k, v in ident.items() if before.get(k) != v
            )
        return [
            Event(
                device_id=device_id,
                kind=EventKind.inventory,
                severity="info",
                read_time_ms=now_ms(),
                message=message,
                attrs={"source": self.source_name, **ident},
            )
        ]
