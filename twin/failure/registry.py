"""Versioned failure models on disk: <root>/<version>/model.joblib + meta.json.

A version is `v<UTC time>-h<horizon>`; meta.json records the data window, runs, features,
metrics, code version (git commit when available) and whether it is approved. Serving
loads the newest APPROVED model for a horizon and says which one it uses.

The package ships a default model (`twin/failure/default_model/<version>/`, made by
`dctwin failure train-default`): when a site's registry holds no approved model for a
horizon, `newest_approved` falls back to it, so risk is served from day one. A site's
own approved model always wins over the shipped one.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import joblib  # type: ignore[import-untyped]  # no stubs or py.typed

from twin.failure.model import FailureModel
from twin.model_files import ModelVersionError, load_checked

DEFAULT_ROOT = Path("var/models/failure")
# the shipped default model(s): package data, written only by `dctwin failure train-default`
SHIPPED_ROOT = Path(__file__).resolve().parent / "default_model"
SHIPPED = "shipped_default"
SITE = "site_trained"


class RegistryError(LookupError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    meta: dict

    @property
    def approved(self) -> bool:
        return bool(self.meta.get("approved"))

    @property
    def source(self) -> str:
        """shipped_default (package data) or site_trained (the site's registry)."""
        return SHIPPED if self.path.resolve().parent == SHIPPED_ROOT else SITE

    def load(self) -> FailureModel:
        path = self.path / "model.joblib"
        try:
            return load_checked(path, lambda: joblib.load(path), "dctwin failure train")
        except ModelVersionError as exc:  # served as "no model", with the reason
            raise RegistryError(str(exc)) from None

    def describe(self) -> dict:
        """What the API says about a model: version, where it comes from, when it was
        trained and approved, on what, and the held-out figures it was validated with."""
        m = self.meta
        validation = m.get("validation") or {}
        figures = validation.get("classes") or (m.get("metrics") or {}).get("classes") or {}
        keep = ("episodes", "positives", "pr_auc", "precision_strict", "recall", "lead_min_p50")
        return {
            "version": self.version,
            "source": self.source,
            "approved": self.approved,
            "horizon_s": float(m.get("horizon_s", 0.0)),
            "trained_at": m.get("created"),
            "approved_at": m.get("approved_at"),
            "training_data": m.get("training_data", "simulator runs"),
            "validation": {
                "method": validation.get(
                    "method", "internal test: the latest runs of the time-ordered split"
                ),
                "classes": {c: {k: r.get(k) for k in keep if k in r} for c, r in figures.items()},
            },
        }


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save(model: FailureModel, meta: dict, root: Path = DEFAULT_ROOT) -> ModelVersion:
    now = datetime.now(UTC)
    version = f"v{now:%Y%m%dT%H%M%S%f}-h{int(model.horizon_s)}s"
    path = root / version
    path.mkdir(parents=True, exist_ok=False)
    joblib.dump(model, path / "model.joblib")
    full = {
        "version": version,
        "created": now.isoformat(),
        "horizon_s": model.horizon_s,
        "code_version": code_version(),
        "approved": False,
        "features": {c: m.features for c, m in model.classes.items()},
        "thresholds": {c: m.threshold for c, m in model.classes.items()},
        **meta,
    }
    (path / "meta.json").write_text(json.dumps(full, indent=2, default=str))
    return ModelVersion(version, path, full)


def versions(root: Path = DEFAULT_ROOT) -> list[ModelVersion]:
    """All versions, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        meta_file = d / "meta.json"
        if d.is_dir() and meta_file.is_file():
            out.append(ModelVersion(d.name, d, json.loads(meta_file.read_text())))
    return out


def get(version: str, root: Path = DEFAULT_ROOT) -> ModelVersion:
    for v in versions(root):
        if v.version == version:
            return v
    raise RegistryError(f"model version {version!r} not found in {root}")


def approve(version: str, root: Path = DEFAULT_ROOT, approved: bool = True) -> ModelVersion:
    v = get(version, root)
    meta = {
        **v.meta,
        "approved": approved,
        "approved_at": datetime.now(UTC).isoformat() if approved else None,
    }
    (v.path / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return ModelVersion(v.version, v.path, meta)


def shipped_versions() -> list[ModelVersion]:
    """The default model(s) shipped with the package (approved by construction)."""
    return versions(SHIPPED_ROOT)


def newest_approved(
    root: Path = DEFAULT_ROOT, horizon_s: float | None = None, fallback: bool = True
) -> ModelVersion:
    """The site's newest approved model for the horizon; without one (and `fallback`), the
    shipped default for that horizon."""

    def approved(vs: list[ModelVersion]) -> list[ModelVersion]:
        return [
            v
            for v in vs
            if v.approved
            and (horizon_s is None or float(v.meta.get("horizon_s", -1)) == float(horizon_s))
        ]

    cands = approved(versions(root))
    if not cands and fallback:
        cands = approved(shipped_versions())
    if not cands:
        raise RegistryError(
            f"no approved failure model"
            f"{'' if horizon_s is None else f' for horizon {horizon_s:.0f} s'}"
            f" in {root}{' and no shipped default for it' if fallback else ''}"
            f" (train one, then `dctwin failure approve VERSION`)"
        )
    return cands[-1]


def find(version: str, root: Path = DEFAULT_ROOT) -> ModelVersion:
    """A version in the site's registry or among the shipped defaults."""
    for v in versions(root) + shipped_versions():
        if v.version == version:
            return v
    raise RegistryError(f"model version {version!r} not found in {root} or the shipped defaults")
