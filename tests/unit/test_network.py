"""The network's gradients, proven three ways (closed form, finite differences, backprop),
plus an independent implementation (scikit-learn) as an oracle for gradients and steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from model import Network, RefusedUpdate, gradient_check
from model.gradcheck import numerical_gradients, relative_error


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


# ----------------------------------------------------------------- the seed's 1-1-1
def closed_form_111(x: float, t: float, w1: float, b1: float, w2: float, b2: float):
    """The workshop's derivation for x -> h = σ(w1 x + b1) -> y = σ(w2 h + b2), L = ½(y − t)²."""
    h = sigmoid(w1 * x + b1)
    y = sigmoid(w2 * h + b2)
    dy = (y - t) * y * (1 - y)  # dL/dz2
    dh = dy * w2 * h * (1 - h)  # dL/dz1
    return {"w2": dy * h, "b2": dy, "w1": dh * x, "b1": dh, "loss": 0.5 * (y - t) ** 2}


def net_111(w1: float, b1: float, w2: float, b2: float) -> Network:
    net = Network([1, 1, 1], "sigmoid", "squared", learning_rate=0.5)
    net.set_parameters([[[w1]], [[w2]]], [[b1], [b2]])
    return net


@pytest.mark.parametrize(
    "x, t, w1, b1, w2, b2",
    [
        (1.0, 0.0, 0.15, 0.35, 0.40, 0.60),  # the classic worked example's numbers
        (0.5, 1.0, -0.3, 0.1, 0.8, -0.2),
        (-2.0, 1.0, 1.5, -0.7, -2.5, 0.3),
        (3.0, 0.0, 0.01, 0.0, 4.0, -1.0),
    ],
)
def test_closed_form_111_equals_backprop_and_finite_differences(x, t, w1, b1, w2, b2):
    exact = closed_form_111(x, t, w1, b1, w2, b2)
    net = net_111(w1, b1, w2, b2)
    (dw1, db1), (dw2, db2) = net.gradients(np.array([x]), t)
    backprop = {"w1": dw1[0, 0], "b1": db1[0], "w2": dw2[0, 0], "b2": db2[0]}
    (nw1, nb1), (nw2, nb2) = numerical_gradients(net, np.array([x]), t)
    numeric = {"w1": nw1[0, 0], "b1": nb1[0], "w2": nw2[0, 0], "b2": nb2[0]}
    for name in ("w1", "b1", "w2", "b2"):
        assert rel(backprop[name], exact[name]) < 1e-10, name
        assert rel(numeric[name], exact[name]) < 1e-7, name
    assert rel(net.loss_value(np.array([x]), t), exact["loss"]) < 1e-12


def test_one_step_on_111_moves_each_weight_by_minus_lr_times_closed_form():
    x, t, w1, b1, w2, b2 = 1.0, 0.0, 0.15, 0.35, 0.40, 0.60
    exact = closed_form_111(x, t, w1, b1, w2, b2)
    net = net_111(w1, b1, w2, b2)
    loss = net.learn_one(np.array([x]), t)
    assert rel(loss, exact["loss"]) < 1e-12
    assert rel(net.weights[0][0, 0], w1 - 0.5 * exact["w1"]) < 1e-12
    assert rel(net.biases[0][0], b1 - 0.5 * exact["b1"]) < 1e-12
    assert rel(net.weights[1][0, 0], w2 - 0.5 * exact["w2"]) < 1e-12
    assert rel(net.biases[1][0], b2 - 0.5 * exact["b2"]) < 1e-12
    assert net.steps == 1


def test_repeated_steps_on_111_drive_the_loss_down():
    net = net_111(0.15, 0.35, 0.40, 0.60)
    first = net.learn_one(np.array([1.0]), 0.0)
    for _ in range(200):
        last = net.learn_one(np.array([1.0]), 0.0)
    assert last < first / 10


