"""Model files saved by another scikit-learn version are refused with an error naming
both versions and the way out (twin/model_files.py), for the optimizer's pickles and the
failure registry's joblib files; the shipped defaults load under the pinned version."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import joblib  # type: ignore[import-untyped]
import numpy as np
import pytest
import sklearn
from sklearn.tree import DecisionTreeRegressor

from twin.failure import registry
from twin.model_files import ModelVersionError, load_checked
from twin.optimizer.models import PlantModels
from twin.optimizer.shipped import SHIPPED_ROOT as OPT_SHIPPED

OTHER = re.sub(r"\d", "0", sklearn.__version__)  # e.g. 1.9.1 -> 0.0.0: same length


def _tree() -> DecisionTreeRegressor:
    x = np.arange(20, dtype=float).reshape(-1, 1)
    return DecisionTreeRegressor(max_depth=2).fit(x, x[:, 0] ** 2)


def _as_if_saved_by(raw: bytes, version: str) -> bytes:
    """The pickle with scikit-learn's version stamp replaced (same length)."""
    mine = sklearn.__version__.encode()
    assert len(version) == len(mine) and mine in raw
    return raw.replace(mine, version.encode())


def test_a_pickle_from_another_scikit_learn_is_a_clear_error(tmp_path: Path) -> None:
    other = OTHER
    path = tmp_path / "model.pkl"
    path.write_bytes(_as_if_saved_by(pickle.dumps(_tree()), other))
    with pytest.raises(ModelVersionError) as e:
        load_checked(path, lambda: pickle.loads(path.read_bytes()), "dctwin optimize train")
    msg = str(e.value)
    assert other in msg and sklearn.__version__ in msg and "dctwin optimize train" in msg
    # the optimizer's loader goes through it (the file is not PlantModels either way)
    with pytest.raises(ModelVersionError):
        PlantModels.load(path)
    # the same file from this version loads
    path.write_bytes(pickle.dumps(_tree()))
    assert load_checked(path, lambda: pickle.loads(path.read_bytes()), "x").predict([[3.0]])


def test_a_failure_model_from_another_scikit_learn_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "v1"
    d.mkdir()
    joblib.dump(_tree(), d / "model.joblib")
    raw = (d / "model.joblib").read_bytes()
    (d / "model.joblib").write_bytes(_as_if_saved_by(raw, OTHER))
    # the registry's error: the risk service and /v1/failure-risk say "no model" with it
    with pytest.raises(
        registry.RegistryError, match="saved by scikit-learn 0.*dctwin failure train"
    ):
        registry.ModelVersion("v1", d, {}).load()


def test_the_shipped_defaults_load_under_the_pinned_version() -> None:
    (opt,) = sorted(OPT_SHIPPED.glob("*/model.pkl"))
    assert isinstance(PlantModels.load(opt), PlantModels)
    shipped = [v for v in registry.versions(registry.SHIPPED_ROOT)]
    assert shipped
    for v in shipped:
        assert v.load() is not None
