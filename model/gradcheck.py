"""The finite-difference check: backprop against central differences.

Following cs231n's "Gradient Checks": float64, centred differences
(f(w + eps) − f(w − eps)) / 2 eps, compared by relative error
|g_bp − g_fd| / max(|g_bp|, |g_fd|, floor). The floor keeps gradients that are
zero up to rounding (where any relative error is noise) from reporting failure;
it is 1e-8 by default — far below any gradient that matters.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from model.network import Network


def numerical_gradients(
    net: Network, x: ArrayLike, target: ArrayLike | float, eps: float = 1e-6
) -> list[tuple[np.ndarray, np.ndarray]]:
    """dL/dW and dL/db by central differences, perturbing each parameter in turn."""
    grads = []
    for wb in net._wb:
        g = np.zeros_like(wb)
        for idx in np.ndindex(*wb.shape):
            saved = wb[idx]
            wb[idx] = saved + eps
            plus = net.loss_value(x, target)
            wb[idx] = saved - eps
            minus = net.loss_value(x, target)
            wb[idx] = saved
            g[idx] = (plus - minus) / (2 * eps)
        grads.append((g[:-1], g[-1]))
    return grads


def relative_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-8) -> float:
    """max over entries of |a − b| / max(|a|, |b|, floor)."""
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    return float(np.max(np.abs(a - b) / scale))


def gradient_check(
    net: Network, x: ArrayLike, target: ArrayLike | float, eps: float = 1e-6, floor: float = 1e-8
) -> float:
    """Max relative error of backprop's gradients against central finite differences."""
    analytic = net.gradients(x, target)
    numeric = numerical_gradients(net, x, target, eps)
    return max(
        max(relative_error(dw, nw, floor), relative_error(db, nb, floor))
        for (dw, db), (nw, nb) in zip(analytic, numeric, strict=True)
    )
