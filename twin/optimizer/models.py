"""Learned plant and thermal models, their held-out error, and the trained domain.

One HistGradientBoostingRegressor per outcome, with monotonic constraints where physics
fixes the sign (chiller power falls with the chilled-water setpoint and rises with the
condenser-water setpoint; GPU temperatures rise with the CDU supply setpoint and fall with
loop differential pressure; ...). The power models are small bootstrap ensembles: their
spread gives the uncertainty range of predicted savings. GPU maximum temperature also has
an upper bound: the mean model plus the 98th percentile of its residuals on the first half
of the held-out rows (split conformal; coverage is reported on the second half). The GPU
limit is checked against that bound; it stays monotone because the mean model is.
The `Domain` keeps what the models were trained on (per-feature min/max and a
nearest-neighbour distance scale calibrated on held-out rows) so the optimizer never
evaluates them outside it.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.neighbors import KDTree
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

from twin.model_files import load_checked
from twin.optimizer.space import (
    COOLING_TARGETS,
    FEATURES,
    POWER_TARGETS,
    STATE,
    THERMAL_TARGETS,
)

# derived inputs that make the physics axis-aligned for trees: economizer potential
# (chw setpoint over wet-bulb), tower lift, CDU exchanger headroom, CRAH coil headroom;
# each is (a - b) of two raw inputs
DERIVED: dict[str, tuple[str, str]] = {
    "chw_over_wetbulb_k": ("chw_supply_setpoint_c", "outdoor_wetbulb_c"),
    "cw_over_wetbulb_k": ("cw_supply_setpoint_c", "outdoor_wetbulb_c"),
    "cdu_over_chw_k": ("cdu_supply_setpoint_c", "chw_supply_setpoint_c"),
    "crah_over_chw_k": ("crah_supply_setpoint_c", "chw_supply_setpoint_c"),
}
MODEL_FEATURES: tuple[str, ...] = FEATURES + tuple(DERIVED)
_I = {n: i for i, n in enumerate(FEATURES)}

# +1 increasing, -1 decreasing in that input; only where physics fixes the sign.
# A derived input a - b is used by a model only with a sign that agrees with the model's
# constraints on a and b (or neither is constrained), so monotonicity in the raw setpoint
# holds overall; the others are left out of that model (`columns`).
MONOTONIC: dict[str, dict[str, int]] = {
    "chiller_kw": {
        "chw_supply_setpoint_c": -1,
        "cw_supply_setpoint_c": 1,
        "economizer_enabled": -1,
        "gpu_util_mean": 1,
        "outdoor_wetbulb_c": 1,
        "chw_over_wetbulb_k": -1,
    },
    "tower_kw": {"cw_supply_setpoint_c": -1, "cw_over_wetbulb_k": -1},
    "plant_pump_kw": {},
    "cdu_pump_kw": {"cdu_dp_setpoint_kpa": 1},
    "crah_fan_kw": {"gpu_util_mean": 1},
    "noncooling_kw": {"cdu_supply_setpoint_c": 1, "gpu_util_mean": 1, "cdu_over_chw_k": 1},
    "gpu_temp_max_c": {
        "cdu_supply_setpoint_c": 1,
        "cdu_dp_setpoint_kpa": -1,
        "chw_supply_setpoint_c": 1,
    },
    "gpu_temp_p99_c": {
        "cdu_supply_setpoint_c": 1,
        "cdu_dp_setpoint_kpa": -1,
        "chw_supply_setpoint_c": 1,
    },
    "cdu_supply_max_c": {"cdu_supply_setpoint_c": 1, "chw_supply_setpoint_c": 1},
    "crah_supply_max_c": {"crah_supply_setpoint_c": 1, "chw_supply_setpoint_c": 1},
}


def columns(target: str) -> list[int]:
    """MODEL_FEATURES columns the target's model uses (derived ones only when consistent)."""
    m = MONOTONIC.get(target, {})
    cols = list(range(len(FEATURES)))
    for j, (name, (a, b)) in enumerate(DERIVED.items()):
        sa, sb, sd = m.get(a, 0), m.get(b, 0), m.get(name, 0)
        consistent = (sa in (0, sd) and sb in (0, -sd)) if sd else (sa == 0 and sb == 0)
        if consistent:
            cols.append(len(FEATURES) + j)
    return cols