# ------------------------------------------------------------ finite differences
SMOOTH = st.sampled_from(["sigmoid", "tanh", "linear"])


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 4))
    loss = draw(st.sampled_from(["squared", "log"]))
    widths = [draw(st.integers(1, 6)) for _ in range(depth)]
    n_out = 1 if loss == "log" else draw(st.integers(1, 3))
    sizes = [widths[0], *widths[1:], n_out] if depth > 1 else [widths[0], n_out]
    sizes = sizes[: depth + 1]
    acts = [draw(SMOOTH) for _ in range(len(sizes) - 1)]
    if loss == "log":
        acts[-1] = "sigmoid"
    l2 = draw(st.sampled_from([0.0, 0.01]))
    seed = draw(st.integers(0, 2**31))
    net = Network(sizes, acts, loss, learning_rate=0.1, l2=l2, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=sizes[0])
    t = rng.integers(0, 2, size=sizes[-1]).astype(float)
    return net, x, t


# derandomize: the same 200 networks on every run, so CI is never flaky; the random
# search (3,000 networks) found a worst relative error of 7e-8, on a saturated tanh unit.
@settings(max_examples=200, deadline=None, derandomize=True)
@given(networks())
def test_backprop_equals_central_differences_on_random_networks(case):
    net, x, t = case
    note(f"sizes={net.sizes} acts={[a.name for a in net.activations]} loss={net.loss.name}")
    note(f"l2={net.l2} x={x.tolist()} t={t.tolist()} blob={net.to_bytes().hex()}")
    assert gradient_check(net, x, t, eps=1e-6) < 1e-7


def test_relu_gradients_match_away_from_the_kink():
    rng = np.random.default_rng(3)
    net = Network([4, 6, 5, 1], ["relu", "relu", "sigmoid"], "log", seed=3)
    x = rng.normal(size=4)
    # no hidden pre-activation within eps of the kink, where relu has no derivative
    net.predict(x)
    assert min(np.abs(z).min() for z in net._z[:-1]) > 1e-4
    assert gradient_check(net, x, 1.0) < 1e-7


def test_gradient_check_catches_a_wrong_gradient(monkeypatch):
    net = Network([3, 4, 1], "sigmoid", "log", seed=1)
    x = np.array([0.3, -1.2, 0.8])
    honest = net.gradients

    def off_by_a_bit(x, t):
        grads = honest(x, t)
        grads[0][0][0, 0] *= 1.001
        return grads

    monkeypatch.setattr(net, "gradients", off_by_a_bit)
    assert gradient_check(net, x, 1.0) > 1e-4


# --------------------------------------------------- an independent implementation
def sklearn_mlp(kind: str, sizes: list[int], activation: str, lr: float):
    nn = pytest.importorskip("sklearn.neural_network")
    cls = nn.MLPClassifier if kind == "classifier" else nn.MLPRegressor
    mlp = cls(
        hidden_layer_sizes=tuple(sizes[1:-1]),
        activation=activation,
        solver="sgd",
        learning_rate_init=lr,
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=1,
        shuffle=False,
        random_state=0,
    )
    return mlp


@pytest.mark.parametrize(
    "sizes, hidden",
    [([5, 8, 1], "logistic"), ([4, 7, 6, 1], "tanh"), ([16, 32, 1], "logistic")],
)
def test_same_sgd_step_as_scikit_learn_classifier(sizes, hidden):
    """Log loss on a sigmoid output, as sklearn's binary MLPClassifier: the same step."""
    ours = {"logistic": "sigmoid", "tanh": "tanh"}[hidden]
    net = Network(
        sizes, [ours] * (len(sizes) - 2) + ["sigmoid"], "log", learning_rate=0.05, seed=11
    )
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(2, sizes[0]))
    mlp = sklearn_mlp("classifier", sizes, hidden, 0.05)
    mlp.partial_fit(xs, [0, 1], classes=[0, 1])  # builds the layers; overwritten below
    for l, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        mlp.coefs_[l][...] = w
        mlp.intercepts_[l][...] = b
    for step, (x, t) in enumerate([(xs[0], 1), (xs[1], 0), (xs[0], 0)]):
        p_sk = mlp.predict_proba(x[None, :])[0, 1]
        assert abs(net.predict(x)[0] - p_sk) < 1e-12, f"forward differs at step {step}"
        net.learn_one(x, float(t))
        mlp.partial_fit(x[None, :], [t])
        for l in range(len(sizes) - 1):
            np.testing.assert_allclose(net.weights[l], mlp.coefs_[l], rtol=0, atol=1e-12)
            np.testing.assert_allclose(net.biases[l], mlp.intercepts_[l], rtol=0, atol=1e-12)


