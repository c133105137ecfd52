"""The live optimizer (issue 19): proposals every control interval from the twin's current
telemetry, operator acceptance that writes through the plant's control protocol, and the
guardrails around a change.

Two background jobs, started and stopped by `dctwin.server.Server`:
* `propose` (every `interval_s`, default 900 s): reads the current setpoints and state
  (`observe.current_state`), expires the open proposals (the state has moved on), runs the
  optimizer with the serving model and stores a proposal with its setpoint changes,
  predicted savings and range, the constraints checked and why (each changed setpoint's
  share of the predicted saving). No model, stale telemetry or an out-of-distribution state
  gives no proposal; `status()` says why.
* `guard` (every `guard_interval_s`, default 10 s): expires proposals whose state drifted
  beyond `STATE_TOLERANCE` / `SETPOINT_TOLERANCE_FRACTION`, and watches every written change
  for `watch_s`: a reading after it above the GPU or coolant limit, or a loop dp below its
  floor, writes the previous setpoints back, each unit its own (status `reverted`).

`accept` checks, in this order: the lifecycle (409), staleness (409, and the proposal is
expired), the envelope and the rate-of-change limit against the plant's current setpoints
(422), one change in flight per plant (409). With `advisory_only` (the default for real
sites) it records the decision and writes nothing; otherwise it writes through the
`SetpointWriter`, which reads back and compares: a failure marks the recommendation
`failed` and the writer has put back what it changed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from domain.control import SetpointWriteError, SetpointWriter, per_control
from domain.plant import ENVELOPES
from domain.site import Site
from twin.health import ComponentHealth
from twin.optimizer.history import HistoryError, history_rows
from twin.optimizer.models import PlantModels
from twin.optimizer.observe import current_state, guard_readings
from twin.optimizer.recommendations import (
    ACCEPTED,
    EXPIRED,
    FAILED,
    PROPOSED,
    REVERTED,
    LifecycleError,
    RecommendationStore,
)
from twin.optimizer.search import Decision, Optimizer
from twin.optimizer.shipped import SHIPPED, SITE, ShippedModel
from twin.optimizer.space import FEATURES, SETPOINTS, Constraints
from twin.periodic import Periodic

log = logging.getLogger(__name__)

# a proposal is stale once the state it was made for has moved this far (absolute units)
STATE_TOLERANCE: dict[str, float] = {
    "gpu_util_mean": 0.10,
    "gpu_util_p95": 0.10,
    "outdoor_drybulb_c": 3.0,
    "outdoor_wetbulb_c": 2.0,
}
# ... or a setpoint moved by more than this share of its per-change step (someone else
# changed the plant)
SETPOINT_TOLERANCE_FRACTION = 0.25


class StaleRecommendationError(LifecycleError):
    """The state moved on: the proposal is expired (409)."""


class GuardrailError(ValueError):
    """Outside the envelope or the rate-of-change limit (422)."""


class ChangeInFlightError(LifecycleError):
    """Another change is still in its watch window (409)."""


class WriteFailedError(RuntimeError):
    """The plant did not take or confirm the write; the recommendation is `failed` (502)."""


@dataclass(frozen=True)
class LiveConfig:
    site_id: str
    model_path: Path
    interval_s: float = 900.0
    guard_interval_s: float = 10.0
    max_age_s: float = 120.0  # readings older than this do not make a state
    advisory_only: bool = True
    watch_s: float = 1800.0
    guard_gpu_temp_c: float = 83.0
    guard_coolant_supply_c: float = 40.0  # ASHRAE W40: the CDU secondary class
    guard_dp_min_kpa: float = 2.0
    expire_after_s: float | None = None  # default: two control intervals
    constraints: Constraints = field(default_factory=Constraints)
    seed: int = 0
    # issue 19/26 (opt-default): the shipped default, served while `model_path` is absent;
    # None when the package has none or it was trained on another site (`shipped_note` why)
    shipped: ShippedModel | None = None
    shipped_note: str | None = None
    # issue 19/26 (opt-default): live realised savings, measured once a change settled
    settle_s: float = 300.0  # after the written setpoints finished ramping
    outcome_window_s: float = 600.0  # metered window averaged after settling
    site: Site | None = None  # its facility meter: what the realised saving is metered on

    @property
    def max_proposal_age_s(self) -> float:
        return self.expire_after_s if self.expire_after_s is not None else 2 * self.interval_s


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.replace(tzinfo=UTC).isoformat(timespec="seconds")


class LiveOptimizer:
    def __init__(
        self,
        config: LiveConfig,
        open_store: Callable[[], RecommendationStore],
        cursor: Callable[[], duckdb.DuckDBPyConnection],
        writer: SetpointWriter | None = None,
    ) -> None:
        self.config, self.open_store, self.cursor, self.writer = config, open_store, cursor, writer
        self.proposer = Periodic(self.propose, config.interval_s, "optimizer")
        self.guardian = Periodic(
            self.guard, config.guard_interval_s, "optimizer-guard", wait_first=True
        )
        self._models: PlantModels | None = None
        self._model_mtime: tuple[float, str] | None = None
        self._model_error: str | None = None
        self._lock = threading.Lock()  # one change in flight per plant
        self.last_run_at: datetime | None = None
        self.last_outcome: str | None = None  # Decision.category, or no_model / no_state
        self.last_reason: str | None = None
        self.last_recommendation_id: int | None = None
        self.last_state: dict[str, float] = {}
        self.last_duration_s: float | None = None

    # -- jobs -----------------------------------------------------------------------------

    def start(self) -> None:
        self.proposer.start()
        self.guardian.start()

    def stop(self) -> None:
        self.guardian.stop(15)
        self.proposer.stop(15)
        if self.writer is not None:
            self.writer.close()

    def health(self, stale_s: float) -> ComponentHealth:
        h = self.proposer.health(max(stale_s, 3 * self.config.interval_s))
        g = self.guardian.health(max(stale_s, 3 * self.config.guard_interval_s))
        return g if h.status == "ok" and g.status != "ok" else h

    # -- the serving model ----------------------------------------------------------------

    def model_source(self) -> tuple[Path | None, str | None]:
        """The file served and where it comes from: the site's own trained model at
        `model_path` when present, else the shipped default for this site (issue 19/26)."""
        if self.config.model_path.exists():
            return self.config.model_path, SITE
        if self.config.shipped is not None:
            return self.config.shipped.path, SHIPPED
        return None, None

    def models(self) -> PlantModels | None:
        """The serving model (`model_source`), reloaded when the file changes (a new
        training)."""
        path, _source = self.model_source()
        if path is None:
            self._models, self._model_mtime = None, None
            self._model_error = (
                f"no trained model at {self.config.model_path}: run `dctwin optimize train`"
                + (f"; {self.config.shipped_note}" if self.config.shipped_note else "")
            )
            return None
        try:
            mtime = (path.stat().st_mtime, str(path))
        except FileNotFoundError:
            self._models, self._model_mtime, self._model_error = None, None, f"{path} vanished"
            return None
        if mtime != self._model_mtime:
            try:
                self._models, self._model_error = PlantModels.load(path), None
            except Exception as exc:  # a half-written or foreign file: say so, keep running
                self._models, self._model_error = None, f"cannot load {path}: {exc}"
            self._model_mtime = mtime
        return self._models

    # -- proposals ------------------------------------------------------------------------

    def propose(self, now: datetime | None = None) -> int | None:
        """One control round; the new recommendation's id, or None (see `status()`)."""
        t0 = time.perf_counter()
        now = now or _now()
        self.last_run_at = now
        try:
            return self._propose(now)
        finally:
            self.last_duration_s = time.perf_counter() - t0

    def _outcome(self, category: str, reason: str) -> None:
        self.last_outcome, self.last_reason = category, reason

    def _propose(self, now: datetime) -> int | None:
        store = self.open_store()
        obs = current_state(self.cursor(), now, self.config.max_age_s)
        self.last_state = dict(obs.values)
        models = self.models()
        if models is None:
            self._outcome("no_model", self._model_error or "no model")
            return None
        if not obs.complete:
            self._outcome(
                "no_state",
                f"no reading within {self.config.max_age_s:g} s for {sorted(obs.missing)}",
            )
            store.expire_proposed("superseded: no current state to check it against")
            return None
        d = Optimizer(models, self.config.constraints, self.config.seed).recommend(
            obs.state, obs.setpoints
        )
        store.expire_proposed(f"superseded by the control round at {_iso(now)}")
        if d.recommended is None:
            self._outcome(d.category, d.reason)
            return None
        rec_id = store.propose(d, self.config.site_id, now)
        store.set_why(rec_id, self._why(models, d))
        self.last_recommendation_id = rec_id
        self._outcome(d.category, d.reason)
        log.info("optimizer: proposed #%d (%s)", rec_id, d.reason)
        return rec_id

    def _why(self, models: PlantModels, d: Decision) -> dict[str, Any]:
        """Each changed setpoint's own predicted saving (moved alone from the current
        setpoints), the state it was made in and the constraint that binds."""
        assert d.recommended is not None
        opt = Optimizer(models, self.config.constraints, self.config.seed)
        cur = np.array([d.current[n] for n in SETPOINTS])
        rows = [cur]
        changed = [n for n in SETPOINTS if abs(d.recommended[n] - d.current[n]) > 1e-9]
        for n in changed:
            row = cur.copy()
            row[SETPOINTS.index(n)] = d.recommended[n]
            rows.append(row)
        state = np.array([d.state[k] for k in d.state])
        kw = opt.predict_setpoints(np.array(rows), state).facility_kw
        return {
            "changes": {n: d.recommended[n] - d.current[n] for n in changed},
            "setpoint_savings_kw": {n: float(kw[0] - kw[i + 1]) for i, n in enumerate(changed)},
            "state": d.state,
            "binding_constraint": d.binding_constraint,
            "reason": d.reason,
        }

    # -- staleness and guardrails ---------------------------------------------------------

    def stale_reason(self, rec: dict[str, Any], now: datetime) -> str | None:
        age = (now - rec["created_at"]).total_seconds()
        if age > self.config.max_proposal_age_s:
            return f"proposed {age:.0f} s ago (> {self.config.max_proposal_age_s:g} s)"
        obs = current_state(self.cursor(), now, self.config.max_age_s)
        if not obs.complete:
            return f"no current reading for {sorted(obs.missing)} to check it against"
        for k, tol in STATE_TOLERANCE.items():
            was, is_ = rec["state"].get(k), obs.values[k]
            if was is not None and abs(is_ - was) > tol:
                return f"{k} moved from {was:.3g} to {is_:.3g} (tolerance {tol:g})"
        for k in SETPOINTS:
            tol = SETPOINT_TOLERANCE_FRACTION * self.config.constraints.max_step.get(k, 1.0)
            was, is_ = rec["current_setpoints"].get(k), obs.values[k]
            if was is not None and abs(is_ - was) > tol:
                return f"{k} is {is_:.3g} now, was {was:.3g} when proposed"
        return None

    def envelope_problems(self, target: dict[str, float], current: dict[str, float]) -> list[str]:
        """Why `target` may not be written over `current` (empty: it may)."""
        c, out = self.config.constraints, []
        caps = {"chw_supply_setpoint_c": c.chw_max_c, "cdu_supply_setpoint_c": c.tcs_max_c}
        for k in SETPOINTS:
            v = target.get(k)
            if v is None or not np.isfinite(v):
                out.append(f"{k}: missing or not a number")
                continue
            env = ENVELOPES[k]
            hi = min(env.max, caps.get(k, env.max))
            if not env.min <= v <= hi:
                out.append(f"{k}={v:g} {env.unit} is outside the envelope [{env.min:g}, {hi:g}]")
            step = c.max_step.get(k)
            if step is not None and k in current and abs(v - current[k]) > step + 1e-6:
                out.append(
                    f"{k}: {current[k]:g} -> {v:g} moves {abs(v - current[k]):.3g} "
                    f"{env.unit}, more than the {step:g} allowed per change"
                )
        return out

    # -- operator decisions ---------------------------------------------------------------

    def accept(self, rec_id: int, who: str, note: str | None = None) -> dict[str, Any]:
        if not who or not who.strip():
            raise ValueError("who: the operator taking the decision must be named")
        with self._lock:
            store, now = self.open_store(), _now()
            rec = store.get(rec_id)  # UnknownRecommendationError: 404
            if rec["status"] != PROPOSED:
                raise LifecycleError(
                    f"recommendation {rec_id} is {rec['status']!r}; accepting needs it "
                    f"{PROPOSED!r}" + (f" ({rec['status_note']})" if rec.get("status_note") else "")
                )
            stale = self.stale_reason(rec, now)
            if stale:
                store.end(rec_id, PROPOSED, EXPIRED, f"stale when accepted: {stale}")
                raise StaleRecommendationError(
                    f"recommendation {rec_id} is stale and now expired: {stale}"
                )
            target = {k: float(v) for k, v in rec["recommended_setpoints"].items()}
            target["economizer_enabled"] = float(round(target["economizer_enabled"]))
            writing = self.writer is not None and not self.config.advisory_only
            try:
                # unit by unit, once: the plant's current setpoints are their means per
                # control, and a revert writes each unit back its own (`previous_points`)
                points = self.writer.read_points() if writing and self.writer else None
                current = per_control(points) if points is not None else rec["current_setpoints"]
            except SetpointWriteError as exc:  # the device is unreachable: nothing written
                assert self.writer is not None
                store.accept(rec_id, who, note)
                store.audit(rec_id, "apply", who.strip(), self.writer.name, target, None, str(exc))
                store.end(rec_id, ACCEPTED, FAILED, f"cannot read the plant's setpoints: {exc}")
                raise WriteFailedError(
                    f"recommendation {rec_id} failed, the plant is unchanged: cannot read "
                    f"its setpoints: {exc}"
                ) from None
            problems = self.envelope_problems(target, current)
            if problems:
                raise GuardrailError(f"recommendation {rec_id}: " + "; ".join(problems))
            busy = store.in_watch(now - timedelta(seconds=self.config.watch_s))
            if busy:
                b = busy[0]
                until = b["applied_at"] + timedelta(seconds=self.config.watch_s)
                raise ChangeInFlightError(
                    f"recommendation {b['id']} was applied at {_iso(b['applied_at'])} and is "
                    f"watched until {_iso(until)}; one change in flight per plant"
                )
            if not writing:
                why = "advisory only" if self.config.advisory_only else "no setpoint writer"
                store.accept(rec_id, who, note)
                store.audit(rec_id, "advisory", who.strip(), None, target, None)
                store.con.execute(
                    "UPDATE recommendations SET status_note = ? WHERE id = ?",
                    [f"{why}: decision recorded, nothing written", rec_id],
                )
                return store.get(rec_id)
            assert self.writer is not None
            store.accept(rec_id, who, note)  # the lifecycle's own check: one decision wins
            try:
                back = self.writer.write(target)
            except SetpointWriteError as exc:
                store.audit(rec_id, "apply", who.strip(), self.writer.name, target, None, str(exc))
                store.end(rec_id, ACCEPTED, FAILED, f"write failed: {exc}")
                raise WriteFailedError(
                    f"recommendation {rec_id} failed, the plant is unchanged: {exc}"
                ) from None
            store.audit(rec_id, "apply", who.strip(), self.writer.name, target, back)
            log.info("optimizer: #%d written by %s: %s", rec_id, who, back)
            return store.applied(rec_id, back, {k: float(v) for k, v in current.items()}, points)

    # -- the watch ------------------------------------------------------------------------

    def guard(self, now: datetime | None = None) -> list[int]:
        """Expire drifted proposals; revert watched changes that crossed a limit. The ids
        reverted."""
        now = now or _now()
        store = self.open_store()
        for rec in store.list(PROPOSED, 50):
            stale = self.stale_reason(rec, now)
            if stale:
                with contextlib.suppress(LifecycleError):  # decided meanwhile
                    store.end(rec["id"], PROPOSED, EXPIRED, stale)
        reverted = []
        for rec in store.in_watch(now - timedelta(seconds=self.config.watch_s)):
            violation = self.violation(rec["applied_at"])
            if violation:
                self._revert(store, rec, violation)
                reverted.append(int(rec["id"]))
            elif rec["status"] == ACCEPTED:
                self._measure(store, rec, now)
        return reverted

    # -- realised savings (issue 19/26, opt-default) --------------------------------------

    def realised(self, rec: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """A written change's realised facility saving from metered telemetry, or None
        while it has not settled. The window starts `settle_s` after the published
        setpoints last moved (the ramps ended) and lasts `outcome_window_s`. No
        counterfactual plant exists live, so the models stand in for it: realised =
        mean[model(previous setpoints, metered state) - metered facility kW] over the
        window, minus the same model error over the window just before the change (adjusted
        baseline; 0 when no rows precede it). docs/optimizer.md "Live realised savings"."""
        c, models = self.config, self.models()
        if c.site is None or models is None or not rec.get("previous_setpoints"):
            return None
        bucket_s = max(1.0, min(60.0, c.outcome_window_s / 10))
        t0 = rec["applied_at"]
        # the window cannot have closed before settle + window after the write: no query
        # on each guard round until then
        if now < t0 + timedelta(seconds=c.settle_s + c.outcome_window_s + bucket_s):
            return None
        try:
            after = history_rows(self.cursor(), c.site, t0, now, bucket_s)
        except HistoryError:
            return None
        settled = after.filter(after["since_change_s"] >= c.settle_s)
        if settled.is_empty():
            return None
        start = settled["time"][0]
        end = start + timedelta(seconds=c.outcome_window_s)
        if now < end + timedelta(seconds=bucket_s):  # the last bucket must be complete
            return None
        win = settled.filter((settled["time"] >= start) & (settled["time"] < end))
        prev = rec["previous_setpoints"]

        def counterfactual(rows: Any) -> np.ndarray:
            x = rows.select(FEATURES).to_numpy().astype(float)
            for k in SETPOINTS:
                if k in prev:
                    x[:, FEATURES.index(k)] = float(prev[k])
            return np.asarray(models.predict(x).facility_kw.mean(0))

        metered = win["facility_kw"].to_numpy()
        model_prev = counterfactual(win)
        model_new = np.asarray(models.predict(win.select(FEATURES).to_numpy()).facility_kw.mean(0))
        try:
            before = history_rows(
                self.cursor(), c.site, t0 - timedelta(seconds=c.outcome_window_s), t0, bucket_s
            )
        except HistoryError:
            before = after.clear()
        bias_kw = (
            float(np.mean(counterfactual(before) - before["facility_kw"].to_numpy()))
            if before.height
            else 0.0
        )
        return {
            "realised_savings_kw": float(np.mean(model_prev - metered)) - bias_kw,
            "window": (_iso(start), _iso(end)),
            "rows": win.height,
            "baseline_bias_kw": bias_kw,
            "baseline_rows": before.height,
            "repredicted_savings_kw": float(np.mean(model_prev - model_new)),
            "metered_facility_kw": float(metered.mean()),
        }

    def _measure(self, store: RecommendationStore, rec: dict[str, Any], now: datetime) -> None:
        try:
            r = self.realised(rec, now)
        except Exception:  # a measurement problem must not stop the guard
            log.exception("optimizer: measuring #%d failed", rec["id"])
            return
        if r is None:
            return
        note = (
            f"live, metered: window {r['window'][0]} .. {r['window'][1]} ({r['rows']} rows, "
            f"{self.config.settle_s:g} s after the ramps); counterfactual = the models at the "
            f"previous setpoints, baseline error {r['baseline_bias_kw']:+.2f} kW over "
            f"{r['baseline_rows']} rows before the change removed; models re-predict "
            f"{r['repredicted_savings_kw']:.2f} kW at the window's state; metered facility "
            f"{r['metered_facility_kw']:.1f} kW"
        )
        with contextlib.suppress(LifecycleError):  # reverted meanwhile
            store.record_outcome(rec["id"], r["realised_savings_kw"], note, now)
            log.info("optimizer: #%d realised %.2f kW", rec["id"], r["realised_savings_kw"])

    def violation(self, since: datetime) -> str | None:
        c = self.config
        g = guard_readings(self.cursor(), since).values
        if g.get("gpu_temp_max_c", -np.inf) > c.guard_gpu_temp_c:
            return f"GPU temperature {g['gpu_temp_max_c']:g} degC > limit {c.guard_gpu_temp_c:g}"
        if g.get("cdu_supply_max_c", -np.inf) > c.guard_coolant_supply_c:
            return f"CDU supply {g['cdu_supply_max_c']:g} degC > limit {c.guard_coolant_supply_c:g}"
        if g.get("cdu_dp_min_kpa", np.inf) < c.guard_dp_min_kpa:
            return f"loop dp {g['cdu_dp_min_kpa']:g} kPa < floor {c.guard_dp_min_kpa:g}"
        return None

    def _revert(self, store: RecommendationStore, rec: dict[str, Any], violation: str) -> None:
        # each unit's own value when it was recorded (applied by this version), else the
        # per-control values (every unit of a control gets their mean)
        points = rec.get("previous_points")
        prev = points or rec["previous_setpoints"] or rec["current_setpoints"]
        with self._lock:
            if self.writer is None:
                return
            try:
                back = self.writer.write_points(prev) if points else self.writer.write(prev)
            except SetpointWriteError as exc:  # keep watching: the next round retries
                store.audit(rec["id"], "revert", "guard", self.writer.name, prev, None, str(exc))
                log.error("optimizer: revert of #%d failed: %s", rec["id"], exc)
                return
            store.audit(rec["id"], "revert", "guard", self.writer.name, prev, back)
            store.end(rec["id"], rec["status"], REVERTED, f"reverted: {violation}")
            log.warning("optimizer: #%d reverted (%s)", rec["id"], violation)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        c = self.config
        m = self.models()
        nxt = (
            self.last_run_at + timedelta(seconds=c.interval_s)
            if self.last_run_at is not None and self.proposer.running
            else None
        )
        return {
            "running": self.proposer.running,
            "interval_s": c.interval_s,
            "last_run_at": _iso(self.last_run_at),
            "next_run_at": _iso(nxt),
            "last_run_duration_s": self.last_duration_s,
            "model": str(self.model_source()[0] or c.model_path),
            "model_version": m.version if m is not None else None,
            # issue 19/26 (opt-default): shipped_default or site_trained (None: no model)
            "model_source": self.model_source()[1] if m is not None else None,
            "model_calibrated": m is not None and m.calibration is not None,
            "model_problem": self._model_error,
            "last_outcome": self.last_outcome,
            "reason": self.last_reason,
            "last_recommendation_id": self.last_recommendation_id,
            "state": self.last_state,
            "advisory_only": c.advisory_only,
            "writer": self.writer.name if self.writer is not None else None,
            "watch_s": c.watch_s,
            "guard_limits": {
                "gpu_temp_max_c": c.guard_gpu_temp_c,
                "coolant_supply_max_c": c.guard_coolant_supply_c,
                "loop_dp_min_kpa": c.guard_dp_min_kpa,
            },
        }
