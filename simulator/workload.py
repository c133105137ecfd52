"""GPU utilization over time: synchronized training jobs, diurnal inference, idle racks.

Racks are cut into contiguous blocks (jobs are placed on neighbouring racks for network
locality); blocks, taken in a seeded random order, become training job groups, inference
pools or idle racks until each role has its share of the mix. Training schedules are a
stateless hash of (seed, group, slot), so the utilization at any instant is the same
whatever the step size or start time.
Within a job every GPU of every rack follows the same signal (data-parallel training is
bulk-synchronous): a start-up phase, steady compute (iteration-level swings average out
in 1-10 s power readings; a slow +-1 % ripple remains), and periodic checkpoint dips.
Inference follows the local time of day with per-rack scale and AR(1) noise; weekends
are lighter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.layout import SiteLayout

ROLE_TRAINING, ROLE_INFERENCE, ROLE_IDLE = 0, 1, 2
DAY_S = 86400.0


@dataclass(frozen=True)
class WorkloadMix:
    training: float = 0.6
    inference: float = 0.3
    idle: float = 0.1
    job_racks_min: int = 4
    job_racks_max: int = 16


def _hash01(*keys: np.ndarray | int) -> np.ndarray:
    """splitmix64 over the keys, mapped to [0, 1). Vectorized and platform independent."""
    with np.errstate(over="ignore"):
        h = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, dtype=np.uint64)
        for k in keys:
            h = h ^ np.asarray(k).astype(np.uint64)
            h = h + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Workload:
    def __init__(
        self,
        layout: SiteLayout,
        seed: int = 0,
        mix: WorkloadMix | None = None,
        utc_offset_h: float = 0.0,
        constant_util: float | None = None,
    ) -> None:
        self.layout = lay = layout
        self.seed = seed
        self.mix = mix = mix or WorkloadMix()
        self.constant_util = constant_util
        self.utc_offset_s = utc_offset_h * 3600.0
        rng = np.random.default_rng([seed, 0x30B])
        role = np.full(lay.n_rack, ROLE_IDLE, dtype=int)
        group = np.full(lay.n_rack, -1, dtype=int)
        blocks, start = [], 0
        while start < lay.n_rack:
            size = int(rng.integers(mix.job_racks_min, mix.job_racks_max + 1))
            blocks.append((start, min(start + size, lay.n_rack)))
            start += size
        # blocks in random order take roles until each role has its share of the racks
        total = mix.training + mix.inference + mix.idle
        quota = np.cumsum([mix.training, mix.inference]) / total * lay.n_rack
        assigned, n_groups = 0, 0
        for b in rng.permutation(len(blocks)):
            lo, hi = blocks[b]
            r = (
                ROLE_TRAINING
                if assigned < quota[0]
                else (ROLE_INFERENCE if assigned < quota[1] else ROLE_IDLE)
            )
            role[lo:hi] = r
            if r == ROLE_TRAINING:
                group[lo:hi] = n_groups
                n_groups += 1
            assigned += hi - lo
        self.rack_role, self.rack_group, self.n_groups = role, group, n_groups
        # which racks train now; writable (a test or a scenario can move a job). A rack
        # made to train outside any job group runs a job that never ends; a training rack
        # made not to train serves inference.
        self.is_training = role == ROLE_TRAINING
        self.group_slot_s = rng.uniform(6.0, 20.0, n_groups) * 3600.0
        self.group_offset_s = rng.uniform(0.0, 1.0, n_groups) * self.group_slot_s
        self.group_ckpt_s = rng.uniform(30.0, 60.0, n_groups) * 60.0
        self.group_phase = rng.uniform(0, 2 * np.pi, n_groups)
        self.rack_scale = rng.uniform(0.6, 1.0, lay.n_rack)
        self.rack_ar = np.zeros(lay.n_rack)
        # issue 27 (whatif): a fixed utilisation per rack where finite (a scenario's step)
        self.util_override = np.full(lay.n_rack, np.nan)
        self.gpu_noise_sigma = np.where(role == ROLE_INFERENCE, 0.02, 0.01)[lay.gpu_rack]

    # -- per-rack signals ---------------------------------------------------------------

    def training_util(self, t_s: float) -> np.ndarray:
        """Utilization of each training group at time t_s (0 between jobs)."""
        g = np.arange(self.n_groups)
        slot_s = self.group_slot_s
        k = np.floor((t_s + self.group_offset_s) / slot_s)
        slot_start = k * slot_s - self.group_offset_s
        u_idle = _hash01(self.seed, g, k.astype(np.int64), 1)
        u_gap = _hash01(self.seed, g, k.astype(np.int64), 2)
        job_start = slot_start + (0.01 + 0.12 * u_gap) * slot_s
        elapsed = t_s - job_start
        ripple = 0.90 + 0.01 * np.sin(2 * np.pi * t_s / 300.0 + self.group_phase)
        in_ckpt = (elapsed % self.group_ckpt_s) > self.group_ckpt_s - 120.0
        util = np.where(elapsed < 300.0, 0.35, np.where(in_ckpt, 0.10, ripple))
        return np.where((u_idle < 0.1) | (elapsed < 0), 0.0, util)

    def inference_util(self, t_s: float, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        local = t_s + self.utc_offset_s
        hour = (local % DAY_S) / 3600.0
        weekday = int(local // DAY_S + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        daily = 0.5 + 0.5 * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
        level = (0.18 + 0.62 * daily) * (0.8 if weekday >= 5 else 1.0)
        rho = np.exp(-max(dt_s, 0.0) / 1800.0)
        self.rack_ar = rho * self.rack_ar + np.sqrt(1 - rho**2) * rng.normal(
            0.0, 0.04, self.layout.n_rack
        )
        return self.rack_scale * level + self.rack_ar

    def rack_util(self, t_s: float, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        if self.constant_util is not None:
            return np.full(self.layout.n_rack, self.constant_util)
        inference = self.inference_util(t_s, dt_s, rng)
        training = self.training_util(t_s)
        train = self.is_training
        serve = ~train & ((self.rack_role == ROLE_INFERENCE) | (self.rack_role == ROLE_TRAINING))
        util = np.where(serve, inference, 0.0)
        grouped = train & (self.rack_group >= 0)
        util[grouped] = training[self.rack_group[grouped]]
        steady = 0.90 + 0.01 * np.sin(2 * np.pi * t_s / 300.0)
        util[train & (self.rack_group < 0)] = steady
        fixed = np.isfinite(self.util_override)
        if fixed.any():
            util = np.where(fixed, self.util_override, util)
        return np.clip(util, 0.0, 1.0)

    def gpu_util(self, t_s: float, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        """Per-GPU utilization (fraction): the rack's signal plus small per-GPU jitter."""
        rack = self.rack_util(t_s, dt_s, rng)[self.layout.gpu_rack]
        noise = rng.normal(0.0, 1.0, self.layout.n_gpu) * self.gpu_noise_sigma
        if self.constant_util is not None:
            noise *= 0.0
        return np.clip(rack + np.where(rack > 0, noise, 0.0), 0.0, 1.0)
