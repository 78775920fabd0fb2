"""The learner's per-horizon scorecards and drift monitors: fed by its own scores, in its state,
restored exactly, and the drift responses acting on the right network."""

from __future__ import annotations

import numpy as np
import pytest

from model.drift import BOOST_FACTOR, BOOST_STEPS
from model.learner import LearnerConfig, OnlineLearner, build_network
from model.network import Network
from model.scorecard import Scorecard


def flips(seed: int, segments: int = 6, length: int = 1500) -> list[tuple[int, float]]:
    """Ticks whose moves repeat the last sign with probability 0.9, then 0.1, ...: each
    switch turns what the network learned into the wrong call."""
    rng = np.random.default_rng(seed)
    out, price, sign = [], 100.0, 1.0
    for s in range(segments):
        q = 0.9 if s % 2 == 0 else 0.1
        for u in rng.random(length):
            sign = sign if u < q else -sign
            price += 0.25 * sign
            out.append((len(out), price))
    return out


def run(config: LearnerConfig, ticks: list[tuple[int, float]], restart_at: int | None = None):
    learner = OnlineLearner("S", config)
    results = []
    for i, (ts, p) in enumerate(ticks):
        if i == restart_at:
            learner = OnlineLearner.from_bytes(learner.to_bytes(), config)
        results.append(learner.on_tick(ts, p))
    return learner, results


def test_each_horizons_scorecard_is_the_scorecard_of_its_own_scores() -> None:
    config = LearnerConfig(horizons=(1, 3), hidden=(8,), fading_factor=0.99)
    learner, results = run(config, flips(1, segments=2, length=800))
    for hz in learner.horizons:
        card = Scorecard(0.99)
        for r in results:
            for s in r.scores:
                if s.horizon == hz.h:
                    card.add(s.label, s.p_net, s.p_base, s.persist)
        assert card.state().tobytes() == hz.card.state().tobytes()
        assert learner.scorecards()[str(hz.h)] == card.as_dict()
        assert learner.scorecards()[str(hz.h)]["scored"] == hz.scored > 0


@pytest.mark.parametrize("response", ["none", "reset", "boost"])
def test_alarms_and_responses_are_in_the_state_and_restore_bit_for_bit(response: str) -> None:
    config = LearnerConfig(horizons=(1, 2), hidden=(8,), drift_response=response)
    ticks = flips(2)
    whole, expected = run(config, ticks)
    alarms = [(i, s.horizon) for i, r in enumerate(expected) for s in r.scores if s.alarm]
    assert len(alarms) >= 3  # the flips are seen
    cut = alarms[1][0] + 7  # inside a boost, just after a reset
    restored, got = run(config, ticks, restart_at=cut)
    assert [r.prediction for r in got] == [r.prediction for r in expected]
    assert restored.to_bytes() == whole.to_bytes()
    states = whole.drift_states()
    for h in (1, 2):
        fired = [i for i, hh in alarms if hh == h]
        assert states[str(h)]["alarms"] == len(fired)
        assert states[str(h)]["last_alarm_tick"] == (fired[-1] + 1 if fired else None)
        assert states[str(h)]["response"] == response


def test_reset_puts_the_alarmed_horizons_network_back_to_its_initial_weights() -> None:
    config = LearnerConfig(horizons=(1, 2), hidden=(8,), drift_response="reset")
    ticks = flips(3)
    learner = OnlineLearner("S", config)
    for ts, p in ticks:
        before = [learner.nets.network(k) for k in (0, 1)]
        result = learner.on_tick(ts, p)
        alarmed = [s.horizon for s in result.scores if s.alarm]
        if not alarmed:
            continue
        h = alarmed[0]
        k = config.horizons.index(h)
        fresh = build_network("S", config, h)
        other = 1 - k
        # the alarmed network stepped once from its initial weights; the other did not reset
        assert learner.nets.steps[k] == before[k].steps + 1
        after = learner.nets.network(k)
        assert distance(after, fresh) < distance(after, before[k])
        assert learner.nets.network(other).steps >= before[other].steps
        return
    raise AssertionError("no drift alarm on the flipping stream")


def distance(a: Network, b: Network) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a.weights, b.weights, strict=True))


def test_boost_multiplies_the_rate_of_the_alarmed_horizon_for_its_budget_of_steps() -> None:
    config = LearnerConfig(horizons=(1,), hidden=(8,), drift_response="boost")
    learner = OnlineLearner("S", config)
    boosted_steps, seen_alarm = 0, False
    for ts, p in flips(4):
        result = learner.on_tick(ts, p)
        seen_alarm = seen_alarm or any(s.alarm for s in result.scores)
        if result.steps and learner.nets.learning_rates[0] == config.learning_rate * BOOST_FACTOR:
            boosted_steps += 1
        if seen_alarm and learner.horizons[0].drift.boost_left == 0:
            break
    assert seen_alarm and BOOST_STEPS <= boosted_steps <= BOOST_STEPS + 1
    result = learner.on_tick(10**9, 1.0)  # the next step after the budget: back to the rate
    assert learner.nets.learning_rates[0] == config.learning_rate


def test_bad_fading_factors_and_responses_are_refused() -> None:
    for bad in ({"fading_factor": 0.0}, {"fading_factor": 1.01}, {"drift_response": "panic"}):
        with pytest.raises(ValueError):
            LearnerConfig(**bad)  # type: ignore[arg-type]
