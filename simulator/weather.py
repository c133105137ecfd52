"""Outdoor dry-bulb and wet-bulb temperature over days and seasons, seeded and stateless.

Dry-bulb = annual mean + seasonal cosine (coldest around 20 January in the northern
hemisphere) + diurnal cosine (warmest at 15:00 local) + multi-day "weather systems"
(a sum of three sinusoids with seeded phases, periods 2.7-6.9 days). Relative humidity
moves against the diurnal temperature swing. Wet-bulb follows from dry-bulb and RH by
Stull's (2011) empirical formula. A pure function of time: any step size, any start time,
the same seed gives the same weather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86400.0
YEAR_S = 365.25 * DAY_S


@dataclass(frozen=True)
class Climate:
    name: str
    annual_mean_c: float
    seasonal_amplitude_k: float  # half the summer-winter difference of daily means
    diurnal_amplitude_k: float  # half the day-night swing
    synoptic_amplitude_k: float  # weather systems over days
    rh_mean_pct: float
    rh_diurnal_pct: float


CLIMATES: dict[str, Climate] = {
    # roughly Frankfurt, Singapore, Phoenix, Stockholm
    "temperate": Climate("temperate", 10.5, 9.5, 4.5, 3.5, 72.0, 14.0),
    "hot-humid": Climate("hot-humid", 27.5, 1.0, 3.5, 1.0, 80.0, 12.0),
    "hot-dry": Climate("hot-dry", 24.0, 10.0, 7.5, 2.0, 30.0, 12.0),
    "cold": Climate("cold", 6.5, 10.0, 4.0, 4.5, 78.0, 10.0),
}


def wet_bulb_c(drybulb_c: np.ndarray, rh_pct: np.ndarray) -> np.ndarray:
    """Stull (2011), J. Appl. Meteor. Climatol. 50, 2267: wet-bulb at sea level from
    dry-bulb and relative humidity; within ~0.3 K for RH 5-99 %, -20..50 degC."""
    t, rh = np.asarray(drybulb_c, float), np.clip(np.asarray(rh_pct, float), 5.0, 99.0)
    tw = (
        t * np.arctan(0.151977 * np.sqrt(rh + 8.313659))
        + np.arctan(t + rh)
        - np.arctan(rh - 1.676331)
        + 0.00391838 * rh**1.5 * np.arctan(0.023101 * rh)
        - 4.686035
    )
    return np.minimum(tw, t)


class Weather:
    def __init__(
        self, climate: Climate | str = "temperate", seed: int = 0, utc_offset_h: float = 0.0
    ) -> None:
        self.climate = CLIMATES[climate] if isinstance(climate, str) else climate
        rng = np.random.default_rng([seed, 0x57EA])
        self.periods_s = np.array([2.7, 4.3, 6.9]) * DAY_S
        amps = rng.uniform(0.6, 1.0, 3)
        self.synoptic_amps = amps / np.sqrt((amps**2).sum() / 2.0)  # unit RMS
        self.synoptic_phase = rng.uniform(0, 2 * np.pi, 3)
        self.rh_phase = rng.uniform(0, 2 * np.pi, 3)
        self.utc_offset_s = utc_offset_h * 3600.0

    def _local_hour(self, t_s: np.ndarray) -> np.ndarray:
        return ((t_s + self.utc_offset_s) % DAY_S) / 3600.0

    def at(self, t_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dry-bulb degC, relative humidity %, wet-bulb degC) at Unix time(s) t_s."""
        c = self.climate
        t = np.asarray(t_s, dtype=float)
        doy = (t % YEAR_S) / DAY_S
        hour = self._local_hour(t)
        seasonal = -c.seasonal_amplitude_k * np.cos(2 * np.pi * (doy - 20.0) / 365.25)
        diurnal = c.diurnal_amplitude_k * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
        arg = 2 * np.pi * t[..., None] / self.periods_s
        synoptic = (self.synoptic_amps * np.sin(arg + self.synoptic_phase)).sum(-1) / np.sqrt(3)
        drybulb = c.annual_mean_c + seasonal + diurnal + c.synoptic_amplitude_k * synoptic
        rh_syn = (np.sin(arg + self.rh_phase)).sum(-1) / np.sqrt(3)
        rh = np.clip(
            c.rh_mean_pct
            - c.rh_diurnal_pct * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
            + 8.0 * rh_syn,
            8.0,
            100.0,
        )
        return drybulb, rh, wet_bulb_c(drybulb, rh)
