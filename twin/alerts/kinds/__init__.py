"""Rule kinds: each is one class (its pydantic model and its `evaluate`), registered with
`twin.alerts.rules.rule_kind`. Every module of this package is imported here, so a kind
in a new module needs no other edit. See docs/alerts.md, "Adding a rule kind"."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
