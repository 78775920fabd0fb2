"""StackedNetworks: K networks stepped together equal K separate `Network.learn_one` steps.

Equal to 1e-12 relative, not bit for bit: `Network` forms its updates with BLAS
(ddot, daxpy, dger), which group the products of a step as c·(a_i·g_j) or
(c·a_i)·g_j, while the stacked step multiplies by numpy's broadcasting rules; float
multiplication is not associative, so the last bit may differ. What must be bit for
bit — the worker's state against the backtest's — runs the same stacked code on both
sides. Against *itself* the stacked step is exact: a network with rate 0 is untouched
bit for bit, and network k's weights do not depend on what the other K-1 learned.
"""

from __future__ import annotations

import numpy as np
import pytest

from model.network import Network
from model.stacked import StackedNetworks


def nets(sizes: list[int], k: int, act: str = "tanh", **kw: float) -> list[Network]:
    acts = [act] * (len(sizes) - 2) + ["sigmoid"]
    rates = [0.05, 0.02, 0.01, 0.03][:k]
    return [
        Network(sizes, activations=acts, loss="log", learning_rate=rates[i], seed=i + 1, **kw)
        for i in range(k)
    ]


def run_both(
    sizes: list[int], k: int, steps: int, act: str = "tanh", **kw: float
) -> tuple[list[Network], StackedNetworks]:
    rng = np.random.default_rng(0)
    separate = nets(sizes, k, act, **kw)
    stacked = StackedNetworks(nets(sizes, k, act, **kw))
    for _ in range(steps):
        x_shared = rng.normal(size=sizes[0])
        p = stacked.predict(x_shared)
        for i, net in enumerate(separate):
            assert p[i] == pytest.approx(net.predict_one(x_shared), rel=1e-12, abs=1e-15)
        xs = rng.normal(size=(k, sizes[0]))
        t = (rng.random(k) < 0.5).astype(float)
        stepping = [i for i in range(k) if rng.random() < 0.7]
        for i in stepping:
            separate[i].learn_one(xs[i], t[i])
        stacked.X_body[:] = xs
        assert stacked.learn(stepping, t) == ([], None)
    return separate, stacked


@pytest.mark.parametrize(
    ("sizes", "act", "kw"),
    [
        ([13, 32, 1], "tanh", {}),
        ([6, 8, 5, 1], "sigmoid", {}),
        ([6, 8, 5, 1], "relu", {}),
        ([5, 7, 1], "tanh", {"momentum": 0.9, "l2": 0.01}),
    ],
)
def test_stacked_step_equals_separate_steps(sizes: list[int], act: str, kw: dict) -> None:
    separate, stacked = run_both(sizes, 3, 200, act, **kw)
    for i, net in enumerate(separate):
        mine = stacked.network(i)
        assert mine.steps == net.steps > 0
        for w_sep, w_st in zip(net._wb, mine._wb, strict=True):
            np.testing.assert_allclose(w_st, w_sep, rtol=1e-12, atol=1e-14)
        for v_sep, v_st in zip(net.velocity, mine.velocity, strict=True):
            np.testing.assert_allclose(v_st, v_sep, rtol=1e-12, atol=1e-14)


def test_a_network_that_does_not_step_is_untouched_bit_for_bit() -> None:
    stacked = StackedNetworks(nets([5, 7, 1], 3))
    before = [w.copy() for w in stacked.wb]
    stacked.X_body[:] = np.random.default_rng(1).normal(size=(3, 5))
    stacked.learn([1], np.array([1.0, 0.0, 1.0]))
    for w0, w1 in zip(before, stacked.wb, strict=True):
        assert w0[[0, 2]].tobytes() == w1[[0, 2]].tobytes()
        assert w0[1].tobytes() != w1[1].tobytes()
    assert stacked.steps == [0, 1, 0]


def test_each_network_is_independent_of_the_others_bit_for_bit() -> None:
    """Network 1 of a stack of 3 ends with the same bytes as the same network stacked alone."""
    rng = np.random.default_rng(2)
    three = StackedNetworks(nets([6, 9, 1], 3))
    alone = StackedNetworks(nets([6, 9, 1], 3)[1:2])
    for _ in range(100):
        xs, t = rng.normal(size=(3, 6)), (rng.random(3) < 0.5).astype(float)
        three.X_body[:] = xs
        alone.X_body[:] = xs[1:2]
        three.learn([0, 1, 2], t)
        alone.learn([0], t[1:2])
    assert three.network(1).to_bytes() == alone.network(0).to_bytes()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_a_step_that_would_overflow_is_refused_for_that_network_only(act: str) -> None:
    pair = nets([4, 3, 1], 2, act)
    pair[0].learning_rate = 1e300
    stacked = StackedNetworks(pair)
    stacked.wb[1][0, :, 0] = 1e308  # network 0's output weights at the edge of float64
    stacked._bound = [float(np.abs(w).max()) for w in stacked.wb]
    before = [w.copy() for w in stacked.wb]
    stacked.X_body[:] = 1.0
    refused, _ = stacked.learn([0, 1], np.array([0.0, 0.0]))
    assert refused == [0]
    assert stacked.refused == [1, 0] and stacked.steps == [0, 1]
    for w0, w1 in zip(before, stacked.wb, strict=True):
        assert w0[0].tobytes() == w1[0].tobytes()
        assert np.isfinite(w1).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_one_network_stepping_when_the_bound_fails_leaves_the_others_bit_for_bit() -> None:
    """A lone stepping network steps through its own row; when the bound cannot prove the step
    safe, the checked apply adds every row, so the others' rows must not hold an older step."""
    stacked = StackedNetworks(nets([4, 3, 1], 3))
    stacked.X_body[:] = np.random.default_rng(3).normal(size=(3, 4))
    stacked.learn([0, 1, 2], np.array([1.0, 0.0, 1.0]))  # every row of the steps non-zero
    stacked.learn([2], np.array([0.0, 0.0, 0.0]))  # the fast path, one row
    stacked.wb[1][0, :, 0] = 1e308  # network 0 at the edge: the bound fails for every step
    stacked._bound = [float(np.abs(w).max()) for w in stacked.wb]
    before = [w.copy() for w in stacked.wb]
    assert stacked.learn([1], np.array([0.0, 1.0, 0.0])) == ([], None)
    for w0, w1 in zip(before, stacked.wb, strict=True):
        assert w0[[0, 2]].tobytes() == w1[[0, 2]].tobytes()
        assert w0[1].tobytes() != w1[1].tobytes()
    assert stacked.steps == [1, 2, 2]


def test_every_layer_is_a_view_of_the_networks_parameter_rows() -> None:
    """One add steps every layer: the layers must be views, never copies."""
    stacked = StackedNetworks(nets([6, 8, 5, 1], 3))
    for views in (stacked.wb, stacked.velocity, stacked._step):
        for view in views:
            assert view.base is not None
    for w in stacked.wb:
        assert np.shares_memory(w, stacked._params)
    stacked._params[1] += 1.0
    assert all((w[1] == stacked.network(1)._wb[l]).all() for l, w in enumerate(stacked.wb))


def test_networks_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        StackedNetworks([*nets([4, 3, 1], 1), *nets([4, 5, 1], 1)])
