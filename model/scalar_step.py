"""The single-output network's SGD step in a dozen numpy calls: the service's hot path.

`Network.learn_one` uses it for plain SGD on networks with one output unit (the learner's
[n, h..., 1] networks); every other network takes the textbook path in `model.network`.
Both do the same maths: tests/unit/test_network.py checks the steps against the general
path, finite differences and scikit-learn. The output layer runs in scalar maths, the
hidden deltas are kept without the output's delta (folded into one factor
c = -lr * delta_L), and each layer's update is one BLAS call (daxpy for the output column,
dger for a rank-1 hidden update). Step bounds prove most updates finite in advance, so
they run in place; the rest run on copies and commit only if every weight is finite.

These are functions of the network (`net`), which owns the buffers they work in
(`Network._allocate_buffers`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg.blas import daxpy as _daxpy
from scipy.linalg.blas import ddot as _ddot
from scipy.linalg.blas import dger as _dger

from model.activations import Array

if TYPE_CHECKING:
    from model.network import Network

# Below this, a step bound proves in advance that no weight can overflow, so the
# step is applied in place; above it (a tiny share of real steps) the step is
# computed aside and checked entry by entry. Far from float64's 1.8e308.
SAFE = 1e150


def learn_one_hidden(net: Network, x: ArrayLike, t: float) -> float:
    """`learn_scalar_out` written out for the common [n, h, 1] network (sigmoid/tanh
    hidden layer, plain SGD): same float operations, no per-layer Python loops."""
    x = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float64)
    if x.shape != net._in_shape:
        raise ValueError(f"x must have shape ({net.n_in},), got {x.shape}")
    a0, h, g = net._a[0], net._a[1], net._delta[0]
    np.copyto(net._a_body[0], x)
    xx = _ddot(a0, a0)  # NaN or inf here means x is not finite
    net._hidden_f(np.matmul(a0, net._wb[0], out=net._z[0]), net._a_body[1])
    y, delta, loss = net._scalar_loss(_ddot(h, net._w_out), t)
    if not (loss < math.inf and xx < math.inf):  # False for NaN too
        net._refuse(f"loss is {loss}, |x|^2 is {xx}")
    net._out[0] = y
    net._hidden_grad(net._a_body[1], g)
    np.multiply(g, net._w_out_body, out=g)
    c = -net.learning_rate * delta
    bound_hidden, bound_out = net._bound
    step_out = abs(c)  # |h| <= 1
    step_hidden = step_out * math.sqrt(xx) * net._hidden_fgrad_max * bound_out
    if bound_hidden + step_hidden < SAFE and bound_out + step_out < SAFE:
        _daxpy(h, net._w_out, a=c)
        _dger(c, g, a0, a=net._wb_t0, overwrite_a=1)
        net._bound[0] = bound_hidden + step_hidden
        net._bound[1] = bound_out + step_out
        return loss
    checked_blas_update(net, c)
    return loss


def learn_scalar_out(net: Network, x: ArrayLike, t: float) -> float:
    """Plain SGD for a single output unit: the hot path of the service.

    The output layer runs in scalar math and the hidden deltas are kept without
    the output's delta, which is folded into one factor c = −lr·delta_L; each
    layer's update is then one BLAS call (daxpy for the output column, dger for
    a rank-1 hidden update), so a step costs about a dozen numpy calls in all.
    """
    x = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float64)
    if x.shape != net._in_shape:
        raise ValueError(f"x must have shape ({net.n_in},), got {x.shape}")
    a, a_body, wb, g = net._a, net._a_body, net._wb, net._delta
    np.copyto(a_body[0], x)
    xx = _ddot(a[0], a[0])  # NaN or inf here means x is not finite
    last = len(wb) - 1
    f, fgrad, z = net._f, net._fgrad_fn, net._z
    for l in range(last):
        f[l](np.matmul(a[l], wb[l], out=z[l]), a_body[l + 1])
    y, delta, loss = net._scalar_loss(_ddot(a[last], net._w_out), t)
    if not (loss < math.inf and xx < math.inf):  # False for NaN too
        net._refuse(f"loss is {loss}, |x|^2 is {xx}")
    net._out[0] = y
    if last:  # g[l] = dL/dz[l] / delta_L, from the top hidden layer down
        fgrad[last - 1](a_body[last], g[last - 1])
        np.multiply(g[last - 1], net._w_out_body, out=g[last - 1])
        for l in range(last - 1, 0, -1):
            np.matmul(net._w_body[l], g[l], out=g[l - 1])
            np.multiply(g[l - 1], fgrad[l - 1](a_body[l], net._fgrad[l - 1]), out=g[l - 1])
    c = -net.learning_rate * delta
    if net._all_bounded:
        new = next_bounds(net, abs(c), math.sqrt(xx))
        if new is not None:
            blas_update(net, c, net._wb_t)
            net._bound = new
            return loss
    else:
        bounds = scalar_step_bounds(net, abs(c), math.sqrt(xx))
        bound = net._bound
        if max(bound) + max(bounds) < SAFE:
            blas_update(net, c, net._wb_t)
            for l in range(last + 1):
                bound[l] += bounds[l]
            return loss
    checked_blas_update(net, c)
    return loss


def next_bounds(net: Network, abs_c: float, x_norm: float) -> list[float] | None:
    """`scalar_step_bounds` added to the weight bounds, for hidden layers that are all
    sigmoid or tanh (|a| <= 1, so only x's norm and the weight bounds matter); None
    when a new bound could reach SAFE (then the checked path runs)."""
    bound, last = net._bound, len(net._bound) - 1
    new = bound.copy()
    b = bound[last] + abs_c  # |a[last]| <= 1, the bias included
    if not b < SAFE:
        return None
    new[last] = b
    g_max = net._fgrad_max[last - 1] * bound[last]
    for l in range(last - 1, 0, -1):
        b = bound[l] + abs_c * g_max
        if not b < SAFE:
            return None
        new[l] = b
        g_max *= net._g_scale[l] * bound[l]
    b = bound[0] + abs_c * x_norm * g_max
    if not b < SAFE:  # False for NaN too
        return None
    new[0] = b
    return new


def checked_blas_update(net: Network, c: float) -> None:
    """A step that might overflow: the same BLAS calls on copies, committed if all finite."""
    wb = net._wb
    trial = [w.copy() for w in wb]
    blas_update(net, c, [w.T for w in trial])
    if not all(np.isfinite(w).all() for w in trial):
        net._refuse("a weight would become non-finite")
    for l, (w, w1) in enumerate(zip(wb, trial, strict=True)):
        np.copyto(w, w1)
        net._bound[l] = float(np.abs(w).max())


def blas_update(net: Network, c: float, wb_t: list[Array]) -> None:
    """wb[l] += c · outer(a[l], g[l]) in place (wb_t[l] = wb[l].T, Fortran-ordered)."""
    last = len(wb_t) - 1
    w_out = wb_t[last][0]  # the output unit's weights and bias, contiguous
    _daxpy(net._a[last], w_out, a=c)
    for l in range(last):
        _dger(c, net._delta[l], net._a[l], a=wb_t[l], overwrite_a=1)


def scalar_step_bounds(net: Network, abs_c: float, x_norm: float) -> list[float]:
    """Bounds on max |step| per layer, from scalars only (no numpy calls).

    |step_ij| <= |c|·max|a_i|·max|g_j|: max|a| <= 1 after sigmoid/tanh, else it
    grows through the weight bounds; max|g| is propagated down through the weight
    bounds and max |f'| (the constants precomputed in `_allocate_buffers`).
    """
    bound, last = net._bound, len(net._wb) - 1
    a_max = x_norm  # max|a[0]| <= ‖(x, 1)‖
    a_maxes = [a_max]
    for l in range(1, last + 1):
        a_max = 1.0 if net._bounded[l - 1] else net._fan_in[l - 1] * bound[l - 1] * a_max
        a_maxes.append(max(a_max, 1.0))
    steps = [abs_c * a_maxes[last]] * (last + 1)
    g_max = net._fgrad_max[last - 1] * bound[last] if last else 0.0
    for l in range(last - 1, -1, -1):
        steps[l] = abs_c * a_maxes[l] * g_max
        if l:
            g_max *= net._fan_out[l] * bound[l] * net._fgrad_max[l - 1]
    return steps
