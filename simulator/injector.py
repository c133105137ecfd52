"""Applies a fault plan to the physics each step and emits the events devices would raise.

Effects are arrays the physics multiplies in (pump wear, HX UA factor, R_th factor, PSU
loss factor, ...). Events carry only what a real device reports (an XID code, a leak
sensor, a failed pump), never the fault id: ground truth lives in the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.faults import (
    GSP_XIDS,
    SPIKE_RATE_PH,
    Fault,
    FaultPlan,
    _pattern_rng,
    intermittent_times,
    seal_leak_episodes,
)
from simulator.layout import SiteLayout
from simulator.ups import UpsEffects

H = 3600.0
ECC_BASE_PER_H = 2.0
ECC_GROWTH = 8.0  # corrected-error rate grows e^8 (~3000x) from onset to failure
ECC_XID92_PER_H = 100.0
ECC_REMAP_AT = (0.6, 0.75, 0.9)
ECC_CONTAINED_AT = 0.85
CAVITATION_HEAD = 0.08
# held-out modes (issue 21)
HBM_ECC_RATE_PH = 20.0  # corrected errors per hour with the HBM at HBM_ECC_REF_C
HBM_ECC_REF_C = 80.0
HBM_ECC_DOUBLING_K = 1.7  # the rate doubles per 1.7 K: ~ x60 per 10 K
PSU_HOT_LOSS = 0.06  # losses +6 % at the end of a PSU fan failure (MOSFET R_ds(on) with T)
WINDING_LOSS = 0.03  # circulating current in shorted turns


@dataclass
class SimEvent:
    time_ms: int
    device_id: str
    kind: str  # an domain.contract.EventKind value
    severity: str
    message: str
    attrs: dict = field(default_factory=dict)


@dataclass
class Effects:
    cdu_pump_wear: np.ndarray
    cdu_ua_factor: np.ndarray
    cdu_reservoir_pct: np.ndarray
    cdu_leak_detected: np.ndarray
    gpu_rth_factor: np.ndarray
    psu_loss_factor: np.ndarray
    psu_failed: np.ndarray
    crah_failed: np.ndarray
    crah_fan_power_factor: np.ndarray
    refrigerant_severity: float = 0.0
    chillers_tripped: int = 0
    ups: UpsEffects = field(default_factory=UpsEffects)
    # held-out failure modes (issue 21): identity values (1 or 0) unless one acts
    gpu_mem_rth_factor: np.ndarray = field(default_factory=lambda: np.ones(0))
    psu_thermal_factor: np.ndarray = field(default_factory=lambda: np.ones(0))
    psu_extra_loss_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cdu_pump_power_factor: np.ndarray = field(default_factory=lambda: np.ones(0))
    crah_slip: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _progress(t: float, start: float, end: float) -> float:
    return float(np.clip((t - start) / max(end - start, 1e-9), 0.0, 1.0))


class FaultInjector:
    def __init__(self, plan: FaultPlan, layout: SiteLayout, seed: int = 0) -> None:
        self.plan, self.layout = plan, layout
        self.rng = np.random.default_rng([seed, 0x1EC7])
        self.sensor_faults = [f for f in plan.faults if f.kind.device_class == "sensor"]
        self.physical = [f for f in plan.faults if f.kind.device_class != "sensor"]
        self.events: list[SimEvent] = []
        self.gpu_lost = np.zeros(layout.n_gpu, dtype=bool)
        self.gpu_failed = np.zeros(layout.n_gpu, dtype=bool)
        self._fired: set[tuple[str, str]] = set()
        self._schedules: dict[str, tuple] = {}  # held-out modes: intermittent schedules

    def _once(self, f: Fault, tag: str, at_s: float, t_prev: float, t: float) -> bool:
        """True the first step whose interval (t_prev, t] contains at_s."""
        key = (f.fault_id, tag)
        if key in self._fired or not (t_prev < at_s <= t):
            return False
        self._fired.add(key)
        return True

    def _emit(
        self, at_s: float, device: str, kind: str, severity: str, message: str, **attrs
    ) -> None:
        self.events.append(
            SimEvent(int(round(at_s * 1000)), device, kind, severity, message, attrs)
        )

    def drain_events(self) -> list[SimEvent]:
        out, self.events = self.events, []
        return out

    def add(self, faults: list[Fault]) -> None:
        """Faults injected into a running simulation (scenarios, issue 26): they act from
        their onset on, like the plan's own; ids continue the plan's numbering."""
        for f in faults:
            f.fault_id = f"F{len(self.plan.faults):03d}"
            self.plan.faults.append(f)
            (self.sensor_faults if f.kind.device_class == "sensor" else self.physical).append(f)

    def effects(self, sim, t_prev: float, t: float) -> Effects:
        lay = self.layout
        e = Effects(
            np.ones(lay.n_cdu),
            np.ones(lay.n_cdu),
            np.full(lay.n_cdu, 100.0),
            np.zeros(lay.n_cdu),
            np.ones(lay.n_gpu),
            np.ones(lay.n_psu),
            np.zeros(lay.n_psu, dtype=bool),
            np.zeros(lay.n_crah, dtype=bool),
            np.ones(lay.n_crah),
        )
        e.gpu_mem_rth_factor, e.psu_thermal_factor = np.ones(lay.n_gpu), np.ones(lay.n_psu)
        e.psu_extra_loss_w, e.cdu_pump_power_factor = np.zeros(lay.n_psu), np.ones(lay.n_cdu)
        e.crah_slip = np.zeros(lay.n_crah)
        for f in self.physical:
            if t < f.onset_s:
                continue
            getattr(self, f"_{f.type}")(f, sim, e, t_prev, t)
        return e

    # -- one method per fault type ----------------------------------------------------

    def _pump_degradation(self, f, sim, e, t_prev, t):
        p = _progress(t, f.onset_s, f.failure_s)
        if t >= f.failure_s:  # the standby pump takes over, if the CDU has one
            standby = f.params["redundant"] >= 1
            e.cdu_pump_wear[f.index] = 1.0 if standby else 0.0
            if self._once(f, "fail", f.failure_s, t_prev, t):
                self._emit(
                    f.failure_s,
                    f.device_id,
                    "pump_failed",
                    "critical",
                    "secondary pump 1 failed (seized)"
                    + ("; standby pump 2 running" if standby else ""),
                    pump=1,
                )
        else:
            e.cdu_pump_wear[f.index] *= 1.0 - f.params["severity"] * p**1.5

    def _hx_fouling(self, f, sim, e, t_prev, t):
        p = _progress(t, f.onset_s, f.onset_s + f.params["duration"])
        end_factor = 1.0 - min(f.params["severity"], 0.95)
        e.cdu_ua_factor[f.index] /= 1.0 + (1.0 / end_factor - 1.0) * p

    def _tim_degradation(self, f, sim, e, t_prev, t):
        p = _progress(t, f.onset_s, f.onset_s + f.params["duration"])
        e.gpu_rth_factor[f.index] *= 1.0 + f.params["severity"] * p

    def _psu_aging(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.psu_failed[f.index] = True
            if self._once(f, "fail", f.failure_s, t_prev, t):
                self._emit(
                    f.failure_s, f.device_id, "psu_fault", "critical", "PSU failure: output off"
                )
        else:
            p = _progress(t, f.onset_s, f.failure_s)
            e.psu_loss_factor[f.index] *= 1.0 + f.params["severity"] * p * p

    def _crah_fan_failure(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.crah_failed[f.index] = True
            if self._once(f, "fail", f.failure_s, t_prev, t):
                self._emit(
                    f.failure_s, f.device_id, "fan_failed", "critical", "CRAH fan motor failed"
                )
        elif t >= f.onset_s:
            e.crah_fan_power_factor[f.index] *= 1.0 + 0.3 * _progress(t, f.onset_s, f.failure_s)

    def _coolant_leak(self, f, sim, e, t_prev, t):
        level = max(100.0 - f.params["rate"] * (t - f.onset_s) / H, 0.0)
        e.cdu_reservoir_pct[f.index] = min(e.cdu_reservoir_pct[f.index], level)
        detect = f.onset_s + f.params["detect_after"]
        if t >= detect:
            e.cdu_leak_detected[f.index] = 1.0
            if self._once(f, "detect", detect, t_prev, t):
                self._emit(
                    detect,
                    f.device_id,
                    "leak_detected",
                    "critical",
                    "leak detection cable: coolant detected",
                )
        if t >= f.failure_s:
            e.cdu_pump_wear[f.index] *= CAVITATION_HEAD
            if self._once(f, "fail", f.failure_s, t_prev, t):
                self._emit(
                    f.failure_s,
                    f.device_id,
                    "pump_failed",
                    "critical",
                    "secondary pump lost prime: reservoir low",
                    reservoir_pct=level,
                )

    def _gpu_off_bus(self, f, sim, e, t_prev, t):
        self.gpu_lost[f.index] = True
        if self._once(f, "xid79", f.onset_s, t_prev, t):
            self._emit(
                f.onset_s,
                f.device_id,
                "xid",
                "critical",
                "XID 79: GPU has fallen off the bus",
                xid=79,
            )
            self._emit(
                f.onset_s,
                f.device_id,
                "device_lost",
                "critical",
                "NVML: GPU is lost (NVML_ERROR_GPU_IS_LOST)",
            )

    def _ecc_storm(self, f, sim, e, t_prev, t):
        i, span = f.index, f.failure_s - f.onset_s
        lo = max(t_prev, f.onset_s)
        if t < f.failure_s and t > lo:
            p = _progress(0.5 * (lo + t), f.onset_s, f.failure_s)
            rate_h = ECC_BASE_PER_H * np.exp(ECC_GROWTH * p)
            sim.gpu_ecc_corrected[i] += self.rng.poisson(rate_h * (t - lo) / H)
            x92 = f.onset_s + span * np.log(ECC_XID92_PER_H / ECC_BASE_PER_H) / ECC_GROWTH
            if self._once(f, "xid92", x92, t_prev, t):
                self._emit(
                    x92,
                    f.device_id,
                    "xid",
                    "warning",
                    "XID 92: high single-bit ECC error rate",
                    xid=92,
                )
        for k, at in enumerate(ECC_REMAP_AT):
            at_s = f.onset_s + at * span
            if self._once(f, f"remap{k}", at_s, t_prev, t):
                sim.gpu_remapped_correctable[i] += 1
                self._emit(
                    at_s,
                    f.device_id,
                    "xid",
                    "warning",
                    "XID 63: row remapping event recorded",
                    xid=63,
                )
        at_s = f.onset_s + ECC_CONTAINED_AT * span
        if self._once(f, "xid94", at_s, t_prev, t):
            sim.gpu_ecc_uncorrected[i] += 1
            self._emit(at_s, f.device_id, "xid", "critical", "XID 94: contained ECC error", xid=94)
        if self._once(f, "fail", f.failure_s, t_prev, t):
            sim.gpu_ecc_uncorrected[i] += 1
            sim.gpu_remapped_uncorrectable[i] += 1
            for xid, msg in (
                (48, "double-bit ECC error"),
                (95, "uncontained ECC error"),
                (64, "row remapping failure"),
            ):
                self._emit(
                    f.failure_s, f.device_id, "xid", "critical", f"XID {xid}: {msg}", xid=xid
                )
        if t >= f.failure_s:
            self.gpu_failed[i] = True

    def _chiller_low_refrigerant(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.chillers_tripped = max(e.chillers_tripped, 1)
            if self._once(f, "fail", f.failure_s, t_prev, t):
                self._emit(
                    f.failure_s,
                    f.device_id,
                    "health_changed",
                    "critical",
                    "chiller 1 tripped: low refrigerant (suction) pressure",
                    chiller=1,
                )
        else:
            p = _progress(t, f.onset_s, f.failure_s)
            e.refrigerant_severity = max(e.refrigerant_severity, f.params["severity"] * p)

    def _driver_reload(self, f, sim, e, t_prev, t):
        if self._once(f, "reload", f.onset_s, t_prev, t):
            gpus = np.flatnonzero(self.layout.gpu_node == f.index)
            sim.gpu_energy_mj[gpus] = 0.0
            self._emit(
                f.onset_s,
                f.device_id,
                "health_changed",
                "info",
                "NVIDIA driver reloaded; energy counters restarted",
            )

    def _ups_battery_fade(self, f, sim, e, t_prev, t):
        p = _progress(t, f.onset_s, f.onset_s + f.params["duration"])
        e.ups.soh_factor *= 1.0 - min(f.params["severity"], 0.99) * p

    def _ups_battery_test_failed(self, f, sim, e, t_prev, t):
        e.ups.test_failed = True

    def _utility_dip(self, f, sim, e, t_prev, t):
        if t < f.onset_s + f.params["duration"]:
            e.ups.input_voltage_factor = min(
                e.ups.input_voltage_factor, 1.0 - min(f.params["depth"], 1.0)
            )

    def _ups_battery_overtemp(self, f, sim, e, t_prev, t):
        p = _progress(t, f.onset_s, f.onset_s + f.params["duration"])
        e.ups.room_rise_k += f.params["severity"] * p

    # -- held-out failure modes (issue 21; simulator/faults.py HELDOUT_CATALOG) ---------

    def _schedule(self, f: Fault) -> tuple:
        """The fault's intermittent schedule, computed once from its parameters."""
        if f.fault_id not in self._schedules:
            assert f.failure_s is not None
            rng = _pattern_rng(f.params, 3)
            if f.type == "gpu_gsp_hang":
                r0 = f.params["rate"]
                times = intermittent_times(
                    f.onset_s, f.failure_s, r0, r0 * np.exp(f.params["growth"]), f.params
                )
                pick = rng.choice(len(GSP_XIDS), len(times), p=[x[1] for x in GSP_XIDS])
                self._schedules[f.fault_id] = (times, pick)
            elif f.type == "hbm_thermal_degradation":
                self._schedules[f.fault_id] = ()
            elif f.type == "seal_leak_intermittent":
                self._schedules[f.fault_id] = (seal_leak_episodes(f.onset_s, f.params)[0],)
            else:  # power spikes: start, duration 1-3 min, relative size 0.2-1.0
                times = intermittent_times(f.onset_s, f.failure_s, *SPIKE_RATE_PH[f.type], f.params)
                dur = rng.uniform(60.0, 180.0, len(times))
                size = rng.uniform(0.2, 1.0, len(times))
                self._schedules[f.fault_id] = (times, dur, size)
            self._schedules[f.fault_id] += (_pattern_rng(f.params, 4),)  # ECC draws
        return self._schedules[f.fault_id]

    def _spike(self, f: Fault, t: float) -> float:
        """Relative size of the power spike under way at t (0 when none)."""
        times, dur, size, _ = self._schedule(f)
        on = (times <= t) & (t < times + dur)
        return float(size[on].max()) if on.any() else 0.0

    def _fail_once(self, f: Fault, t_prev: float, t: float, kind: str, message: str) -> None:
        assert f.failure_s is not None
        if self._once(f, "fail", f.failure_s, t_prev, t):
            self._emit(f.failure_s, f.device_id, kind, "critical", message)

    def _gpu_gsp_hang(self, f, sim, e, t_prev, t):
        times, pick, _ = self._schedule(f)
        for at_s, k in zip(times, pick, strict=True):
            if t_prev < at_s <= t:
                code, _, what = GSP_XIDS[int(k)]
                self._emit(at_s, f.device_id, "xid", "critical", f"XID {code}: {what}", xid=code)
        if t >= f.failure_s:
            self.gpu_lost[f.index] = True
            if self._once(f, "xid79", f.failure_s, t_prev, t):
                self._emit(
                    f.failure_s,
                    f.device_id,
                    "xid",
                    "critical",
                    "XID 79: GPU has fallen off the bus",
                    xid=79,
                )
                self._emit(
                    f.failure_s,
                    f.device_id,
                    "device_lost",
                    "critical",
                    "NVML: GPU is lost (NVML_ERROR_GPU_IS_LOST)",
                )

    def _hbm_thermal_degradation(self, f, sim, e, t_prev, t):
        i = f.index
        if t >= f.failure_s:
            self.gpu_failed[i] = True
            if self._once(f, "fail", f.failure_s, t_prev, t):
                sim.gpu_ecc_uncorrected[i] += 1
                for xid, msg in ((48, "double-bit ECC error"), (95, "uncontained ECC error")):
                    self._emit(
                        f.failure_s, f.device_id, "xid", "critical", f"XID {xid}: {msg}", xid=xid
                    )
            return
        p = _progress(t, f.onset_s, f.failure_s)
        e.gpu_mem_rth_factor[i] *= 1.0 + f.params["severity"] * p
        lo = max(t_prev, f.onset_s)
        if t > lo:  # corrected errors while the HBM is hot (last step's temperature)
            hot_k = float(sim.gpu.mem_temp_c[i]) - HBM_ECC_REF_C
            rate_h = HBM_ECC_RATE_PH * 2.0 ** (hot_k / HBM_ECC_DOUBLING_K)
            sim.gpu_ecc_corrected[i] += self._schedule(f)[-1].poisson(rate_h * (t - lo) / H)

    def _psu_fan_failure(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.psu_failed[f.index] = True
            self._fail_once(
                f, t_prev, t, "psu_fault", "PSU over-temperature protection: output off"
            )
        else:
            p = _progress(t, f.onset_s, f.failure_s)
            e.psu_thermal_factor[f.index] *= 1.0 + f.params["severity"] * p**1.5
            e.psu_loss_factor[f.index] *= 1.0 + PSU_HOT_LOSS * p * p

    def _psu_capacitor_wear(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.psu_failed[f.index] = True
            self._fail_once(f, t_prev, t, "psu_fault", "PSU input capacitor failed: output off")
        else:
            p = _progress(t, f.onset_s, f.failure_s)
            e.psu_extra_loss_w[f.index] += f.params["severity"] * p

    def _pump_bearing_wear(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:  # seized; the standby pump (healthy) takes over
            self._fail_once(
                f,
                t_prev,
                t,
                "pump_failed",
                "secondary pump 1 failed (bearing seized); standby pump 2 running",
            )
            return
        p = _progress(t, f.onset_s, f.failure_s)
        sev = f.params["severity"]
        e.cdu_pump_power_factor[f.index] *= 1.0 + sev * p * p + 0.5 * sev * self._spike(f, t)

    def _seal_leak_intermittent(self, f, sim, e, t_prev, t):
        episodes = self._schedule(f)[0]
        wept_s = float(np.clip(t - episodes[:, 0], 0.0, episodes[:, 1] - episodes[:, 0]).sum())
        level = max(100.0 - f.params["rate"] * wept_s / H, 30.0 if t < f.failure_s else 0.0)
        e.cdu_reservoir_pct[f.index] = min(e.cdu_reservoir_pct[f.index], level)
        if t >= f.failure_s:
            e.cdu_pump_wear[f.index] *= CAVITATION_HEAD
            self._fail_once(f, t_prev, t, "pump_failed", "secondary pump lost prime: reservoir low")

    def _crah_belt_slip(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.crah_failed[f.index] = True
            self._fail_once(f, t_prev, t, "fan_failed", "CRAH fan belt broken")
        else:
            slip = f.params["severity"] * _progress(t, f.onset_s, f.failure_s)
            e.crah_slip[f.index] = max(e.crah_slip[f.index], slip)

    def _crah_winding_fault(self, f, sim, e, t_prev, t):
        if t >= f.failure_s:
            e.crah_failed[f.index] = True
            self._fail_once(f, t_prev, t, "fan_failed", "CRAH fan motor failed (winding short)")
        else:
            p = _progress(t, f.onset_s, f.failure_s)
            spike = f.params["severity"] * self._spike(f, t)
            e.crah_fan_power_factor[f.index] *= (1.0 + WINDING_LOSS * p) * (1.0 + spike)
