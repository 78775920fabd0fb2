"""Valid but extreme tick values (any finite price > 0 is valid) never crash the learner.

Found by tests/integration/test_hostile.py: a price of 5e-324 after 1e300 made the log
return log(0) and the worker crashed on that tick at every restart (a crash loop).
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from model.learner import LearnerConfig, OnlineLearner

EXTREMES = [5e-324, 1e-300, 1.7976931348623157e308, 1e300, 1.0, 2.2250738585072014e-308]
prices = st.floats(min_value=5e-324, max_value=1.7976931348623157e308, allow_nan=False)


def test_extreme_price_ratios_give_finite_predictions_and_state() -> None:
    learner = OnlineLearner("X", LearnerConfig())
    for i, price in enumerate(EXTREMES * 10):
        result = learner.on_tick(i, price)
        assert math.isfinite(result.prediction.p_up)
    restored = OnlineLearner.from_bytes(learner.to_bytes(), LearnerConfig())
    assert restored.weights_sha256() == learner.weights_sha256()


@given(st.lists(prices, min_size=2, max_size=60))
def test_any_valid_price_sequence_is_learned_without_error(sequence: list[float]) -> None:
    learner = OnlineLearner("X", LearnerConfig(window=4))
    for i, price in enumerate(sequence):
        assert 0.0 <= learner.on_tick(i, price).prediction.p_up <= 1.0
