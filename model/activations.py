"""Activations as value/gradient pairs.

Each gradient is written through the activation's *output* a = f(z), which is
what the backward pass keeps: sigmoid' = a(1 - a), tanh' = 1 - a², relu' = [a > 0],
linear' = 1. All functions write into `out` so the hot path allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

Array = NDArray[np.float64]

# 1 as a 0-d array: a Python float operand costs a ufunc ~0.2 µs more (its conversion)
_ONE = np.array(1.0)


def sigmoid(z: Array, out: Array) -> Array:
    """1 / (1 + e^-z) elementwise, stable for any |z| (scipy's fused expit: one call)."""
    return expit(z, out=out)


def sigmoid_grad(a: Array, out: Array) -> Array:
    """d sigmoid / dz through its output: a (1 - a)."""
    np.subtract(_ONE, a, out)
    return np.multiply(out, a, out)


def tanh(z: Array, out: Array) -> Array:
    """tanh z elementwise."""
    return np.tanh(z, out=out)


def tanh_grad(a: Array, out: Array) -> Array:
    """d tanh / dz through its output: 1 - a²."""
    np.multiply(a, a, out)
    return np.subtract(_ONE, out, out)


def relu(z: Array, out: Array) -> Array:
    """max(z, 0) elementwise."""
    return np.maximum(z, 0.0, out=out)


def relu_grad(a: Array, out: Array) -> Array:
    """d relu / dz through its output: 1 where a > 0, else 0 (0 at the kink)."""
    return np.greater(a, 0.0, out=out, casting="unsafe")


def linear(z: Array, out: Array) -> Array:
    """The identity."""
    np.copyto(out, z)
    return out


def linear_grad(a: Array, out: Array) -> Array:
    """d z / dz = 1."""
    out.fill(1.0)
    return out


class Activation(NamedTuple):
    name: str
    f: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", sigmoid, sigmoid_grad),
    "tanh": Activation("tanh", tanh, tanh_grad),
    "relu": Activation("relu", relu, relu_grad),
    "linear": Activation("linear", linear, linear_grad),
}


def get_activation(name: str) -> Activation:
    """Look an activation up by name; an unknown name lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; known: {known}") from None
