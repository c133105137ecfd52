"""Explanations: the features that push a device's risk up, in operator words.

Method (occlusion, a one-feature-at-a-time SHAP-like estimate): for each feature, set it
to its healthy baseline (the median over devices that never failed in training) and
re-score; the drop in the calibrated risk is that feature's contribution.
Features at their baseline contribute nothing, so a healthy device gets no reasons. All
rows and features are scored in one batched call per class (calibrated risk).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from domain.xids import FAILURE_XID_CODES, XIDS
from twin.failure.model import FailureModel, _x

# feature -> (phrase with {v} = value and {b} = healthy baseline)
PHRASES: dict[str, str] = {
    "temp_c": "GPU at {v:.0f} °C (healthy {b:.0f} °C)",
    "temp_dev_c": "GPU {v:+.1f} K vs its rack peers",
    "temp_slope_kph": "GPU temperature trending {v:+.1f} K/h",
    "power_w": "GPU power {v:.0f} W (healthy {b:.0f} W)",
    "throttle_frac_1h": "thermally throttled {v:.0%} of the last hour",
    "ecc_corr_1h": "{v:.0f} corrected ECC errors in 1 h",
    "ecc_corr_rate_15m_ph": "corrected ECC errors rising: {v:.0f}/h over 15 min",
    "ecc_accel": "ECC error rate accelerating (x{e:.1f} vs its 6 h average)",
    "ecc_uncorr_6h": "{v:.0f} uncorrected ECC errors in 6 h",
    "remap_corr_6h": "{v:.0f} rows remapped in 6 h",
    "remap_uncorr_6h": "{v:.0f} uncorrectable remapped rows in 6 h",
    "row_remap_pending": "row remap pending: a remapped row waits for the next GPU reset",
    "row_remap_failure_6h": "row remap failed: no spare row left, replace the GPU",
    "psu_loss_ratio": "PSU losses {v:.1f}x those of the rack's other PSUs",
    "psu_loss_slope_30m_ph": "PSU losses climbing fast: {v:+.2f}x/h over 30 min",
    "psu_loss_slope_1h_ph": "PSU losses rising {v:+.2f}x/h over 1 h",
    "psu_loss_slope_2h_ph": "PSU losses rising {v:+.2f}x/h over 2 h",
    "psu_loss_rise_age_h": "PSU losses have been rising for about {v:.1f} h",
    "psu_loss_double_h": "at this rate PSU losses double in {v:.1f} h",
    "speed_per_flow": "pump speed per flow {v:.0f} (healthy {b:.0f}): the pump works harder "
    "for the same flow",
    "speed_per_flow_drift_6h": "pump speed per flow up {v:+.1f} in 6 h",
    "speed_per_flow_slope_ph": "pump speed per flow rising {v:+.1f}/h",
    "pump_w_per_lpm": "pump power per flow {v:.2f} W/(L/min) (healthy {b:.2f})",
    "flow_lpm": "coolant flow {v:.0f} L/min (healthy {b:.0f})",
    "reservoir_pct": "coolant reservoir at {v:.0f} %",
    "reservoir_slope_pph": "coolant reservoir falling {v:+.1f} %/h",
    "hours_to_reservoir_30": "reservoir reaches 30 % in {v:.1f} h at this rate",
    "leak_detected": "leak sensor tripped",
    "fan_power_ratio": "fan power per speed³ {v:.0f} (healthy {b:.0f}): bearing drag",
    "fan_power_ratio_dev": "fan draws {v:+.0%} more than its hall peers at the same speed",
    "fan_power_ratio_slope_ph": "fan power per speed³ rising {v:+.0f}/h",
    "fan_power_ratio_drift_6h": "fan power per speed³ up {v:+.0f} in 6 h",
    "fan_power_ratio_rise_pct": "fan power per speed³ {v:+.1f} % above its 6-h low: "
    "bearing drag building",
    "fan_power_ratio_rise_pct_30m": "fan power per speed³ {v:+.1f} % in 30 min",
    "fan_speed_pct": "fan at {v:.0f} % speed",
    "return_air_c": "return air {v:.1f} °C",
    "stale_reads": "no reading for {v:.0f} read intervals",
    "read_ratio_15m": "only {v:.0%} of expected readings in 15 min",
    "metrics_missing": "{v:.0f} metrics stopped reporting",
    "collector_errors_1h": "{v:.0f} collector errors in 1 h",
    **{
        f"xid{x}_2h": "{v:.0f} XID " + str(x) + " in 2 h (" + m + ")"
        for x in FAILURE_XID_CODES
        for m in (XIDS[x].meaning,)
    },
}


def phrase(feature: str, value: float, baseline: float) -> str:
    tmpl = PHRASES.get(feature, feature + " = {v:.3g} (healthy {b:.3g})")
    try:
        return tmpl.format(v=value, b=baseline, e=float(np.exp(min(value, 50.0))))
    except (ValueError, TypeError):
        return f"{feature} = {value}"


def explain(
    model: FailureModel, rows: pl.DataFrame, top: int = 3, min_contribution: float = 0.01
) -> list[list[dict]]:
    """Per row, up to `top` reasons: {feature, value, baseline, contribution, text}, largest
    contribution first. Lost devices get the telemetry-loss reason first."""
    out: list[list[dict]] = [[] for _ in range(rows.height)]
    cls_col = rows["device_class"].to_numpy()
    for cls, m in model.classes.items():
        idx = np.flatnonzero(cls_col == cls)
        if idx.size == 0 or m.clf is None:
            continue
        x = _x(rows[idx], m.features)
        base = m.risk(x)
        n, f = x.shape
        # one batch: row i with feature j set to its baseline, for all (i, j)
        xs = np.repeat(x[None, :, :], f, axis=0)
        for j, feat in enumerate(m.features):
            xs[j, :, j] = m.baseline.get(feat, 0.0)
        occluded = m.risk(xs.reshape(f * n, -1)).reshape(f, n)
        contrib = base[None, :] - occluded  # (features, rows)
        for k, i in enumerate(idx):
            order = np.argsort(-contrib[:, k])[:top]
            for j in order:
                c = float(contrib[j, k])
                v = x[k, j]
                if c < min_contribution or np.isnan(v):
                    continue
                feat = m.features[j]
                out[i].append(
                    {
                        "feature": feat,
                        "value": float(v),
                        "baseline": m.baseline.get(feat, 0.0),
                        "contribution": c,
                        "text": phrase(feat, float(v), m.baseline.get(feat, 0.0)),
                    }
                )
    if "lost" in rows.columns:
        lost = rows["lost"].to_numpy()
        stale = rows["stale_reads"].to_numpy()
        xid79 = rows["xid79_2h"].to_numpy()
        for i in np.flatnonzero(lost):
            text = (
                "XID 79: GPU has fallen off the bus"
                if xid79[i] and xid79[i] > 0
                else f"telemetry lost: no reading for {stale[i]:.0f} read intervals while "
                "its rack peers report"
            )
            out[i].insert(
                0,
                {
                    "feature": "telemetry_lost",
                    "value": float(stale[i] or 0),
                    "baseline": 0.0,
                    "contribution": 1.0,
                    "text": text,
                },
            )
    return out
