"""Versioned failure models on disk: <root>/<version>/model.joblib + meta.json.

A version is `v<UTC time>-h<horizon>`; meta.json records the data window, runs, features,
metrics, code version (git commit when available) and whether it is approved. Serving
loads the newest APPROVED model for a horizon and says which one it uses.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import joblib  # type: ignore[import-untyped]  # no stubs or py.typed

from twin.failure.model import FailureModel

DEFAULT_ROOT = Path("var/models/failure")


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

    def load(self) -> FailureModel:
        return joblib.load(self.path / "model.joblib")


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


def newest_approved(root: Path = DEFAULT_ROOT, horizon_s: float | None = None) -> ModelVersion:
    cands = [
        v
        for v in versions(root)
        if v.approved
        and (horizon_s is None or float(v.meta.get("horizon_s", -1)) == float(horizon_s))
    ]
    if not cands:
        raise RegistryError(
            f"no approved failure model"
            f"{'' if horizon_s is None else f' for horizon {horizon_s:.0f} s'}"
            f" in {root} (train one, then `dctwin failure approve VERSION`)"
        )
    return cands[-1]