GPU_UPPER_QUANTILE = 0.98
HOLDOUT_FRACTION = 0.2
STATE_RADIUS_MAX = 0.25  # normalized (per-feature range) units
FULL_RADIUS_MAX = 1.0


def _cst(target: str) -> list[int]:
    m = MONOTONIC.get(target, {})
    return [m.get(MODEL_FEATURES[c], 0) for c in columns(target)]


def _regressor(target: str, seed: int, **kw) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(
        max_iter=150,
        learning_rate=0.1,
        max_leaf_nodes=31,
        min_samples_leaf=20,
        monotonic_cst=_cst(target),
        random_state=seed,
        **kw,
    )


def design(x: np.ndarray) -> np.ndarray:
    """Raw FEATURES rows -> MODEL_FEATURES rows (raw + derived)."""
    return np.hstack([x, np.column_stack([x[:, _I[a]] - x[:, _I[b]] for a, b in DERIVED.values()])])


def features(df: pl.DataFrame) -> np.ndarray:
    return df.select(FEATURES).to_numpy().astype(float)


@dataclass
class Domain:
    """Where the models were trained: ranges, and nearest-neighbour distance scales."""

    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    state_tree: KDTree
    full_tree: KDTree
    state_radius: float  # a state further than this from every training state is OOD
    full_radius: float  # same for (setpoints, state) candidates

    @classmethod
    def fit(cls, x_train: np.ndarray, x_hold: np.ndarray) -> Domain:
        lo, hi = x_train.min(0), x_train.max(0)
        scale = np.where(hi - lo > 1e-9, hi - lo, 1.0)
        ns = len(STATE)
        z_tr, z_ho = x_train / scale, x_hold / scale
        state_tree, full_tree = KDTree(z_tr[:, -ns:]), KDTree(z_tr)
        # calibrated on held-out (later) rows: how far legitimate new points lie
        d_state = state_tree.query(z_ho[:, -ns:], k=1)[0][:, 0]
        d_full = full_tree.query(z_ho, k=1)[0][:, 0]
        # capped: a state a quarter of the trained range away from every training state
        # is out of distribution however sparse the held-out rows were
        return cls(
            lo,
            hi,
            scale,
            state_tree,
            full_tree,
            float(np.clip(2.0 * np.quantile(d_state, 0.99), 0.05, STATE_RADIUS_MAX)),
            float(np.clip(1.5 * np.quantile(d_full, 0.99), 0.1, FULL_RADIUS_MAX)),
        )

    def state_reasons(self, state: np.ndarray) -> list[str]:
        """Why a state is out of the trained distribution (empty list: it is in)."""
        ns = len(STATE)
        out = []
        for name, v, lo, hi in zip(STATE, state, self.lo[-ns:], self.hi[-ns:], strict=True):
            if not np.isfinite(v):
                out.append(f"{name} is not a number")
            elif v < lo or v > hi:
                out.append(f"{name}={v:.3g} is outside the trained range [{lo:.3g}, {hi:.3g}]")
        if not out:
            d = float(self.state_tree.query((state / self.scale[-ns:])[None, :], k=1)[0][0, 0])
            if d > self.state_radius:
                out.append(
                    f"no training data near this state (nearest-neighbour distance "
                    f"{d:.3f} > {self.state_radius:.3f} in normalized units)"
                )
        return out

    def candidates_inside(self, x: np.ndarray) -> np.ndarray:
        """Mask of candidate rows (setpoints + state) within range and near training data."""
        inside: np.ndarray = np.all((x >= self.lo) & (x <= self.hi), axis=1)
        if inside.any():
            d = self.full_tree.query(x[inside] / self.scale, k=1)[0][:, 0]
            inside[np.flatnonzero(inside)] = d <= self.full_radius
        return inside


