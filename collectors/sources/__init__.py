"""Collector source plugins: one folder per device protocol. See collectors/base.py.

A plugin is a folder `collectors/sources/<type>/` whose `source.py` defines a pydantic
config model with a literal `type` field and a class implementing `Source`, exported as
`CONFIG_MODEL` and `SOURCE_CLASS`; beside it a `README.md`, a `sample.toml` and any
register maps or field tables. The folder name is the `type` a collector config names,
so adding a folder is all it takes: nothing here lists the plugins. A plugin's module is
imported only when a config uses it, so a rack without pymodbus never imports it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from collectors.base import Source
from domain.site import format_validation_error


def source_types() -> list[str]:
    """The plugin folders present (each a `type` a collector config may name)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def build_source(raw: dict[str, Any], index: int) -> Source:
    """Validate one `[[sources]]` table and construct its source."""
    kind = raw.get("type")
    known = source_types()
    if kind not in known:
        raise ValueError(f"sources[{index}].type: unknown source type {kind!r} (known: {known})")
    module = importlib.import_module(f"{__name__}.{kind}.source")
    try:
        config = module.CONFIG_MODEL.model_validate(raw)
    except ValidationError as exc:  # name the field the operator has to fix
        raise ValueError(f"sources[{index}] ({kind}): {format_validation_error(exc)}") from exc
    source: Source = module.SOURCE_CLASS(config)
    return source
