"""GPU power, clocks, die temperature and the throttle reasons NVML would report.

Power:  P = P_static(T) + D * f^2, with D = (TDP - P_idle) * util the dynamic demand at
full clock and f the clock fraction. Static power rises 2 %/K with die temperature
(leakage), so a hot GPU near full utilization asks for more than its power limit and the
power cap engages, as it does on real H100s.
Clocks: f = min(f_power_cap, f_thermal, f_hw): the power cap solves P = limit; the
software thermal controller settles f where the equilibrium temperature is 1 K above the
slowdown temperature (an equilibrium target, so it is stable at any step size); the
hardware slowdown quarters the clock above the HW limit; above the shutdown temperature
the GPU stops working until it has cooled below 75 degC.
Temperature: first-order lag (thermal inertia of die, lid and cold plate) towards
T_coolant + P * R_th, R_th = coolant-to-die resistance (cold plate + TIM).
"""

from __future__ import annotations

import numpy as np

# NVML clock-event (throttle) reason bits, nvml.h / pynvml nvmlClocksEventReason*
NVML_GPU_IDLE = 0x1
NVML_SW_POWER_CAP = 0x4
NVML_HW_SLOWDOWN = 0x8
NVML_SW_THERMAL_SLOWDOWN = 0x20
NVML_HW_THERMAL_SLOWDOWN = 0x40

MAX_SM_CLOCK_MHZ = 1980.0  # H100 SXM5 max boost
IDLE_SM_CLOCK_MHZ = 345.0
R_TH_K_PER_W = 0.045  # coolant to die: ~32 K above coolant at 700 W (DLC H100s read 60s degC)
R_MEM_K_PER_W = 0.022
TIME_CONSTANT_S = 20.0
DEMAND_HEADROOM = 1.1  # dense kernels would draw ~10 % above TDP: the power cap binds
LEAKAGE_PER_K = 0.02  # static power +2 %/K above 50 degC
SW_SLOWDOWN_C = 85.0  # GPU max operating temperature: software thermal slowdown
HW_SLOWDOWN_C = 90.0  # hardware slowdown
HW_SLOWDOWN_CLOCK = 0.25
SHUTDOWN_C = 95.0  # thermal shutdown (NVML_TEMPERATURE_THRESHOLD_SHUTDOWN-like)
RESUME_C = 75.0
THERMAL_HOLD_C = SW_SLOWDOWN_C + 1.0
THERMAL_CONTROL_TAU_S = 5.0
IDLE_UTIL = 0.05


class GpuModel:
    """State and step of every GPU at once."""

    def __init__(
        self,
        tdp_w: np.ndarray,
        idle_w: np.ndarray,
        coolant_c: np.ndarray,
        energy_mj: np.ndarray,
        demand_factor: np.ndarray | None = None,
    ) -> None:
        n = len(tdp_w)
        self.tdp_w, self.idle_w = tdp_w, idle_w
        # part-to-part spread of dynamic power at the same work (silicon, voltage bins)
        self.demand_factor = np.ones(n) if demand_factor is None else demand_factor
        self.power_limit_w = tdp_w.copy()
        self.temp_c = coolant_c + idle_w * R_TH_K_PER_W
        self.mem_temp_c = coolant_c + 8.0 + idle_w * R_MEM_K_PER_W
        self.f_thermal = np.ones(n)
        self.shutdown = np.zeros(n, dtype=bool)
        self.energy_mj = energy_mj
        self.power_w = idle_w.copy()
        self.util = np.zeros(n)
        self.clock_fraction = np.ones(n)
        self.sm_clock_mhz = np.full(n, IDLE_SM_CLOCK_MHZ)
        self.throttle_reasons = np.full(n, NVML_GPU_IDLE, dtype=np.int64)

    def step(
        self,
        dt_s: float,
        util: np.ndarray,
        coolant_c: np.ndarray,
        rth_factor: np.ndarray,
        hung: np.ndarray,
        mem_rth_factor: np.ndarray | None = None,
    ) -> None:
        """Advance by dt_s. `util` is the work offered; `hung` GPUs (off the bus) do none."""
        self.shutdown = (self.shutdown | (self.temp_c > SHUTDOWN_C)) & (self.temp_c > RESUME_C)
        off = hung | self.shutdown
        util = np.where(off, 0.0, util)
        t = self.temp_c
        static_w = self.idle_w * np.clip(1.0 + LEAKAGE_PER_K * (t - 50.0), 0.8, 2.0)
        demand_w = (DEMAND_HEADROOM * self.tdp_w - self.idle_w) * util * self.demand_factor
        head = np.maximum(self.power_limit_w - static_w, 0.0)
        has_demand = demand_w > 1e-9
        f_cap = np.sqrt(np.divide(head, demand_w, out=np.ones_like(head), where=has_demand))
        f_cap = np.clip(f_cap, 0.3, 1.0)
        # clock at which the steady-state temperature equals the hold temperature
        r = R_TH_K_PER_W * rth_factor
        room_w = (THERMAL_HOLD_C - coolant_c) / r - static_w
        target = np.sqrt(
            np.clip(
                np.divide(room_w, demand_w, out=np.ones_like(room_w), where=has_demand), 0.0, 1.0
            )
        )
        target = np.clip(target, 0.3, 1.0)
        self.f_thermal += (target - self.f_thermal) * (1.0 - np.exp(-dt_s / THERMAL_CONTROL_TAU_S))
        hw = t > HW_SLOWDOWN_C
        f = np.minimum(np.minimum(f_cap, self.f_thermal), np.where(hw, HW_SLOWDOWN_CLOCK, 1.0))
        power = static_w + demand_w * f * f
        power = np.where(off, 0.5 * self.idle_w, power)
        busy = util >= IDLE_UTIL
        self.util, self.clock_fraction, self.power_w = util, f, power
        self.sm_clock_mhz = np.where(busy, MAX_SM_CLOCK_MHZ * f, IDLE_SM_CLOCK_MHZ)
        bits = np.where(busy, 0, NVML_GPU_IDLE)
        bits = bits | np.where(busy & (f_cap < 0.999), NVML_SW_POWER_CAP, 0)
        bits = bits | np.where(self.f_thermal < 0.999, NVML_SW_THERMAL_SLOWDOWN, 0)
        bits = bits | np.where(hw, NVML_HW_SLOWDOWN | NVML_HW_THERMAL_SLOWDOWN, 0)
        self.throttle_reasons = bits.astype(np.int64)
        a = 1.0 - np.exp(-dt_s / TIME_CONSTANT_S)
        self.temp_c = t + (coolant_c + power * r - t) * a
        mem_target = coolant_c + 8.0 + power * R_MEM_K_PER_W
        if mem_rth_factor is not None:  # held-out HBM fault (issue 21): a worse contact
            mem_target = mem_target + power * R_MEM_K_PER_W * (mem_rth_factor - 1.0)
        self.mem_temp_c = self.mem_temp_c + (mem_target - self.mem_temp_c) * a
        self.energy_mj = self.energy_mj + power * dt_s * 1000.0