@dataclass
class Prediction:
    power_members: np.ndarray  # (members, rows) facility power, kW
    cooling_members: np.ndarray  # (members, rows) cooling power, kW
    mean: dict[str, np.ndarray]  # per target, ensemble mean
    gpu_temp_upper_c: np.ndarray  # upper-quantile GPU max temperature

    @property
    def facility_kw(self) -> np.ndarray:
        return self.power_members.mean(0)

    @property
    def cooling_kw(self) -> np.ndarray:
        return self.cooling_members.mean(0)

    def row(self, i: int, ensemble: bool = True) -> Prediction:
        """Row i alone (ensemble=False: the first member only, as the search ranks by)."""
        m = slice(None) if ensemble else slice(0, 1)
        return Prediction(
            self.power_members[m, i : i + 1],
            self.cooling_members[m, i : i + 1],
            {k: v[i : i + 1] for k, v in self.mean.items()},
            self.gpu_temp_upper_c[i : i + 1],
        )


@dataclass(frozen=True)
class Calibration:
    """Predicted savings x `savings_scale`: the median realised/predicted saving of the
    recommendations predicted (after scaling) >= `min_predicted_kw` on the calibration
    week, each measured after the plant settled against a counterfactual."""

    savings_scale: float
    min_predicted_kw: float
    week_start: str  # UTC ISO
    days: float
    seed: int
    n_recommendations: int  # measured on the calibration week
    n_used: int  # of them predicted >= min_predicted_kw (after scaling)


@dataclass
class PlantModels:
    power: dict[str, list[HistGradientBoostingRegressor]]
    thermal: dict[str, HistGradientBoostingRegressor]
    gpu_upper_offset_k: float
    domain: Domain
    version: str
    trained_at: str
    n_train: int
    n_holdout: int
    holdout_error: dict[str, dict[str, float]] = field(default_factory=dict)
    # first and last history row (UTC ISO): an evaluation must start after the last
    data_window: tuple[str, str] | None = None
    # issue 19 opt-ml: shrinkage of predicted savings, fitted on a calibration week that is
    # neither training nor evaluation (experiments/optimizer/calibrate.py); None: raw
    calibration: Calibration | None = None

    @property
    def savings_scale(self) -> float:
        """Factor applied to every predicted saving (1.0 before calibration)."""
        cal = getattr(self, "calibration", None)  # models pickled before the field existed
        return 1.0 if cal is None else cal.savings_scale

    def predict(self, x: np.ndarray, ensemble: bool = True) -> Prediction:
        """Predictions for raw FEATURES rows; ensemble=False uses only the first (full-data)
        member of each power model (search), True all members (savings ranges)."""
        x = design(x)
        members = {
            t: np.stack([m.predict(x[:, columns(t)]) for m in (ms if ensemble else ms[:1])])
            for t, ms in self.power.items()
        }
        facility = np.sum([members[t] for t in POWER_TARGETS], axis=0)
        cooling = np.sum([members[t] for t in COOLING_TARGETS], axis=0)
        mean = {t: v.mean(0) for t, v in members.items()}
        mean.update({t: m.predict(x[:, columns(t)]) for t, m in self.thermal.items()})
        return Prediction(facility, cooling, mean, mean["gpu_temp_max_c"] + self.gpu_upper_offset_k)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(self))
        return path

    @staticmethod
    def load(path: str | Path) -> PlantModels:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no trained optimizer model at {path}: run `dctwin optimize train` first"
            )
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # opt-default: the shipped model is gzip-compressed (size)
            raw = gzip.decompress(raw)
        obj = load_checked(path, lambda: pickle.loads(raw), "dctwin optimize train")
        if not isinstance(obj, PlantModels):
            raise TypeError(f"{path} does not hold optimizer models")
        return obj


