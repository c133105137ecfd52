"""Electrical chain: IT load -> PSUs -> PDUs -> UPS -> switchgear -> transformer -> meter.

Each stage is a loss model P_in = P_out + loss(P_out), so that every watt drawn at the
meter is either IT energy or an itemised loss. PSU and UPS losses follow the standard
no-load + linear + I^2R form, loss/rated = l0 + l1*x + l2*x^2 with x = P_out/rated,
fitted to published efficiency points (80 PLUS Titanium for PSUs, a double-conversion
UPS curve scaled to the site's nominal efficiency). See docs/simulator.md.
"""

from __future__ import annotations

import numpy as np

# 80 PLUS Titanium (230 V internal redundant) minimums are 90/94/96/91 % at 10/20/50/100 %
# load; shipping Titanium server PSUs do better at full load. Anchors used for the fit:
PSU_EFF_ANCHORS = ((0.10, 0.90), (0.50, 0.962), (1.00, 0.945))
UPS_NO_LOAD_LOSS = 0.012  # fraction of rating lost at zero load (double conversion)
UPS_QUADRATIC_LOSS = 0.010
PSU_TEMP_RISE_K = 8.0  # PSU case above inlet air at zero load
PSU_TEMP_K_PER_W = 0.06  # case temperature rise per watt lost
PSU_TIME_CONSTANT_S = 120.0


def _fit_quadratic_loss(anchors: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Solve l0 + l1 x + l2 x^2 = x (1/eff - 1) through three (x, eff) points."""
    a = np.array([[1.0, x, x * x] for x, _ in anchors])
    b = np.array([x * (1.0 / e - 1.0) for x, e in anchors])
    return np.linalg.solve(a, b)


PSU_LOSS_COEF = _fit_quadratic_loss(PSU_EFF_ANCHORS)


def psu_loss_fraction(load_fraction: np.ndarray) -> np.ndarray:
    """PSU loss as a fraction of rated power, at output load fraction x (of rated).

    The fit holds within the rated range only: beyond 100 % (possible only after PSU
    failures; the site validator keeps healthy sites within rating) the loss grows in
    proportion to the load at the full-load efficiency instead of being extrapolated."""
    x = np.maximum(np.asarray(load_fraction, float), 0.0)
    l0, l1, l2 = PSU_LOSS_COEF
    xr = np.minimum(x, 1.0)
    within = l0 + l1 * xr + l2 * xr * xr
    return np.where(x > 1.0, within * x, within)  # within = loss at x = 1 there


def psu_efficiency(load_fraction: np.ndarray) -> np.ndarray:
    """Output/input of a healthy PSU at load fraction x (80 PLUS Titanium-like)."""
    x = np.maximum(np.asarray(load_fraction, float), 1e-3)
    return x / (x + psu_loss_fraction(x))


def ups_loss_coefficients(nominal_efficiency: float) -> tuple[float, float, float]:
    """(l0, l1, l2) so that the UPS is `nominal_efficiency` efficient at 50 % load."""
    l0, l2 = UPS_NO_LOAD_LOSS, UPS_QUADRATIC_LOSS
    total = 0.5 * (1.0 / nominal_efficiency - 1.0)
    l1 = (total - l0 - 0.25 * l2) / 0.5
    if l1 < 0:  # a very efficient UPS: shrink the fixed parts instead
        scale = total / (l0 + 0.25 * l2)
        l0, l2, l1 = l0 * scale, l2 * scale, 0.0
    return l0, l1, l2


def ups_loss_kw(out_kw: float, rated_kw: float, coef: tuple[float, float, float]) -> float:
    x = out_kw / rated_kw
    return rated_kw * (coef[0] + coef[1] * x + coef[2] * x * x)


def transformer_loss_kw(
    load_kw: float, rated_kw: float | None, no_load: float, load: float
) -> float:
    """MV/LV transformer: constant core loss plus copper loss with the square of the load."""
    if not rated_kw:
        return 0.0
    x = load_kw / rated_kw
    return rated_kw * (no_load + load * x * x)


def psu_stage(
    rack_dc_w: np.ndarray,
    psu_rack: np.ndarray,
    rack_psus: np.ndarray,
    psu_rated_w: np.ndarray,
    psu_failed: np.ndarray,
    loss_factor: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Healthy PSUs of a rack share its DC load equally (active current sharing).

    Returns per-PSU (output W, input W, loss W). A rack whose PSUs all failed draws nothing.
    """
    n_rack = len(rack_dc_w)
    healthy = ~psu_failed
    n_healthy = np.bincount(psu_rack, healthy.astype(float), n_rack)
    share = np.divide(rack_dc_w, n_healthy, out=np.zeros(n_rack), where=n_healthy > 0)
    out_w = np.where(healthy, share[psu_rack], 0.0)
    loss_w = np.where(
        healthy, psu_rated_w * psu_loss_fraction(out_w / psu_rated_w) * loss_factor, 0.0
    )
    return out_w, out_w + loss_w, loss_w
