"""A feed-forward backpropagation network (FFBPN) for one sample at a time.

Shapes, with L layers and sizes = [n_0, ..., n_L]:
    weights[l]  (n_l, n_{l+1})     biases[l]  (n_{l+1},)
    a[0] = x (n_0,)   z[l] = a[l] @ weights[l] + biases[l]   a[l+1] = f_l(z[l])

Each layer keeps its weights and bias in one matrix `wb` of shape (n_l + 1, n_{l+1})
whose last row is the bias, and each activation buffer a[l] carries a trailing 1,
so one `np.dot` does a layer and one outer product gives the gradient of weights
and bias together. `weights[l]` and `biases[l]` are views into `wb`.

The hot path (`learn_one`) runs on preallocated buffers: the cost of a step is the
number of numpy calls, not their size. An update that could make any weight
non-finite is computed aside, checked, and refused if it would (`RefusedUpdate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from model.activations import Activation, Array, get_activation
from model.errors import RefusedUpdate
from model.losses import get_loss

# Below this, a step bound proves in advance that no weight can overflow, so the
# step is applied in place; above it (a tiny share of real steps) the step is
# computed aside and checked entry by entry. Far from float64's 1.8e308.
_SAFE = 1e150


class Network:
    """A dense network trained by reverse-mode backprop and SGD (momentum, L2 optional)."""

    def __init__(
        self,
        sizes: Sequence[int],
        activations: str | Sequence[str] = "sigmoid",
        loss: str = "squared",
        learning_rate: float = 0.05,
        momentum: float = 0.0,
        l2: float = 0.0,
        seed: int | np.random.Generator | None = 0,
    ) -> None:
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or any(n < 1 for n in sizes):
            raise ValueError(f"sizes must be >= 2 positive layer widths, got {sizes}")
        n_layers = len(sizes) - 1
        names = [activations] * n_layers if isinstance(activations, str) else list(activations)
        if len(names) != n_layers:
            raise ValueError(f"{n_layers} layers need {n_layers} activations, got {len(names)}")
        self.sizes = sizes
        self.activations: list[Activation] = [get_activation(n) for n in names]
        self.loss = get_loss(loss)
        if self.loss.needs_sigmoid_output and names[-1] != "sigmoid":
            raise ValueError(f"loss {loss!r} needs a sigmoid output layer, got {names[-1]!r}")
        _check_hyper(learning_rate, momentum, l2)
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.l2 = float(l2)
        self.steps = 0
        self.refused_updates = 0
        self._wb = [np.zeros((n + 1, m)) for n, m in zip(sizes[:-1], sizes[1:], strict=True)]
        self._velocity = [np.zeros_like(wb) for wb in self._wb]
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        for wb, act, n, m in zip(self._wb, self.activations, sizes[:-1], sizes[1:], strict=True):
            # He for relu, Xavier/Glorot for the saturating and linear units; biases 0.
            std = math.sqrt(2.0 / n) if act.name == "relu" else math.sqrt(2.0 / (n + m))
            wb[:-1] = rng.normal(0.0, std, size=(n, m))
        self._allocate_buffers()

    # ---------------------------------------------------------------- parameters
    @property
    def weights(self) -> list[Array]:
        """W[l] of shape (sizes[l], sizes[l+1]); views: write in place to change them."""
        return [wb[:-1] for wb in self._wb]

    @property
    def biases(self) -> list[Array]:
        """b[l] of shape (sizes[l+1],); views: write in place to change them."""
        return [wb[-1] for wb in self._wb]

    @property
    def velocity(self) -> list[Array]:
        """Momentum buffers, one (sizes[l] + 1, sizes[l+1]) matrix per layer, bias last row."""
        return self._velocity

    def set_parameters(self, weights: Sequence[ArrayLike], biases: Sequence[ArrayLike]) -> None:
        """Load weights and biases (e.g. from a peer library); shapes must match exactly."""
        for l, (w, b, wb) in enumerate(zip(weights, biases, self._wb, strict=True)):
            w, b = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if w.shape != wb[:-1].shape or b.shape != wb[-1].shape:
                raise ValueError(
                    f"layer {l}: expected W {wb[:-1].shape} and b {wb[-1].shape}, "
                    f"got {w.shape} and {b.shape}"
                )
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"layer {l}: weights must be finite")
            wb[:-1] = w
            wb[-1] = b
        self._bound = [float(np.abs(wb).max()) for wb in self._wb]

    @property
    def n_in(self) -> int:
        return self.sizes[0]

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    # ------------------------------------------------------------------- buffers
    def _allocate_buffers(self) -> None:
        sizes = self.sizes
        # a[l] with a trailing 1 for the bias row, for every layer's input.
        self._a = [np.ones(n + 1) for n in sizes[:-1]]
        self._a_body = [a[:-1] for a in self._a]
        self._a_col = [a[:, None] for a in self._a]
        self._out = np.zeros(sizes[-1])
        self._z = [np.zeros(m) for m in sizes[1:]]
        self._delta = [np.zeros(m) for m in sizes[1:]]
        self._fgrad = [np.zeros(m) for m in sizes[1:]]
        self._step = [np.zeros_like(wb) for wb in self._wb]
        self._w_body = [wb[:-1] for wb in self._wb]
        self._target = np.zeros(sizes[-1])
        # An upper bound on max |wb| per layer, kept by adding each step's bound;
        # derived state, recomputed exactly whenever the slow path runs.
        self._bound = [float(np.abs(wb).max()) for wb in self._wb]

    # ------------------------------------------------------------------- forward
    def _forward(self, x: ArrayLike) -> Array:
        """Fill a[l] and z[l] for every layer; returns the output activation."""
        a_in = self._a_body[0]
        x = np.asarray(x, dtype=np.float64)
        if x.shape != a_in.shape:
            raise ValueError(f"x must have shape ({self.n_in},), got {x.shape}")
        np.copyto(a_in, x)
        last = len(self._wb) - 1
        for l, (wb, act) in enumerate(zip(self._wb, self.activations, strict=True)):
            z = np.dot(self._a[l], wb, out=self._z[l])
            act.f(z, self._out if l == last else self._a_body[l + 1])
        return self._out

    def predict(self, x: ArrayLike) -> Array:
        """The network's output for one input x of shape (n_in,): a new (n_out,) array."""
        return self._forward(x).copy()

    # ------------------------------------------------------------------ backward
    def _set_target(self, target: ArrayLike | float) -> Array:
        t = np.asarray(target, dtype=np.float64).reshape(-1)
        if t.shape != self._target.shape:
            raise ValueError(f"target must have {self.n_out} value(s), got shape {t.shape}")
        np.copyto(self._target, t)
        return self._target

    def _backward(self, t: Array) -> None:
        """Fill delta[l] = dL/dz[l] for every layer, from the output back to the first."""
        last = len(self._wb) - 1
        delta = np.subtract(self._out, t, out=self._delta[last])
        if not self.loss.needs_sigmoid_output:  # squared: chain through f'(z) of the output
            np.multiply(delta, self.activations[last].grad(self._out, self._fgrad[last]), out=delta)
        for l in range(last, 0, -1):
            back = np.dot(self._w_body[l], self._delta[l], out=self._delta[l - 1])
            fgrad = self.activations[l - 1].grad(self._a_body[l], self._fgrad[l - 1])
            np.multiply(back, fgrad, out=back)

    def _loss_value(self, t: Array) -> float:
        return self.loss.value(self._out, t, self._z[-1])  # type: ignore[operator]

    def gradients(self, x: ArrayLike, target: ArrayLike | float) -> list[tuple[Array, Array]]:
        """dL/dW[l] (n_l, n_{l+1}) and dL/db[l] (n_{l+1},) for every layer; no update.

        The L2 term ½·l2·Σ W² (weights only) is included when l2 > 0.
        """
        self._forward(x)
        t = self._set_target(target)
        self._backward(t)
        grads = []
        for a, delta, wb in zip(self._a, self._delta, self._wb, strict=True):
            g = np.outer(a, delta)
            if self.l2:
                g[:-1] += self.l2 * wb[:-1]
            grads.append((g[:-1].copy(), g[-1].copy()))
        return grads

    def loss_value(self, x: ArrayLike, target: ArrayLike | float) -> float:
        """The loss at (x, target) with the current weights (L2 term included)."""
        self._forward(x)
        value = self._loss_value(self._set_target(target))
        if self.l2:
            value += 0.5 * self.l2 * sum(float(np.sum(wb[:-1] ** 2)) for wb in self._wb)
        return value

    # -------------------------------------------------------------------- update
    def learn_one(self, x: ArrayLike, target: ArrayLike | float) -> float:
        """One forward pass, one backward pass, one SGD step; returns the loss before the step.

        Raises RefusedUpdate (weights and optimiser state untouched) when the step
        would make any weight non-finite, or when x or the loss is not finite.
        """
        self._forward(x)
        t = self._set_target(target)
        loss = self._loss_value(t)
        if not math.isfinite(loss):
            return self._refuse(f"loss is {loss}")
        self._backward(t)
        bounds = self._step_bounds() if self.momentum == 0.0 and self.l2 == 0.0 else None
        if bounds is not None:
            self._apply_in_place(bounds)
        else:
            self._apply_checked()
        self.steps += 1
        return loss

    def _refuse(self, why: str) -> float:
        self.refused_updates += 1
        raise RefusedUpdate(f"update refused: {why}; weights unchanged")

    def _step_bounds(self) -> list[float] | None:
        """Bounds on max |step| per layer if they prove W + step finite, else None.

        |step_ij| = lr·|a_i|·|delta_j| <= lr·‖a‖·‖delta‖; one dot product per vector.
        A NaN anywhere makes a norm NaN and the comparison False.
        """
        lr = self.learning_rate
        bounds = []
        for bound, a, delta in zip(self._bound, self._a, self._delta, strict=True):
            step = lr * math.sqrt(float(np.dot(a, a)) * float(np.dot(delta, delta)))
            if not bound + step < _SAFE:
                return None
            bounds.append(step)
        return bounds

    def _apply_in_place(self, bounds: list[float]) -> None:
        """SGD without momentum or L2: wb += outer(a, −lr·delta), in place."""
        neg_lr = -self.learning_rate
        for l, (a_col, delta, wb, step) in enumerate(
            zip(self._a_col, self._delta, self._wb, self._step, strict=True)
        ):
            np.multiply(delta, neg_lr, out=delta)
            np.multiply(a_col, delta, out=step)
            np.add(wb, step, out=wb)
            self._bound[l] += bounds[l]

    def _apply_checked(self) -> None:
        """General step (momentum, L2), computed aside and committed only if all finite.

        v <- momentum·v − lr·(grad + l2·W);  W <- W + v   (L2 on weights, not biases).
        With momentum = l2 = 0 this is bit for bit the in-place step.
        """
        neg_lr, mu, l2 = -self.learning_rate, self.momentum, self.l2
        new_wb, new_v = [], []
        for a_col, delta, wb, v in zip(self._a_col, self._delta, self._wb, self._velocity, strict=True):
            step = a_col * (delta * neg_lr)
            if l2:
                step[:-1] += (neg_lr * l2) * wb[:-1]
            if mu:
                step += mu * v
            new_wb.append(wb + step)
            new_v.append(step)
        finite = all(np.isfinite(w).all() and np.isfinite(v).all() for w, v in zip(new_wb, new_v))
        if not finite:
            self._refuse("a weight would become non-finite")
        for l, (wb, v, w1, v1) in enumerate(zip(self._wb, self._velocity, new_wb, new_v)):
            np.copyto(wb, w1)
            if mu:
                np.copyto(v, v1)
            self._bound[l] = float(np.abs(wb).max())

    # ------------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        """The whole network, optimiser state included, without pickle (see model.serialization)."""
        from model.serialization import network_to_bytes

        return network_to_bytes(self)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Network:
        """Rebuild a network from `to_bytes`; ValueError on anything malformed."""
        from model.serialization import network_from_bytes

        return network_from_bytes(blob)


def _check_hyper(learning_rate: float, momentum: float, l2: float) -> None:
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
