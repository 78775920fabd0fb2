"""Prequential scores: rolling and whole-run sums equal a recount of the scores."""

from __future__ import annotations

import math
import random

from model.learner import MODELS, PROB_MODELS, Score
from service.scoring import RollingScores, Tally


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
        for m in PROB_MODELS:
            losses = []
            for s in window:
                p = min(max(s.p_up[m], 1e-15), 1 - 1e-15)
                losses.append(-math.log(p if s.label else 1 - p))
            assert math.isclose(rolling.log_loss(m), sum(losses) / len(window), rel_tol=1e-9)


def test_a_tally_equals_a_recount_of_every_score() -> None:
    rng = random.Random(5)
    tally = Tally()
    seen = [random_score(rng) for _ in range(300)]
    for score in seen:
        tally.add(score)
    assert tally.scored == 300
    for m in MODELS:
        assert tally.accuracy(m) == sum(s.direction[m] == s.label for s in seen) / 300
    for m in PROB_MODELS:
        losses = []
        for s in seen:
            p = min(max(s.p_up[m], 1e-15), 1 - 1e-15)
            losses.append(-math.log(p if s.label else 1 - p))
        assert math.isclose(tally.log_loss(m), sum(losses) / 300, rel_tol=1e-12)
    assert tally.log_loss("persistence") is None and Tally().accuracy("ffbpn") is None
