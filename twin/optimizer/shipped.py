"""The optimizer model shipped with the package (issue 19/26, opt-default).

`twin/optimizer/default_model/<version>/` holds `model.pkl` (a `PlantModels`), `meta.json`
and `MODEL_CARD.md`, written only by `dctwin optimize train-default`. It was learnt on
the example site (domain/sites/example.toml), so it is served only to a site whose parsed
site file has the same fingerprint: a real site with another topology (or the same one
with different equipment) gets no shipped model, and the status says why, instead of
being advised silently by another site's physics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.site import Site

SHIPPED_ROOT = Path(__file__).resolve().parent / "default_model"
SHIPPED = "shipped_default"
SITE = "site_trained"


def site_fingerprint(site: Site) -> str:
    """Identity of a site's topology and equipment: sha256 of its parsed model (key order
    and comments in the file do not matter; any equipment or topology change does)."""
    text = json.dumps(site.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShippedModel:
    version: str
    path: Path  # the model.pkl
    meta: dict[str, Any]

    @property
    def site_fingerprint(self) -> str:
        return str(self.meta.get("site_fingerprint", ""))


def shipped(root: Path = SHIPPED_ROOT) -> ShippedModel | None:
    """The newest shipped default (by version name), or None."""
    if not root.is_dir():
        return None
    found = []
    for d in sorted(root.iterdir()):
        meta_file, model_file = d / "meta.json", d / "model.pkl"
        if meta_file.is_file() and model_file.is_file():
            found.append(ShippedModel(d.name, model_file, json.loads(meta_file.read_text())))
    return found[-1] if found else None


def shipped_for(site: Site | None, root: Path = SHIPPED_ROOT) -> tuple[ShippedModel | None, str]:
    """The shipped default if it was trained on `site`, else None; and why (for status)."""
    sm = shipped(root)
    if sm is None:
        return None, "no shipped default model in the package"
    if site is None:
        return None, "no site file to match the shipped default against"
    fp = site_fingerprint(site)
    if fp != sm.site_fingerprint:
        return None, (
            f"the shipped default {sm.version} was trained on site "
            f"{sm.meta.get('site_id')!r} (fingerprint {sm.site_fingerprint}); this site "
            f"{site.site.id!r} (fingerprint {fp}) differs, so it is not served: train "
            "this site's own model (`dctwin optimize train --site ...`)"
        )
    return sm, "shipped default for this site"
