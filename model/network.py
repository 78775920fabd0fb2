"""A feed-forward backpropagation network (FFBPN) for one sample at a time.

Shapes, with L layers and sizes = [n_0, ..., n_L]:
    weights[l]  (n_l, n_{l+1})     biases[l]  (n_{l+1},)
    a[0] = x (n_0,)   z[l] = a[l] @ weights[l] + biases[l]   a[l+1] = f_l(z[l])

Each layer keeps its weights and bias in one matrix `wb` of shape (n_l + 1, n_{l+1})
whose last row is the bias, and each activation buffer a[l] carries a trailing 1,
so one `np.dot` does a layer and one outer product gives the gradient of weights
and bias together. `weights[l]` and `biases[l]` are views into `wb`.

The hot path (`learn_one`) runs on preallocated buffers: the cost of a step is the
number of numpy calls, not their size. It uses np.matmul and BLAS ddot rather than
np.dot, which releases the GIL even for tiny arrays: in the worker, every release let
kafka-python's threads take the interpreter for up to a switch interval (5 ms).
An update that could make any weight non-finite is computed aside, checked, and
refused if it would (`RefusedUpdate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg.blas import ddot as _ddot

from model import scalar_step
from model.activations import Activation, Array, get_activation
from model.errors import RefusedUpdate
from model.losses import get_loss

_SAFE = scalar_step.SAFE  # a step bound below this proves every updated weight finite
# max |f'(z)| of each activation, for the step bounds.
_FGRAD_MAX = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "linear": 1.0}


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
        self._in_shape = (sizes[0],)
        self._scalar_out = sizes[-1] == 1
        self._w_out = self._wb[-1][:, 0]  # the output unit's weights and bias, a view
        self._w_out_body = self._w_out[:-1]
        self._wb_t = [wb.T for wb in self._wb]  # Fortran-ordered views for in-place BLAS
        self._wb_t0 = self._wb_t[0]
        self._f = [act.f for act in self.activations]
        self._bounded = [act.name in ("sigmoid", "tanh") for act in self.activations]
        self._fgrad_max = [_FGRAD_MAX[act.name] for act in self.activations]
        self._fan_in = [n + 1 for n in sizes[:-1]]  # |z_j| <= (n + 1)·max|W|·max|a|
        self._fan_out = sizes[1:]  # |g_i| <= n_{l+1}·max|W|·max|g|·max|f'|
        self._fgrad_fn = [act.grad for act in self.activations]
        # Every hidden layer within ±1 (and a scalar output): `scalar_step.next_bounds` applies.
        self._all_bounded = self._scalar_out and len(sizes) > 2 and all(self._bounded[:-1])
        self._g_scale = [0.0] + [
            self._fan_out[l] * self._fgrad_max[l - 1] for l in range(1, len(sizes) - 1)
        ]
        hidden = self.activations[0]
        self._one_hidden_fast = (
            len(sizes) == 3 and sizes[-1] == 1 and hidden.name in ("sigmoid", "tanh")
        )
        self._hidden_f, self._hidden_grad = hidden.f, hidden.grad
        self._hidden_fgrad_max = _FGRAD_MAX[hidden.name]
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
            z = np.matmul(self._a[l], wb, out=self._z[l])
            act.f(z, self._out if l == last else self._a_body[l + 1])
        return self._out

    def predict(self, x: ArrayLike) -> Array:
        """The network's output for one input x of shape (n_in,): a new (n_out,) array."""
        if self._scalar_out:
            return np.array([self.predict_one(x)])
        return self._forward(x).copy()

    def predict_one(self, x: ArrayLike) -> float:
        """The single output of a one-output network, as a float (the service's hot path).

        The output unit is computed in scalar maths, exactly as `learn_one` computes it.
        """
        if not self._scalar_out:
            raise ValueError(f"predict_one needs a single output unit, sizes are {self.sizes}")
        x = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float64)
        if x.shape != self._in_shape:
            raise ValueError(f"x must have shape ({self.n_in},), got {x.shape}")
        a, a_body, wb, f, z = self._a, self._a_body, self._wb, self._f, self._z
        np.copyto(a_body[0], x)
        last = len(wb) - 1
        for l in range(last):
            f[l](np.matmul(a[l], wb[l], out=z[l]), a_body[l + 1])
        return self._scalar_output(_ddot(a[last], self._w_out))

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
            back = np.matmul(self._w_body[l], self._delta[l], out=self._delta[l - 1])
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

        Raises RefusedUpdate (weights and optimiser state untouched, `refused_updates`
        counted) when x, the loss or any updated weight would be non-finite.
        """
        if self._one_hidden_fast and not (self.momentum or self.l2):
            loss = scalar_step.learn_one_hidden(self, x, _scalar_target(target))
        elif self._scalar_out and not (self.momentum or self.l2):
            loss = scalar_step.learn_scalar_out(self, x, _scalar_target(target))
        else:
            loss, bounds = self._steps_general(x, target)
            self._apply_steps(bounds)
        self.steps += 1
        return loss

    def _steps_general(self, x: ArrayLike, target: ArrayLike | float) -> tuple[float, list[float]]:
        """Forward, backward, and step[l] = outer(a[l], −lr·delta[l]) for any output width."""
        self._forward(x)
        t = self._set_target(target)
        loss = self._loss_value(t)
        xx = _ddot(self._a[0], self._a[0])
        if not (math.isfinite(loss) and math.isfinite(xx)):
            self._refuse(f"loss is {loss}, |x|^2 is {xx}")
        self._backward(t)
        neg_lr = -self.learning_rate
        bounds = []
        for a, a_col, delta, step in zip(
            self._a, self._a_col, self._delta, self._step, strict=True
        ):
            np.multiply(delta, neg_lr, out=delta)
            np.multiply(a_col, delta, out=step)
            # max |step| <= ‖a‖·‖delta‖; a NaN anywhere makes the bound NaN (unsafe).
            bounds.append(math.sqrt(_ddot(a, a) * _ddot(delta, delta)))
        return loss, bounds

    def _scalar_output(self, z: float) -> float:
        """The output activation of one unit in scalar maths."""
        name = self.activations[-1].name
        if name == "sigmoid":
            e = math.exp(-abs(z))  # in (0, 1]: never overflows
            return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
        if name == "tanh":
            return math.tanh(z)
        if name == "relu":
            return max(z, 0.0)
        return z

    def _scalar_loss(self, z: float, t: float) -> tuple[float, float, float]:
        """Output y, delta = dL/dz and loss for one output unit with pre-activation z."""
        y = self._scalar_output(z)
        name = self.activations[-1].name
        if name == "sigmoid":
            if self.loss.name == "log":  # softplus(z) − t·z, arranged to never cancel
                tail = math.log1p(math.exp(-abs(z)))
                return y, y - t, tail + ((1.0 - t) * z if z > 0 else -t * z)
            return y, (y - t) * y * (1.0 - y), 0.5 * (y - t) ** 2
        if name == "tanh":
            return y, (y - t) * (1.0 - y * y), 0.5 * (y - t) ** 2
        if name == "relu":
            return y, (y - t) if z > 0 else 0.0, 0.5 * (y - t) ** 2
        return y, y - t, 0.5 * (y - t) ** 2

    def _refuse(self, why: str) -> None:
        self.refused_updates += 1
        raise RefusedUpdate(f"update refused: {why}; weights unchanged")

    def _apply_steps(self, bounds: list[float]) -> None:
        """wb[l] += step[l] for every layer, in place when bounds prove every weight stays finite.

        With momentum or L2 the step gains μ·v[l] and −lr·l2·W[l] (weights only, not
        biases) and goes through the checked path, which commits only all-finite results.
        The two paths do the same float operations, so they agree bit for bit.
        """
        mu, l2 = self.momentum, self.l2
        if not (mu or l2) and all(b + s < _SAFE for b, s in zip(self._bound, bounds, strict=True)):
            for l, (wb, step) in enumerate(zip(self._wb, self._step, strict=True)):
                np.add(wb, step, out=wb)
                self._bound[l] += bounds[l]
            return
        neg_lr_l2 = -self.learning_rate * l2
        new_wb, new_v = [], []
        for wb, step, v in zip(self._wb, self._step, self._velocity, strict=True):
            s = step.copy()
            if l2:
                s[:-1] += neg_lr_l2 * wb[:-1]
            if mu:
                s += mu * v
            new_wb.append(wb + s)
            new_v.append(s)
        if not all(
            np.isfinite(w).all() and np.isfinite(v).all()
            for w, v in zip(new_wb, new_v, strict=True)
        ):
            self._refuse("a weight would become non-finite")
        for l, (wb, v, w1, v1) in enumerate(
            zip(self._wb, self._velocity, new_wb, new_v, strict=True)
        ):
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


def _scalar_target(target: ArrayLike | float) -> float:
    if isinstance(target, int | float):
        return float(target)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if t.shape != (1,):
        raise ValueError(f"target must have 1 value, got shape {t.shape}")
    return float(t[0])


def _check_hyper(learning_rate: float, momentum: float, l2: float) -> None:
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
