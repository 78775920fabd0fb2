"""The worker's rolling prequential scores: incremental sums equal a recount of the window."""

from __future__ import annotations

import math
import random

from model.learner import Score
from service.worker import MODELS, PROBABILISTIC, RollingScores


def random_score(rng: random.Random) -> Score:
    p_net = rng.choice([0.0, 0.5, 1.0, rng.random()])
    return Score(
        horizon=1,
        label=rng.randint(0, 1),
        p_net=p_net,
        p_base=rng.choice([0.0, 0.5, 1.0, rng.random()]),
        persist=rng.randint(0, 1),
        p_raw=p_net,
    )


def test_rolling_scores_equal_a_recount_of_the_last_n() -> None:
    rng = random.Random(3)
    rolling = RollingScores(size=50)
    seen: list[Score] = []
    assert rolling.accuracy("ffbpn") is None and rolling.log_loss("ffbpn") is None
    for _ in range(437):
        score = random_score(rng)
        rolling.add(score)
        seen.append(score)
        window = seen[-50:]
        for m in MODELS:
            hits = sum(s.direction[m] == s.label for s in window)
            assert rolling.accuracy(m) == hits / len(window)
        for m in PROBABILISTIC:
            losses = []
            for s in window:
                p = min(max(s.p_up[m], 1e-15), 1 - 1e-15)
                losses.append(-math.log(p if s.label else 1 - p))
            assert math.isclose(rolling.log_loss(m), sum(losses) / len(window), rel_tol=1e-9)
