"""Loading pickled scikit-learn models (the optimizer's `PlantModels`, the failure
models), with a clear error when the installed scikit-learn is not the one that saved
them.

scikit-learn only warns (`InconsistentVersionWarning`) when it unpickles an estimator
saved by another version, and the trees' internals change between minor versions: such a
model may load and predict differently from what was validated, or fail deep inside a
prediction. A version change is therefore an error that names both versions and the way
out; pyproject.toml pins scikit-learn to the minor version of the shipped default models.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sklearn.exceptions import InconsistentVersionWarning

T = TypeVar("T")


class ModelVersionError(RuntimeError):
    """A model file saved by another scikit-learn version than the one installed."""


def load_checked(path: Path, load: Callable[[], T], retrain: str) -> T:
    """`load()` (which unpickles `path`), raising ModelVersionError instead of
    scikit-learn's version warning. `retrain`: the command that makes a new model."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            return load()
        except InconsistentVersionWarning as w:
            raise ModelVersionError(
                f"{path} was saved by scikit-learn {w.original_sklearn_version} and this is "
                f"{w.current_sklearn_version}: its models may not predict as validated; "
                f"retrain with `{retrain}`, or install "
                f"scikit-learn=={w.original_sklearn_version}"
            ) from None
