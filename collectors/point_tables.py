"""What the table-driven sources (Modbus registers, SNMP OIDs, BACnet points) share: a
table is a shipped file or the operator's own, and each entry names a contract metric in
the metric's own unit. Also the error a source raises for a counted failure."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from domain.contract import METRICS, Kind
from domain.site import load_toml_model

TableModel = TypeVar("TableModel", bound=BaseModel)


def load_table(path: Path, shipped_dir: Path, model: type[TableModel], key: str) -> TableModel:
    """A table file: a path, or the bare name of one shipped in `shipped_dir`. Errors
    are prefixed with the config key that named it (`register_map: ...`)."""
    shipped = shipped_dir / f"{path}.toml"
    if path.suffix == "" and path.parent == Path(".") and shipped.is_file():
        path = shipped
    return load_toml_model(path, model, prefix=f"{key}: ")


def check_metric(
    label: str, kind: Kind | None, metric: str, unit: str | None, entry: str, where: str
) -> None:
    """Raise a ValueError naming the entry unless `metric` is a contract metric of `kind`
    and `unit` (when given) is the metric's unit. `entry` says what to scale (register,
    object, point); `where` where the kind may be set (`in the map or the source`)."""
    if kind is None:
        raise ValueError(f"{label}.kind: not set here, {where}")
    metric_unit = METRICS[kind].get(metric)
    if metric_unit is None:
        raise ValueError(
            f"{label}.metric: {metric!r} is not a {kind.value} "
            f"metric (known: {sorted(METRICS[kind])})"
        )
    if unit is not None and unit != metric_unit:
        raise ValueError(
            f"{label}.unit: {unit!r} but {metric} is in {metric_unit!r}; "
            f"scale the {entry} to {metric_unit!r}"
        )


class CountedError(RuntimeError):
    """A failed request or pass; `reason` is the counter it goes to (timeout, auth ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
