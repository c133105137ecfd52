"""Twin thresholds and rules in one place (documented in docs/twin.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TwinConfig:
    # A reading older than `stale_intervals` telemetry intervals is stale.
    telemetry_interval_s: float = 10.0
    stale_intervals: float = 3.0
    # Energy integration: power samples further apart than this are a gap (not integrated);
    # None means the stale threshold. Interval figures below `min_coverage` are unknown.
    max_gap_s: float | None = None
    min_coverage: float = 0.9
    # Finest cell used when an interval must be split around gaps.
    energy_resolution_s: float = 60.0
    # Heat balance: |residual| above this (in % of the IT power cooled) for
    # `heat_balance_persist_ticks` consecutive ticks raises the flag.
    heat_balance_threshold_pct: float = 5.0
    heat_balance_persist_ticks: int = 3
    trend_window_ticks: int = 60
    # Rollups: tick-level rows are kept this long; 1-minute rows are kept until deleted.
    tick_retention_h: float = 48.0
    # How often the server's background loop ticks; API reads reuse a tick this fresh.
    tick_interval_s: float = 10.0

    @property
    def stale_after_s(self) -> float:
        return self.stale_intervals * self.telemetry_interval_s

    @property
    def gap_s(self) -> float:
        return self.max_gap_s if self.max_gap_s is not None else self.stale_after_s

    @property
    def rollup_gap_s(self) -> float:
        """Gap limit for integrating twin rollup series: ticks may be up to three tick
        intervals apart, and minute means (used past tick retention) one minute."""
        return max(self.gap_s, 3 * self.tick_interval_s, 60.0)

    @classmethod
    def with_stale_after(
        cls, stale_after_s: float, telemetry_interval_s: float = 10.0, **kw: Any
    ) -> TwinConfig:
        """Config whose stale threshold is given in seconds rather than intervals (the
        server's `stale_after_s` setting); `kw` are the other TwinConfig fields."""
        return cls(
            telemetry_interval_s=telemetry_interval_s,
            stale_intervals=stale_after_s / telemetry_interval_s,
            **kw,
        )
