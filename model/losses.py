"""Losses as value/output-delta pairs.

`delta` is dL/dz of the output layer, the seed of the backward pass:
- squared: L = ½ Σ (y − t)², delta = (y − t) · f'(z) through the output activation;
- log: binary cross-entropy of a sigmoid output, computed from the logit z so it
  never takes log(0): L = softplus(z) − t·z, and delta = sigmoid(z) − t exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from model.activations import Array


def squared(y: Array, t: Array, z: Array) -> float:
    """½ Σ (y − t)²."""
    d = y - t
    return 0.5 * float(np.dot(d, d))


def log_loss(y: Array, t: Array, z: Array) -> float:
    """Σ softplus(z) − t z = −Σ t log σ(z) + (1 − t) log(1 − σ(z)), stable for any z."""
    total = 0.0
    for zi, ti in zip(z.tolist(), t.tolist(), strict=True):
        # softplus(z) − t z = log1p(e^-|z|) + (1 − t) z for z > 0, or − t z for z <= 0:
        # the large terms never cancel, so a confident right answer keeps its precision
        tail = math.log1p(math.exp(-abs(zi)))
        total += tail + ((1.0 - ti) * zi if zi > 0 else -ti * zi)
    return total


def softplus(z: float) -> float:
    """log(1 + e^z) without overflow."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


class Loss(NamedTuple):
    name: str
    value: object  # Callable[[Array, Array, Array], float]
    needs_sigmoid_output: bool


LOSSES: dict[str, Loss] = {
    "squared": Loss("squared", squared, False),
    "log": Loss("log", log_loss, True),
}


def get_loss(name: str) -> Loss:
    """Look a loss up by name; an unknown name lists the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(LOSSES))
        raise ValueError(f"unknown loss {name!r}; known: {known}") from None
