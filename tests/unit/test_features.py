"""Tick features: scale-free, O(1) state, driven by non-zero moves only, exactly restorable."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import TickFeatures, feature_names, n_features


def features_after(prices: list[float], window: int = 4) -> tuple[TickFeatures, np.ndarray]:
    f = TickFeatures(window)
    for p in prices:
        f.update(p)
    x = np.zeros(f.n_features)
    f.write(x)
    return f, x


def test_names_match_the_vector_length_for_every_window() -> None:
    for window in (2, 3, 4, 16, 100):
        assert len(feature_names(window)) == n_features(window) == TickFeatures(window).n_features


def test_features_are_ready_only_after_a_full_window_of_moves() -> None:
    f = TickFeatures(3)
    for p in [10.0, 10.0, 10.0, 10.5, 10.5, 10.0]:  # two moves
        f.update(p)
    assert not f.ready
    f.update(10.25)
    assert f.ready


def test_repeated_prices_do_not_enter_the_move_window() -> None:
    moves = [100.0, 100.25, 100.0, 100.25, 100.5, 100.25]
    with_repeats = []
    for p in moves:
        with_repeats += [p] * 5
    f1, x1 = features_after(moves)
    f2, x2 = features_after(with_repeats)
    k = f1.k
    assert np.array_equal(x1[: k + 1], x2[: k + 1])  # moves and trend agree
    assert f2.run == 4 and f1.run == 0
    names = feature_names(4)
    assert x1[names.index("bounce")] == -1.0  # last move down, fresh
    assert x2[names.index("bounce")] == pytest.approx(-1.0 / 5)


def test_features_do_not_depend_on_the_price_scale() -> None:
    rng = np.random.default_rng(3)
    base = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    _, x1 = features_after(list(base), window=16)
    _, x2 = features_after(list(base * 1000.0), window=16)
    np.testing.assert_allclose(x1, x2, rtol=1e-9, atol=1e-12)


def test_scaled_moves_are_clipped_and_finite_on_a_crash() -> None:
    prices = [100.0, 100.01, 100.0, 100.01, 100.0, 1.0, 1e-9, 1e9]
    _, x = features_after(prices, window=4)
    assert np.isfinite(x).all()
    assert np.abs(x).max() <= 4.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([99.5, 99.75, 100.0, 100.25, 100.5]), min_size=1, max_size=80),
    st.integers(0, 79),
    st.integers(2, 8),
)
def test_state_round_trip_continues_identically(
    prices: list[float], split: int, window: int
) -> None:
    split = min(split, len(prices))
    a = TickFeatures(window)
    for p in prices[:split]:
        a.update(p)
    b = TickFeatures(window)
    b.load_state_arrays(*a.state_arrays())
    for p in prices[split:]:
        a.update(p)
        b.update(p)
    xa, xb = np.zeros(a.n_features), np.zeros(b.n_features)
    a.write(xa)
    b.write(xb)
    assert xa.tobytes() == xb.tobytes()
    assert [s.tobytes() for s in a.state_arrays()] == [s.tobytes() for s in b.state_arrays()]


def test_load_state_refuses_wrong_shapes_and_values() -> None:
    f = TickFeatures(4)
    scalars, moves = f.state_arrays()
    with pytest.raises(ValueError, match="expected"):
        f.load_state_arrays(scalars[:-1], moves)
    bad = scalars.copy()
    bad[0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        f.load_state_arrays(bad, moves)
    bad = scalars.copy()
    bad[4] = 2.5  # n_moves
    with pytest.raises(ValueError, match="count"):
        f.load_state_arrays(bad, moves)


def test_update_cost_does_not_grow_with_the_window() -> None:
    import time

    def cost(window: int) -> float:
        f = TickFeatures(window)
        x = np.zeros(f.n_features)
        prices = [100.0 + 0.25 * (i % 3) for i in range(20_000)]
        start = time.perf_counter()
        for p in prices:
            f.update(p)
            f.write(x)
        return time.perf_counter() - start

    small, large = min(cost(8) for _ in range(3)), min(cost(4096) for _ in range(3))
    assert large < 2.0 * small  # O(1): a 512x larger window costs about the same


def test_record_says_bounce_on_a_zigzag_and_run_on_a_trend() -> None:
    names = feature_names(4)
    zigzag = [100.0 + 0.25 * (i % 2) for i in range(200)]
    _, x = features_after(zigzag)
    s = x[names.index("sign")]
    assert s == (1.0 if zigzag[-1] > zigzag[-2] else -1.0)
    assert x[names.index("record")] == pytest.approx(-s, abs=0.01)  # expect the reversal
    assert x[names.index("level_record")] * s < -0.9  # every level was short: bounced
    _, x = features_after([100.0 + 0.25 * i for i in range(200)])
    assert x[names.index("sign")] == 1.0
    assert x[names.index("record")] == pytest.approx(1.0, abs=0.01)  # expect the run


def test_level_record_keeps_long_and_short_levels_apart() -> None:
    """Moves out of long levels run on, out of short ones bounce: each record learns its own."""
    prices, p, up = [], 100.0, 1
    for i in range(400):
        if i % 2:  # a short level, then a bounce
            up = -up
            prices += [p]
        else:  # a long level, then a break in the same direction
            prices += [p] * 30
        p += 0.25 * up
        prices.append(p)
    f, x = features_after(prices)
    assert f.record_long > 0.9 and f.record_short < -0.9
    names = feature_names(4)
    assert x[names.index("level_record")] == pytest.approx(x[names.index("sign")] * f.record_short)