def _iso(t: datetime) -> str:
    return t.replace(tzinfo=UTC).isoformat()  # history times are naive UTC


def _errors(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    err = p - y
    denom = np.maximum(np.abs(y), 1e-6)
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mape_pct": float(100 * np.median(np.abs(err) / denom)),
        "mean": float(y.mean()),
    }


def train(
    history: pl.DataFrame,
    members: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    threads: int = 1,
) -> PlantModels:
    """Fit every model on the earliest (1 - HOLDOUT_FRACTION) of the rows in time and
    report the error on the latest rows; the held-out rows calibrate the domain.
    `threads` caps OpenMP: unbounded, it oversubscribes a shared machine badly."""
    with threadpool_limits(threads):
        return _train(history, members, seed, progress)


def _train(
    history: pl.DataFrame, members: int, seed: int, progress: Callable[[str], None] | None
) -> PlantModels:
    if history.height < 200:
        raise ValueError(
            f"training history has {history.height} settled rows; need >= 200 "
            "(run `dctwin optimize train` with more hours)"
        )
    history = history.sort("time")
    n_hold = max(1, int(history.height * HOLDOUT_FRACTION))
    tr, ho = history.head(history.height - n_hold), history.tail(n_hold)
    x_tr, x_ho = features(tr), features(ho)
    d_tr = design(x_tr)
    rng = np.random.default_rng(seed)
    tick = progress or (lambda _msg: None)
    power: dict[str, list[HistGradientBoostingRegressor]] = {}
    for t in POWER_TARGETS:
        y = tr[t].to_numpy()
        power[t] = []
        for k in range(members):
            idx = rng.integers(0, len(y), len(y)) if k else np.arange(len(y))
            power[t].append(_regressor(t, seed + k).fit(d_tr[idx][:, columns(t)], y[idx]))
            tick(f"{t} member {k + 1}")
    thermal = {}
    for t in THERMAL_TARGETS:
        thermal[t] = _regressor(t, seed).fit(d_tr[:, columns(t)], tr[t].to_numpy())
        tick(t)
    # split conformal: residual quantile on the first half of the held-out rows
    half = max(1, n_hold // 2)
    gm = thermal["gpu_temp_max_c"]
    resid = ho["gpu_temp_max_c"].to_numpy()[:half] - gm.predict(
        design(x_ho[:half])[:, columns("gpu_temp_max_c")]
    )
    upper = max(float(np.quantile(resid, GPU_UPPER_QUANTILE)), 0.0)
    domain = Domain.fit(x_tr, x_ho)
    digest = hashlib.sha1(np.ascontiguousarray(x_tr).tobytes()).hexdigest()[:8]
    now = datetime.now(UTC)
    models = PlantModels(
        power,
        thermal,
        upper,
        domain,
        f"opt-{now:%Y%m%d}-{digest}",
        now.isoformat(timespec="seconds"),
        tr.height,
        ho.height,
        # polars types a Series' min/max as any Python scalar; `time` is a Datetime column
        data_window=(
            _iso(cast(datetime, history["time"].min())),
            _iso(cast(datetime, history["time"].max())),
        ),
    )
    pred = models.predict(x_ho)
    err = {t: _errors(ho[t].to_numpy(), pred.mean[t]) for t in (*POWER_TARGETS, *THERMAL_TARGETS)}
    err["facility_kw"] = _errors(ho["facility_kw"].to_numpy(), pred.facility_kw)
    err["cooling_kw"] = _errors(ho["cooling_kw"].to_numpy(), pred.cooling_kw)
    y_max = ho["gpu_temp_max_c"].to_numpy()
    err["gpu_temp_max_c"]["upper_bound_offset_k"] = upper
    err["gpu_temp_max_c"]["upper_bound_coverage"] = float(
        (y_max[half:] <= pred.gpu_temp_upper_c[half:]).mean()
    )
    models.holdout_error = err
    return models
