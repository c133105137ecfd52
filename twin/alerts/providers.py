"""Providers backed by the twin core (twin.state.Twin): heat-balance residual per cooling
loop from the twin's last tick, and energy-based site PUE over an interval. Anomaly
scores and failure risk come from the services the server keeps current."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from twin.alerts.context import Providers
from twin.anomaly.service import anomaly_provider, incidents_provider

if TYPE_CHECKING:
    from twin.anomaly.service import AnomalyService
    from twin.failure.service import FailureRiskService
    from twin.state import Twin


def twin_providers(
    twin: Twin,
    max_tick_age_s: float | None = None,
    failure_risk: FailureRiskService | None = None,
    anomaly: AnomalyService | None = None,
) -> Providers:
    """A tick older than `max_tick_age_s` (default three tick intervals) gives no
    heat-balance values, so its alerts are left as they are. `failure_risk` and `anomaly`
    are the server's services (None: no risk or anomaly rules)."""
    max_age_s = max_tick_age_s or 3 * twin.config.tick_interval_s

    def heat_balance_residual(now: datetime) -> Mapping[str, float]:
        last = twin.last
        if last is None:
            return {}
        now_ms = now.replace(tzinfo=UTC).timestamp() * 1000
        if now_ms - last.time_ms > max_age_s * 1000:
            return {}
        hb = last.heat_balance
        return {
            i: float(pct) / 100.0
            for i, level, pct, stale in zip(
                hb.ids, hb.levels, hb.residual_pct, hb.stale_inputs, strict=True
            )
            if level == "cdu" and math.isfinite(pct) and not stale
        }

    lag = timedelta(seconds=2 * twin.config.telemetry_interval_s)

    def pue_interval(start: datetime, end: datetime) -> float | None:
        # both intervals shifted back a little, so the newest readings are in
        return twin.pue_interval("site", start - lag, end - lag).overall.value

    def failure_risk_now(now: datetime) -> Mapping[str, float]:
        # the table its own thread rescores once per tick; empty without an approved model
        assert failure_risk is not None
        return {d: float(r["risk"]) for d, r in failure_risk.by_device.items()}

    return Providers(
        heat_balance_residual=heat_balance_residual,
        pue_interval=pue_interval,
        anomaly_score=anomaly_provider(anomaly) if anomaly is not None else None,
        anomaly_incidents=incidents_provider(anomaly) if anomaly is not None else None,
        failure_risk=failure_risk_now if failure_risk is not None else None,
    )
