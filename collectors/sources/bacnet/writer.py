"""Setpoint write-back over BACnet: WriteProperty present-value at a priority.

For the optimizer's write-back (and operators' tools). Only points the point list marks
`writable = true` may be written, and only within their `min`/`max`; a refused write
raises `WriteRefusedError` before anything is sent. Values are in the metric's unit: the
point's scale/offset are undone before the write (kW -> the device's W, say).

BACnet commandable objects keep a 16-slot priority array; present-value is the value of
the highest-priority (lowest number) slot that is not null, else relinquish-default.
Writing at priority 8 (manual operator) leaves life safety (1, 2) and critical equipment
control (5) in charge; `relinquish` writes null to the slot, so control falls back to the
next slot or the default. Writes share the source's bacpypes3 application and event loop
(a single local UDP port); they are safe to call from any thread.

    writer = source.writer()
    writer.write_setpoint("analog-value,1", 7.5)          # chw supply setpoint, priority 8
    writer.relinquish("analog-value,1")
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from collectors.sources.bacnet.source import (
    BINARY_TYPES,
    BacnetError,
    BacnetSource,
    Point,
    classify,
    parse_object_id,
)

if TYPE_CHECKING:
    from bacpypes3.app import Application

log = logging.getLogger(__name__)


class WriteRefusedError(ValueError):
    """A write the point list does not allow (nothing was sent)."""


class BacnetWriter:
    def __init__(self, source: BacnetSource) -> None:
        self.source = source
        self.config = source.config

    def _point(self, object_id: str) -> Point:
        otype, instance = parse_object_id(object_id)
        key = f"{otype},{instance}"
        p = self.source.by_object.get(key)
        if p is None:
            raise WriteRefusedError(f"{key}: not in the point list of source {self.source.name}")
        if not p.writable:
            raise WriteRefusedError(f"{key} ({p.metric}): not marked writable in the point list")
        return p

    def _priority(self, priority: int | None) -> int:
        pr = self.config.write_priority if priority is None else priority
        if not 1 <= pr <= 16:
            raise WriteRefusedError(f"priority {pr}: BACnet priorities are 1..16")
        if pr == 6:  # reserved for minimum on/off (135-2020 clause 19.2.3)
            raise WriteRefusedError("priority 6 is reserved for minimum on/off time")
        return pr

    def write_setpoint(self, object_id: str, value: float, priority: int | None = None) -> None:
        """Command `object_id`'s present-value to `value` (metric unit) at `priority`
        (default: the source's write_priority). Raises WriteRefusedError or BacnetError."""
        p = self._point(object_id)
        pr = self._priority(priority)
        if not math.isfinite(value):
            raise WriteRefusedError(f"{p.object} ({p.metric}): {value} is not a finite number")
        if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
            raise WriteRefusedError(
                f"{p.object} ({p.metric}): {value:g} outside the point's limits "
                f"[{p.min if p.min is not None else '-inf'}, "
                f"{p.max if p.max is not None else 'inf'}]"
            )
        otype = p.object.split(",")[0]
        raw = (value - p.offset) / p.scale
        wire: Any
        if otype in BINARY_TYPES:
            if raw not in (0.0, 1.0):
                raise WriteRefusedError(f"{p.object} ({p.metric}): binary point takes 0 or 1")
            wire = "active" if raw == 1.0 else "inactive"
        else:
            wire = float(raw)
        self._write(p, wire, pr, f"{value:g} (raw {wire})")

    def relinquish(self, object_id: str, priority: int | None = None) -> None:
        """Write null at `priority`: the device falls back to the next slot or its
        relinquish-default."""
        from bacpypes3.primitivedata import Null

        p = self._point(object_id)
        self._write(p, Null(()), self._priority(priority), "null (relinquish)")

    def _write(self, p: Point, wire: Any, priority: int, what: str) -> None:
        cfg = self.config
        app = self.source.client.ensure_started()
        bound = cfg.timeout_s * (cfg.retries + 1) + 5.0
        self.source.client.call(self._send(app, p, wire, priority, what), bound)
        log.info(
            "bacnet %s: wrote %s.present-value = %s at priority %d (%s)",
            self.source.name,
            p.object,
            what,
            priority,
            p.metric,
        )

    async def _send(self, app: Application, p: Point, wire: Any, priority: int, what: str) -> None:
        from bacpypes3.apdu import ErrorRejectAbortNack
        from bacpypes3.basetypes import PropertyIdentifier
        from bacpypes3.pdu import Address
        from bacpypes3.primitivedata import ObjectIdentifier

        cfg = self.config
        try:
            await app.write_property(
                Address(f"{cfg.host}:{cfg.port}"),
                ObjectIdentifier(p.object),
                PropertyIdentifier("present-value"),
                wire,
                priority=priority,
            )
        except ErrorRejectAbortNack as exc:
            reason, text = classify(exc)
            self.source.errors[f"write_{reason}"] += 1
            msg = (
                f"{cfg.host}:{cfg.port}: write {p.object}.present-value = {what} "
                f"at priority {priority}: {text}"
            )
            log.warning("bacnet %s: %s", self.source.name, msg)
            raise BacnetError(reason, msg) from None