def test_same_sgd_step_as_scikit_learn_regressor_with_squared_loss():
    """½(y − t)² with a linear output, as MLPRegressor's squared error on one sample."""
    sizes = [3, 5, 2]
    net = Network(sizes, ["tanh", "linear"], "squared", learning_rate=0.02, seed=4)
    rng = np.random.default_rng(9)
    xs, ts = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))
    mlp = sklearn_mlp("regressor", sizes, "tanh", 0.02)
    mlp.partial_fit(xs[:1], ts[:1])
    for l, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        mlp.coefs_[l][...] = w
        mlp.intercepts_[l][...] = b
    for x, t in zip(xs, ts, strict=True):
        np.testing.assert_allclose(net.predict(x), mlp.predict(x[None, :])[0], rtol=0, atol=1e-12)
        net.learn_one(x, t)
        mlp.partial_fit(x[None, :], t[None, :])  # its delta is y − t per output: ½Σ's gradient
        for l in range(2):
            np.testing.assert_allclose(net.weights[l], mlp.coefs_[l], rtol=0, atol=1e-12)
            np.testing.assert_allclose(net.biases[l], mlp.intercepts_[l], rtol=0, atol=1e-12)


def test_gradients_equal_scikit_learn_backprop():
    """sklearn's internal _backprop gives the same dL/dW and dL/db as ours."""
    pytest.importorskip("sklearn")
    sizes = [6, 5, 4, 1]
    mlp = sklearn_mlp("classifier", sizes, "logistic", 0.1)
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(2, 6))
    mlp.partial_fit(xs, [0, 1], classes=[0, 1])
    net2 = Network(sizes, "sigmoid", "log", seed=2)
    for l, (w, b) in enumerate(zip(net2.weights, net2.biases, strict=True)):
        mlp.coefs_[l][...] = w
        mlp.intercepts_[l][...] = b
    x = xs[:1]
    activations = [x] + [None] * (len(sizes) - 1)
    deltas = [None] * (len(sizes) - 1)
    coef_grads = [np.empty_like(w) for w in mlp.coefs_]
    intercept_grads = [np.empty_like(b) for b in mlp.intercepts_]
    mlp._backprop(x, np.array([[1.0]]), None, activations, deltas, coef_grads, intercept_grads)
    ours = net2.gradients(x[0], 1.0)
    for l, (dw, db) in enumerate(ours):
        np.testing.assert_allclose(dw, coef_grads[l], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(db, intercept_grads[l], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------ update == gradient
@pytest.mark.parametrize(
    "sizes, acts, loss, momentum, l2",
    [
        ([16, 32, 1], "sigmoid", "log", 0.0, 0.0),  # the [n, h, 1] fast path
        ([5, 4, 3, 1], "tanh", "squared", 0.0, 0.0),  # the scalar-output path
        ([5, 4, 3], "sigmoid", "squared", 0.0, 0.0),  # the general path
        ([5, 4, 1], "sigmoid", "log", 0.9, 0.01),  # momentum and L2
    ],
)
def test_learn_one_moves_weights_by_minus_lr_times_gradients(sizes, acts, loss, momentum, l2):
    net = Network(sizes, acts, loss, learning_rate=0.1, momentum=momentum, l2=l2, seed=8)
    x = np.random.default_rng(0).normal(size=sizes[0])
    t = 1.0 if sizes[-1] == 1 else np.ones(sizes[-1])
    before = [(w.copy(), b.copy()) for w, b in zip(net.weights, net.biases, strict=True)]
    grads = net.gradients(x, t)
    net.learn_one(x, t)
    for (w0, b0), (dw, db), w1, b1 in zip(before, grads, net.weights, net.biases, strict=True):
        np.testing.assert_allclose(w1, w0 - 0.1 * dw, rtol=0, atol=1e-15)
        np.testing.assert_allclose(b1, b0 - 0.1 * db, rtol=0, atol=1e-15)


def test_momentum_accumulates_velocity():
    net = Network([2, 3, 1], "sigmoid", "log", learning_rate=0.1, momentum=0.5, seed=1)
    x = np.array([0.5, -0.5])
    g1 = net.gradients(x, 1.0)
    net.learn_one(x, 1.0)
    w_after_1 = net.weights[0].copy()
    g2 = net.gradients(x, 1.0)
    net.learn_one(x, 1.0)
    v = 0.5 * (-0.1 * g1[0][0]) - 0.1 * g2[0][0]
    np.testing.assert_allclose(net.weights[0], w_after_1 + v, rtol=0, atol=1e-15)


# --------------------------------------------------------------------- safety
def test_update_that_would_overflow_is_refused_and_weights_stay():
    net = Network([2, 3, 1], "linear", "squared", learning_rate=1e300, seed=0)
    blob = net.to_bytes()
    with pytest.raises(RefusedUpdate):
        net.learn_one(np.array([1e10, -1e10]), 1e10)
    assert net.refused_updates == 1
    assert net.steps == 0
    restored = Network.from_bytes(blob)
    for w0, w1 in zip(restored.weights, net.weights, strict=True):
        assert np.array_equal(w0, w1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sizes", [[3, 4, 1], [3, 4, 4, 1], [3, 4, 2]])
def test_non_finite_input_is_refused_on_every_path(bad, sizes):
    net = Network(sizes, "sigmoid", "squared", seed=0)
    weights = [w.copy() for w in net.weights]
    t = 1.0 if sizes[-1] == 1 else np.ones(sizes[-1])
    with pytest.raises(RefusedUpdate):
        net.learn_one(np.array([0.1, bad, 0.2]), t)
    with pytest.raises(RefusedUpdate):
        net.learn_one(np.array([0.1, 0.3, 0.2]), t * bad)
    assert all(np.array_equal(a, b) for a, b in zip(weights, net.weights, strict=True))
    assert net.refused_updates == 2


@pytest.mark.parametrize("sizes", [[3, 4, 1], [3, 4, 4, 1], [3, 5, 4, 3, 1]])
def test_huge_but_finite_weights_take_the_checked_path_with_the_same_bits(sizes):
    """Near float64's edge the step is computed aside; where it is finite it is applied,
    bit for bit as the in-place step would have been."""
    a = Network(sizes, "sigmoid", "log", learning_rate=0.1, seed=5)
    b = Network.from_bytes(a.to_bytes())
    b._bound = [1e200] * (len(sizes) - 1)  # pretend the weights might be huge: checked path
    x = np.array([0.2, -0.4, 1.0])
    for t in (1.0, 0.0, 1.0):
        a.learn_one(x, t)
        b.learn_one(x, t)
    assert a.to_bytes() == b.to_bytes()


def test_wrong_shapes_are_clear_errors():
    net = Network([3, 4, 1], seed=0)
    with pytest.raises(ValueError, match="shape"):
        net.learn_one(np.zeros(4), 1.0)
    with pytest.raises(ValueError, match="shape"):
        net.predict(np.zeros(2))
    with pytest.raises(ValueError, match="unknown activation"):
        Network([3, 1], "softsign")
    with pytest.raises(ValueError, match="sigmoid output"):
        Network([3, 1], "tanh", "log")


# ---------------------------------------------------------------- determinism
def test_initialisation_depends_only_on_the_seed():
    np.random.seed(123)  # global state must not matter
    a = Network([16, 32, 1], seed=7)
    np.random.seed(999)
    b = Network([16, 32, 1], seed=7)
    c = Network([16, 32, 1], seed=8)
    assert a.to_bytes() == b.to_bytes() != c.to_bytes()
    assert a.weights[0].shape == (16, 32) and a.biases[0].shape == (32,)
    assert a.weights[1].shape == (32, 1) and a.biases[1].shape == (1,)


def test_predict_returns_a_copy():
    net = Network([2, 2, 1], seed=0)
    p = net.predict(np.array([0.1, 0.2]))
    p[0] = 42.0
    assert net.predict(np.array([0.1, 0.2]))[0] != 42.0


def test_relative_error_floor():
    assert relative_error(np.array([0.0]), np.array([0.0])) == 0.0
    assert relative_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 1.1)
