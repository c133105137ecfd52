"""Writing setpoints to a plant (issue 19): the one interface the optimizer's closed loop
uses, whatever the device protocol. A writer is a source capability: Modbus TCP
(`collectors/sources/modbus/writer.py`) today; a BACnet or Redfish writer implements the
same protocol. The server builds the writer and hands it to the twin, which never imports
collector code (import contract `server-without-collectors`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class SetpointWriteError(RuntimeError):
    """A write the device refused or did not confirm (exception, timeout, read-back that
    differs). The message names the control, the register (or object) and the values."""


class SetpointWriter(Protocol):
    """Writes optimizer controls (names of `domain.plant.CONTROL_METRICS`) to the plant."""

    name: str

    def controls(self) -> list[str]:
        """The controls this writer can write."""
        ...

    def read(self) -> dict[str, float]:
        """The commanded value of every control, as the device holds it now."""
        ...

    def write(self, values: Mapping[str, float]) -> dict[str, float]:
        """Write every value, read each back and compare at the register's resolution;
        the read-back values per control. On any failure, points already written are put
        back to what they held and SetpointWriteError is raised."""
        ...

    def read_points(self) -> dict[str, float]:
        """The commanded value of every write point, keyed `<control>@<device>`: what a
        revert puts back, unit by unit (units of one control may differ: `read` gives
        their mean)."""
        ...

    def write_points(self, values: Mapping[str, float]) -> dict[str, float]:
        """`write` per point (keys of `read_points`): each unit gets its own value; the
        read-back per point. Same checks and undo as `write`."""
        ...

    def close(self) -> None: ...


def per_control(points: Mapping[str, float]) -> dict[str, float]:
    """Write-point values (`read_points` keys, `<control>@<device>`) -> each control's
    mean over its units (what `read` gives)."""
    got: dict[str, list[float]] = {}
    for key, value in points.items():
        got.setdefault(key.split("@", 1)[0], []).append(value)
    return {c: sum(v) / len(v) for c, v in got.items()}
