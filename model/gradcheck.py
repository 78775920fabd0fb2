"""The finite-difference check: backprop against central differences.

Following cs231n's "Gradient Checks": centred differences
(f(w + eps) − f(w − eps)) / 2 eps, compared by relative error
|g_bp − g_fd| / max(|g_bp|, |g_fd|, floor) per entry. Central differences carry
an error of a fixed absolute size (truncation eps² · |f3| / 6, rounding ε · |L| / eps)
whatever the entry's size, so an entry a million times smaller than its
neighbours can never match to a relative 1e-7; the floor — a thousandth of the
largest gradient entry (`rel_floor`), and never below 1e-300 — measures such
entries on that scale instead. The loss is evaluated in extended precision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from model.network import Network


def numerical_gradients(
    net: Network, x: ArrayLike, target: ArrayLike | float, eps: float = 1e-6
) -> list[tuple[np.ndarray, np.ndarray]]:
    """dL/dW and dL/db by central differences, perturbing each parameter in turn.

    The loss is evaluated by an independent forward pass in extended precision
    (np.longdouble: 64-bit mantissa on x86), so the subtraction f(w+eps) − f(w−eps)
    does not drown small gradients in float64 rounding; where longdouble is plain
    float64 the check still works, with the usual ~1e-10 absolute noise.
    """
    xl = np.asarray(x, dtype=np.longdouble)
    tl = np.asarray(target, dtype=np.longdouble).reshape(-1)
    params = [wb.astype(np.longdouble) for wb in net._wb]
    grads = []
    for wb in params:
        g = np.zeros(wb.shape)
        for idx in np.ndindex(*wb.shape):
            saved = wb[idx]
            wb[idx] = saved + eps
            plus = _loss_extended(net, params, xl, tl)
            wb[idx] = saved - eps
            minus = _loss_extended(net, params, xl, tl)
            wb[idx] = saved
            g[idx] = float((plus - minus) / (2 * np.longdouble(eps)))
        grads.append((g[:-1], g[-1]))
    return grads


_EXTENDED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "linear": lambda z: z,
}


def _loss_extended(
    net: Network, params: list[np.ndarray], x: np.ndarray, t: np.ndarray
) -> np.longdouble:
    """The network's loss written afresh in np.longdouble (L2 term included)."""
    a, z = x, x
    for wb, act in zip(params, net.activations, strict=True):
        z = a @ wb[:-1] + wb[-1]
        a = _EXTENDED[act.name](z)
    if net.loss.name == "log":  # softplus(z) − t z, from the logit, without cancellation
        tail = np.log1p(np.exp(-np.abs(z)))
        loss = np.sum(np.where(z > 0, tail + (1 - t) * z, tail - t * z))
    else:
        loss = np.sum((a - t) ** 2) / 2
    if net.l2:
        loss += net.l2 / 2 * sum(np.sum(wb[:-1] ** 2) for wb in params)
    return np.longdouble(loss)


def relative_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-300) -> float:
    """max over entries of |a − b| / max(|a|, |b|, floor)."""
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    return float(np.max(np.abs(a - b) / scale))


def gradient_check(
    net: Network,
    x: ArrayLike,
    target: ArrayLike | float,
    eps: float = 1e-6,
    rel_floor: float = 1e-3,
) -> float:
    """Max relative error of backprop's gradients against central finite differences."""
    analytic = [g for pair in net.gradients(x, target) for g in pair]
    numeric = [g for pair in numerical_gradients(net, x, target, eps) for g in pair]
    largest = max(float(np.abs(g).max()) for g in analytic + numeric)
    floor = max(rel_floor * largest, 1e-300)
    return max(relative_error(a, n, floor) for a, n in zip(analytic, numeric, strict=True))
