"""Collector source plugins, one module per protocol. See collectors/base.py.

Each module defines a pydantic config model with a literal `type` field and a class
implementing `Source`. Register it here: the daemon's config loader finds it by `type`.
Modules are imported lazily so that a rack without pymodbus never imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from collectors.base import Source
from ingest.site import format_validation_error

# type -> (module, config class, source class)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "simulated": ("collectors.sources.simulated", "SimulatedSourceConfig", "SimulatedSource"),
    "nvml": ("collectors.sources.nvml", "NvmlSourceConfig", "NvmlSource"),
    "redfish": ("collectors.sources.redfish", "RedfishSourceConfig", "RedfishSource"),
    "modbus": ("collectors.sources.modbus", "ModbusSourceConfig", "ModbusSource"),
}


def build_source(raw: dict[str, Any], index: int) -> Source:
    """Validate one `[[sources]]` table and construct its source."""
    kind = raw.get("type")
    if kind not in REGISTRY:
        raise ValueError(f"sources[{index}].type: unknown source type {kind!r} "
                         f"(known: {sorted(REGISTRY)})")
    module_name, config_name, source_name = REGISTRY[kind]
    module = importlib.import_module(module_name)
    try:
        config = getattr(module, config_name).model_validate(raw)
    except ValidationError as exc:  # name the field the operator has to fix
        raise ValueError(f"sources[{index}] ({kind}): {format_validation_error(exc)}") from exc
    return getattr(module, source_name)(config)
