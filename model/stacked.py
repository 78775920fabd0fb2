"""K networks of one shape, stepped together: stacked weights, one numpy call per layer.

The online learner keeps one network per horizon. They share their sizes and
activations, so their weights are stacked along a leading axis and each layer of
all K networks is one batched numpy call (`np.matmul` over the stack), whatever K:

    wb[l]   (K, n_l + 1, n_{l+1})   wb[l][k] is network k's weight-and-bias matrix,
                                     bias last row, exactly `Network._wb[l]`'s layout;
                                     a view into row k of one (K, n_params) array, so
                                     one add applies a step to every layer

- `predict(x, offsets)`: one input x (n_0,) shared by all K networks -> K outputs
  (offsets[k], if given, is added to network k's output pre-activation);
- `learn(stepping, t, x_max, x, offsets, x_offsets)`: each network k in `stepping`
  steps on its own input X_body[k] and target t[k] at its own learning rate; the
  others take no step (their weights and optimiser state stay bit for bit); with x,
  the same forward pass also predicts x for every network, before the step.

Each network's step is the plain SGD step of `Network.learn_one` (log loss on a
sigmoid output unit, optional momentum and L2): the same maths, but the products
are grouped differently than in Network's BLAS calls, so the two agree to ~1e-15
relative, not bit for bit (tests/unit/test_stacked.py). A step that would make
any of network k's weights non-finite is refused for network k alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from scipy.special import expit

from model.activations import Array, get_activation
from model.errors import FormatError
from model.network import Network
from model.serialization import network_bytes, parse_network

# Below this, a bound proves a step cannot overflow (as in model.network).
_SAFE = 1e150
Activate = Callable[[Array, Array], object]  # f(z, out)
# The output layer's products (one unit: a dot product per network and row) by vecdot where
# numpy has it (2.0 on): the same BLAS dot as matmul's, bit for bit, ~0.2 µs cheaper a call.
_VECDOT: Callable[..., object] | None = getattr(np, "vecdot", None)
# Activations that are one ufunc, called as f(z, out) like model.activations' functions
_UFUNCS = {"tanh": np.tanh, "sigmoid": expit}


def _sigmoid(z: float) -> float:
    """1 / (1 + e^-z) in scalar maths, stable for any z (as `Network`'s output unit)."""
    e = math.exp(-abs(z))  # in (0, 1]: never overflows
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


def _sigmoids(z: list[float], offsets: Sequence[float] | None) -> list[float]:
    """`_sigmoid` of each z[k] (+ offsets[k], when given)."""
    if offsets is None:
        return [_sigmoid(v) for v in z]
    return [_sigmoid(v + o) for v, o in zip(z, offsets, strict=True)]


def _n_params(sizes: list[int]) -> int:
    return sum((n + 1) * m for n, m in zip(sizes[:-1], sizes[1:], strict=True))


def _layer_views(rows: Array, sizes: list[int]) -> list[Array]:
    """(K, n_l + 1, n_{l+1}) views of each layer's slice of the rows of `rows` (K, n_params)."""
    views, offset = [], 0
    for n, m in zip(sizes[:-1], sizes[1:], strict=True):
        size = (n + 1) * m
        # A view, not a copy: each row's slice is contiguous (tests/unit/test_stacked.py)
        views.append(rows[:, offset : offset + size].reshape(rows.shape[0], n + 1, m))
        offset += size
    return views


class _Pass:
    """Buffers and views of one forward pass of K networks over inputs `first`.

    `first` is (n_0 + 1,) — one input for all K (a prediction) — or (R, K, n_0 + 1):
    R inputs for each of the K networks (learning: R = 2, each network's own stored
    input, then this tick's input for the fused prediction). Activations are
    (*lead, n_l + 1) with a trailing 1, lead = (K,) or (R, K).
    """

    def __init__(
        self, first: Array, sizes: list[int], k: int, wb: list[Array], f: list[Activate]
    ) -> None:
        shared = first.ndim == 1
        lead = (k,) if shared else first.shape[:-1]
        self.z = [np.zeros((*lead, n)) for n in sizes[1:]]
        self.a = [first] + [np.ones((*lead, n + 1)) for n in sizes[1:-1]]
        if not shared and len(sizes) > 2:
            # The learning pass's top hidden activations follow n free columns, where the
            # backward pass puts that layer's deltas: [deltas | activations, 1] of each
            # network is then one row, scaled by the network's c in one call (`learn`).
            n = sizes[-2]
            top = np.ones((*lead, 2 * n + 1))
            self.a[-1] = top[..., n:]
            self.top = top[0]  # (K, 2n + 1)
        self.a_body = [a[..., :-1] for a in self.a[1:]]  # the activations, per hidden layer
        # f writes into z[l] in place, then z[l] is copied into a_body[l]: writing into the
        # strided a_body directly costs about twice as much (numpy loops over its short
        # rows). Not when a_body is one row (K = 1 predicting): there f writes it directly.
        # The learning pass always does, as its backward pass reads z[l] (`learn_h`).
        self.in_place = not shared or not all(a.flags.c_contiguous for a in self.a_body)
        self.a_row = [a[..., None, :] for a in self.a[1:]]  # (*lead, 1, n + 1) for matmul
        # (n_0 + 1,) @ (K, n_0 + 1, n_1) -> (K, n_1);
        # (R, K, 1, n_0 + 1) @ (K, n_0 + 1, n_1) -> (R, K, 1, n_1)
        self.first = first if shared else first[..., None, :]
        self.z_first = self.z[0] if shared else self.z[0][..., None, :]
        self.z_next = [z[..., None, :] for z in self.z[1:]]
        self.z_out = self.z[-1].reshape(-1)
        self.outputs = self.z_out.tolist  # the pass's output pre-activations, as floats
        # The pass after its first product (`StackedNetworks._forward`), as calls with their
        # arguments bound: the views' lookups would cost more than some of the calls.
        self.rest: list[Callable[[], object]] = []
        for l, (h, a_body) in enumerate(zip(self.z[:-1], self.a_body, strict=True)):
            if self.in_place:
                self.rest += [partial(f[l], h, h), partial(a_body.__setitem__, Ellipsis, h)]
            else:
                self.rest.append(partial(f[l], h, a_body))
            if l == len(sizes) - 3 and _VECDOT is not None:  # into the one output unit
                out = partial(_VECDOT, self.a[l + 1], wb[l + 1][..., 0], self.z[l + 1][..., 0])
            else:
                out = partial(np.matmul, self.a_row[l], wb[l + 1], self.z_next[l])
            self.rest.append(out)
        if not shared:  # the learning rows: what the backward pass reads
            self.learn_a = [a[0] for a in self.a]  # (K, n_l + 1)
            self.learn_h = [z[0] for z in self.z[:-1]]  # (K, n_l): activations, contiguous


class StackedNetworks:
    """K [n_0, ..., n_L=1] networks with a sigmoid output and log loss, stepped together."""

    def __init__(self, networks: Sequence[Network]) -> None:
        if not networks:
            raise ValueError("need at least one network to stack")
        first = networks[0]
        names = [a.name for a in first.activations]
        for net in networks:
            if net.sizes != first.sizes or [a.name for a in net.activations] != names:
                raise ValueError(
                    f"stacked networks need one shape: {net.sizes} {names} vs {first.sizes}"
                )
            if net.sizes[-1] != 1 or names[-1] != "sigmoid" or net.loss.name != "log":
                raise ValueError("stacked networks need one sigmoid output unit with log loss")
            if (net.momentum, net.l2) != (first.momentum, first.l2):
                raise ValueError("stacked networks need the same momentum and l2")
        self._setup(len(networks), first.sizes, names[:-1], first.momentum, first.l2)
        for k, net in enumerate(networks):
            self.learning_rates[k] = net.learning_rate
            self.steps[k] = net.steps
            self.refused[k] = net.refused_updates
            for l in range(len(self.wb)):
                self.wb[l][k] = net._wb[l]
                self.velocity[l][k] = net.velocity[l]
        self._bound = [float(np.abs(w).max()) for w in self.wb]

    @classmethod
    def blank(
        cls, k: int, sizes: Sequence[int], hidden: Sequence[str], momentum: float, l2: float
    ) -> StackedNetworks:
        """K networks of this shape with zero weights, for `load` to fill (no `Network`s
        built: restoring a learner's state is then mostly copying)."""
        stacked = cls.__new__(cls)
        stacked._setup(k, sizes, hidden, momentum, l2)
        return stacked

    def _setup(
        self, k: int, sizes: Sequence[int], hidden: Sequence[str], momentum: float, l2: float
    ) -> None:
        self.k = k
        self.sizes = [int(n) for n in sizes]
        self.hidden_activations = list(hidden)
        self.momentum = momentum
        self.l2 = l2
        self.learning_rates = [0.0] * k
        self.steps = [0] * k
        self.refused = [0] * k
        # Each network's parameters are one row of a (K, n_params) array, so a whole step is
        # one add; wb[l] and velocity[l] are (K, n_l + 1, n_{l+1}) views into those rows.
        self._params = np.zeros((k, _n_params(self.sizes)))
        self._velocity = np.zeros_like(self._params)
        self.wb = _layer_views(self._params, self.sizes)
        self.velocity = _layer_views(self._velocity, self.sizes)
        self._allocate()

    def _allocate(self) -> None:
        k, sizes = self.k, self.sizes
        acts = [get_activation(n) for n in self.hidden_activations]
        # The ufunc itself where it is one (a Python wrapper's call costs ~0.1 µs a layer)
        self._f = [_UFUNCS.get(a.name, a.f) for a in acts]
        self._fgrad = [a.grad for a in acts]
        self._last = last = len(sizes) - 2  # index of the output layer
        # a[l] (K, n_l + 1): each network's activations with a trailing 1. Prediction's
        # a[0] is one input x (n_0 + 1,) shared by all K; learning's a[0] is X, each its own.
        self._x = np.ones(sizes[0] + 1)
        self._x_body = self._x[:-1]
        self._x2 = np.ones((2, k, sizes[0] + 1))  # [0]: each network's own input; [1]: x
        self.X = self._x2[0]
        self.X_body = self.X[:, :-1]
        self._x2_body = self._x2[1, :, :-1]
        self._x2_pred = self._x2[1]
        self._predict_pass = _Pass(self._x, sizes, k, self.wb, self._f)
        self._learn_pass = _Pass(self._x2, sizes, k, self.wb, self._f)
        lp = self._learn_pass
        self._g = [np.zeros((k, n)) for n in sizes[1:-1]]  # dL/dz per hidden layer / dL/dz_out
        if last:  # the top hidden layer's: in front of its activations (`_Pass`)
            self._g[last - 1] = lp.top[:, : sizes[last]]
        self._g_col = [g[:, :, None] for g in self._g]
        self._fg = [np.zeros((k, n)) for n in sizes[1:-1]]  # f'(z) scratch
        self._c = np.zeros(k)
        self._c_col = self._c[:, None]
        self._steps = np.zeros_like(self._params)  # one step of every parameter
        self._step = _layer_views(self._steps, sizes)
        # Weight views (the weights are always updated in place, so views stay valid).
        self._w_out_body = self.wb[last][:, :-1, 0]  # (K, n_L): output weights, no bias
        self._w_body = [w[:, :-1, :] for w in self.wb]
        self._trial = np.zeros_like(self._params)
        self._apply = partial(np.add, self._params, self._steps, self._params)
        self._backward, self._outers = self._backward_calls()
        # One bounded hidden layer and plain SGD: a step's size has a cheap bound (below).
        self._bounded = (
            last == 1
            and self.hidden_activations[0] in ("tanh", "sigmoid")
            and not (self.momentum or self.l2)
        )
        self._fgrad_max = 1.0 if self.hidden_activations[:1] == ["tanh"] else 0.25
        # One network of several stepping (a third of the E-mini ticks with 3 horizons): its
        # outer product and its apply alone, ~1.5 of ~3 µs; the others' rows of the steps
        # then hold an older step, so only the bounded apply, which adds just this row, may
        # follow (`learn`). A row k's calls: (its outer product, its apply).
        self._one_row = [
            (partial(np.multiply, *(view[i] for view in self._outers_args[0])),
             partial(np.add, self._params[i], self._steps[i], self._params[i]))
            for i in range(k)
        ] if self._bounded and k > 1 else []  # fmt: skip
        self._bound = [0.0] * len(self.wb)  # max |wb| over the stack, per layer (an upper bound)

    def _backward_calls(self) -> tuple[list[Callable[[], object]], list[Callable[[], object]]]:
        """The backward pass and the steps, from c, as calls with their arguments bound.

        From the top hidden layer down, each layer's deltas g (dL/dz); then the steps. A
        layer's step is the outer product of its input (with the trailing 1) and its g
        times c: its bias row is g times c. The output layer's step and the top hidden
        layer's bias row end each row of _steps, so one multiply by c fills both (from
        the learning pass's `top`: [top g | top activations, 1]); each other bias row is
        its g times c, and then each layer's other rows its input times that row: those
        outer products are the second list.
        """
        lp, last, g, fg, step = self._learn_pass, self._last, self._g, self._fg, self._step
        mul, c_col = np.multiply, self._c_col
        calls: list[Callable[[], object]] = []
        if last:  # f' into a contiguous scratch: a ufunc writing a strided view costs 2x
            calls += [
                partial(self._fgrad[last - 1], lp.learn_h[last - 1], fg[last - 1]),
                partial(mul, fg[last - 1], self._w_out_body, g[last - 1]),
            ]
        for l in range(last - 1, 0, -1):
            calls += [
                partial(np.matmul, self._w_body[l], self._g_col[l], self._g_col[l - 1]),
                partial(self._fgrad[l - 1], lp.learn_h[l - 1], fg[l - 1]),
                partial(mul, g[l - 1], fg[l - 1], g[l - 1]),
            ]
        n_top = self.sizes[last]
        top_out = self._steps[:, -(2 * n_top + 1) :] if last else step[0][:, :, 0]
        calls.append(partial(mul, lp.top if last else lp.learn_a[0], c_col, top_out))
        calls += [partial(mul, g[l], c_col, step[l][:, -1, :]) for l in range(last - 1)]
        self._outers_args = [
            (lp.learn_a[l][:, :-1, None], s[:, -1:, :], s[:, :-1, :])
            for l, s in enumerate(step[:last])
        ]
        return calls, [partial(mul, *args) for args in self._outers_args]

    # ----------------------------------------------------------------- forward
    def _forward(self, p: _Pass, first: Array) -> list[float]:
        """Fill p's activations from its inputs `first` (p.first, or one row (n_0 + 1,)
        for the shared pass); returns the output pre-activations (K·R)."""
        np.matmul(first, self.wb[0], p.z_first)
        for call in p.rest:
            call()
        return p.outputs()

    def predict(self, x: Array, offsets: Sequence[float] | None = None) -> list[float]:
        """p_up of each of the K networks for one input x: shape (n_0,), or (n_0 + 1,)
        ending in a 1 (then used in place, no copy). `offsets[k]`, when given, is added to
        network k's output pre-activation (a logit the network learns a correction to)."""
        if x.shape[0] == self._x.shape[0]:
            first = x
        else:
            np.copyto(self._x_body, x)
            first = self._x
        return _sigmoids(self._forward(self._predict_pass, first), offsets)

    # ------------------------------------------------------------------ learn
    def learn(
        self,
        stepping: list[int],
        targets: Sequence[float],
        x_max: float | None = None,
        x: Array | None = None,
        offsets: Sequence[float] | None = None,
        x_offsets: Sequence[float] | None = None,
    ) -> tuple[list[int], list[float] | None]:
        """One SGD step of each network k in `stepping` on (X_body[k], targets[k]).

        The caller fills `X_body` (K, n_0) and `targets` (K,); rows of networks not in
        `stepping` are ignored. `x_max`, when given, bounds every |X_body| entry (it
        lets a step skip the finiteness check). A network not stepping gets a step of
        ±0, so its weights stay as they were, bit for bit (w + ±0 == w for any w but
        −0.0, which no step produces from weights that start as normal draws or +0.0).

        Returns (refused, predictions). refused: the indices whose step was refused
        because a weight would have become non-finite (their weights and optimiser
        state are unchanged). predictions: with `x` (n_0,), `predict(x)` computed in
        the same forward pass, with the weights *before* this step; else None. Like
        `predict`'s, x may also be (n_0 + 1,) ending in a 1. `offsets[k]` is added to
        network k's output pre-activation for its step, `x_offsets[k]` for its prediction
        of x (as `predict`'s offsets); the gradient is that of log loss at the sum.
        """
        if not stepping:
            return [], (None if x is None else self.predict(x, x_offsets))
        if x is not None:  # broadcast to every network's row
            # (a slice assignment: a third of np.copyto's cost on arrays this small)
            (self._x2_pred if x.shape[0] == self._x.shape[0] else self._x2_body)[...] = x
        lp, lrs, k = self._learn_pass, self.learning_rates, self.k
        z = self._forward(lp, lp.first)  # K learning rows, then K prediction rows
        c = [0.0] * k  # c = -lr·dL/dz_out = lr·(t − y) for log loss on a sigmoid; 0: no step
        for i in stepping:
            y = _sigmoid(z[i] if offsets is None else z[i] + offsets[i])
            c[i] = lrs[i] * (targets[i] - y)
        self._c[:] = c
        predictions = None if x is None else _sigmoids(z[k:], x_offsets)
        for call in self._backward:
            call()
        one = self._one_row[stepping[0]] if len(stepping) == 1 and self._one_row else None
        for call in one[:1] if one else self._outers:
            call()
        if self._bounded:
            # wb += step in place when a bound proves every new weight finite: |c_k| <= lr_k
            # (|t − y| <= 1), hidden activations and the bias are within ±1, so |output
            # step| <= lr; |hidden step| <= lr·max|x|·max f'·max|w_out|.
            if x_max is None:
                x_max = float(np.abs(self.X).max())
            b_in, b_out = bound = self._bound
            s_out = max(lrs)  # bounds every stepping network's rate
            s_in = s_out * max(x_max, 1.0) * self._fgrad_max * b_out
            if b_in + s_in < _SAFE and b_out + s_out < _SAFE:  # False for NaN too
                (one[1] if one else self._apply)()
                bound[0] = b_in + s_in
                bound[1] = b_out + s_out
                return self._count(stepping, []), predictions
        if one:  # the checked apply adds every row: the others' outer products afresh
            for call in self._outers:
                call()
        rate = np.zeros(k)
        rate[stepping] = [lrs[i] for i in stepping]
        if self.momentum or self.l2:
            self._regularise(rate)
        return self._count(stepping, self._checked_apply(rate)), predictions

    def _count(self, stepping: list[int], refused: list[int]) -> list[int]:
        steps = self.steps
        for k in stepping:
            steps[k] += 1
        for k in refused:
            steps[k] -= 1
        return refused

    def _regularise(self, rate: Array) -> None:
        """Add −lr·l2·W (weights, not biases) and μ·v to the steps of the stepping networks."""
        moving = (rate > 0)[:, None, None]
        for w, v, s in zip(self.wb, self.velocity, self._step, strict=True):
            if self.l2:
                s[:, :-1] += (-rate * self.l2)[:, None, None] * w[:, :-1]
            if self.momentum:
                s += self.momentum * v * moving

    def _checked_apply(self, rate: Array) -> list[int]:
        """wb += step, committed only for networks whose new weights are all finite."""
        params, trial = self._params, self._trial
        np.add(params, self._steps, out=trial)
        refused: list[int] = []
        if not math.isfinite(float(trial.sum())):  # find the networks at fault
            ok: list[bool] = np.all(np.isfinite(trial), axis=1).tolist()
            refused = [k for k in range(self.k) if not ok[k]]
            for k in refused:
                trial[k] = params[k]  # keep their old weights
                self.refused[k] += 1
        np.copyto(params, trial)
        if self.momentum:  # the new velocity is the step taken
            moving = rate > 0
            moving[refused] = False
            np.copyto(self._velocity, self._steps, where=moving[:, None])
        self._bound = [float(np.abs(w).max()) for w in self.wb]
        return refused

    # ------------------------------------------------------------- networks
    def set_weights(self, k: int, net: Network) -> None:
        """Put `net`'s weights into row k and clear its momentum (steps and refusals kept)."""
        if net.sizes != self.sizes:
            raise ValueError(f"network sizes {net.sizes} != {self.sizes} of the stack")
        for l, w in enumerate(self.wb):
            np.copyto(w[k], net._wb[l])
            self.velocity[l][k] = 0.0
        self._bound = [float(np.abs(w).max()) for w in self.wb]

    def network_bytes(self, k: int) -> bytes:
        """Network k as `Network.to_bytes()` would write it (written from the stack)."""
        return network_bytes(
            self.sizes,
            [*self.hidden_activations, "sigmoid"],
            "log",
            (self.learning_rates[k], self.momentum, self.l2),
            (self.steps[k], self.refused[k]),
            [w[k] for w in self.wb],
            [v[k] for v in self.velocity],
        )

    def load(self, k: int, blob: bytes) -> None:
        """Network k := the network in `blob` (`Network.to_bytes()` output); FormatError
        when it is malformed or not of this stack's shape, activations and optimiser."""
        header, values = parse_network(blob)
        acts = [*self.hidden_activations, "sigmoid"]
        opt = header["optimizer"]
        found = (header["sizes"], header["activations"], header["loss"], opt["momentum"], opt["l2"])
        if found != (self.sizes, acts, "log", self.momentum, self.l2):
            raise FormatError(
                f"network {k}: sizes, activations, loss, momentum, l2 {found} != "
                f"{(self.sizes, acts, 'log', self.momentum, self.l2)} of the stack"
            )
        if not (isinstance(opt["learning_rate"], float) and opt["learning_rate"] > 0):
            raise FormatError(f"network {k}: learning rate {opt['learning_rate']!r}")
        offset = 0
        for target in [*self.wb, *self.velocity]:
            count = target[k].size
            target[k] = values[offset : offset + count].reshape(target[k].shape)
            offset += count
        self.learning_rates[k] = float(opt["learning_rate"])
        self.steps[k] = header["steps"]
        self.refused[k] = header["refused_updates"]
        self._bound = [float(np.abs(w).max()) for w in self.wb]

    def network(self, k: int) -> Network:
        """Network k as a stand-alone `Network` (a copy): for serialisation and checks."""
        net = Network(
            self.sizes,
            activations=[*self.hidden_activations, "sigmoid"],
            loss="log",
            learning_rate=self.learning_rates[k],
            momentum=self.momentum,
            l2=self.l2,
            seed=0,
        )
        for l, w in enumerate(self.wb):
            np.copyto(net._wb[l], w[k])
            np.copyto(net.velocity[l], self.velocity[l][k])
        net._bound = [float(np.abs(w).max()) for w in net._wb]
        net.steps = self.steps[k]
        net.refused_updates = self.refused[k]
        return net
