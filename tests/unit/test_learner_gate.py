"""The gate of each horizon: the counting rule's cells, the trust in the network's calls
against it, the gated expert that is mixed with the base rate, and its place in the learner's
state."""

from __future__ import annotations

import csv
import gzip
from functools import cache
from pathlib import Path

import pytest

from model.features import N_CELLS, TickFeatures
from model.learner import CELL_PRIOR, RULE_PRIOR, TRUST_RATE, Horizon, LearnerConfig, OnlineLearner

DATA = Path(__file__).resolve().parents[2] / "data"


@cache
def _es() -> list[tuple[int, float]]:
    with gzip.open(DATA / "es_ticks_2013-09-01_03.csv.gz", "rt", newline="") as f:
        return [(int(r["ts"]), float(r["price"])) for r in csv.DictReader(f)]


def es_ticks(start: int, size: int) -> list[tuple[int, float]]:
    return _es()[start : start + size]


def test_a_cell_is_the_last_moves_sign_and_how_long_the_level_has_held() -> None:
    f = TickFeatures(4)
    assert f.cell() == -1  # no move yet
    f.update(100.0)
    f.update(101.0)  # an up move: fresh (run 0)
    assert f.cell() == 1
    f.update(100.5)  # a down move
    assert f.cell() == 0
    cells = []
    for _ in range(6):  # the level holds: run / (1 + mean run) climbs through RUN_BOUNDS
        f.update(100.5)
        cells.append(f.cell())
    assert cells == sorted(cells) and cells[0] >= 2 and cells[-1] == N_CELLS - 2
    assert all(c % 2 == 0 for c in cells)  # still after a down move
    daily = TickFeatures(4)
    daily.update(10.0)
    for price, cell in ((11.0, 1), (10.5, 0), (10.7, 1)):  # every tick a move: the sign alone
        daily.update(price)
        assert daily.cell() == cell


def test_the_counting_rule_shrinks_a_cell_toward_its_sign_and_the_sign_toward_the_base_rate():
    hz = Horizon(1, 0)
    assert hz.rule_rate(1) == hz.rule_rate(0) == hz.rule_rate(-1) == 0.5
    for label, cell in [(0, 1), (0, 1), (1, 3), (1, 0), (1, -1)]:
        hz.count(label, cell)
    base = (3 + 1) / (5 + 2)  # every label counts toward the base rate, cell or none
    assert hz.base == base == hz.rule_rate(-1)
    assert hz.cell_ups[:4] == [1, 0, 0, 1] and hz.cell_downs[:4] == [0, 2, 0, 0]
    up_sign = (1 + RULE_PRIOR * base) / (3 + RULE_PRIOR)  # cells 1 and 3: after an up move
    down_sign = (1 + RULE_PRIOR * base) / (1 + RULE_PRIOR)
    assert hz.rule_rate(1) == pytest.approx((0 + CELL_PRIOR * up_sign) / (2 + CELL_PRIOR))
    assert hz.rule_rate(3) == pytest.approx((1 + CELL_PRIOR * up_sign) / (1 + CELL_PRIOR))
    assert hz.rule_rate(5) == pytest.approx(up_sign)  # an empty cell: its sign's rule
    assert hz.rule_rate(2) == pytest.approx(down_sign)


def test_a_shut_gate_gives_the_rules_probability_where_the_network_calls_against_it() -> None:
    hz = Horizon(1, 0)
    for _ in range(20):  # after a fresh up move the price came back down: the bounce
        hz.count(0, 1)
    q = hz.rule_rate(1)
    assert q < 0.5 and hz.trust == 0.0
    assert hz.gated(0.3, 1) == (0.3, q)  # agrees with the rule: the network's own
    assert hz.gated(0.7, 1) == (q, q)  # against it, not yet trusted: the rule's
    hz.trust = TRUST_RATE
    assert hz.gated(0.7, 1) == (0.7, q)  # trusted: the network's call stands


def test_trust_follows_the_outcome_of_the_networks_calls_against_the_rule() -> None:
    hz = Horizon(1, 0)

    def score(p_raw: float, rule: float, label: int) -> None:
        hz.pending_raw[0], hz.pending_rule[0] = p_raw, rule
        hz.pending_net[0] = hz.pending_p[0] = hz.pending_base[0] = 0.5
        hz.resolve(0, label, 1, 1)

    score(0.7, 0.2, 1)  # against the rule, right
    assert hz.trust == TRUST_RATE
    score(0.3, 0.2, 1)  # agreeing with the rule: no evidence either way
    assert hz.trust == TRUST_RATE
    score(0.7, 0.2, 0)  # against the rule, wrong
    score(0.2, 0.7, 1)
    expected = 0.0
    for right in (1.0, -1.0, -1.0):
        expected += TRUST_RATE * (right - expected)
    assert hz.trust == expected < 0 and hz.scored == 4


def test_on_a_fresh_start_in_a_strong_bounce_the_one_tick_call_keeps_up_with_reversal() -> None:
    """The 4th 50k slice of the E-mini file, started fresh: reversal is right 89% of the time
    one tick ahead and the network, still learning, trails it by ~2 points; the gate keeps
    the published call within half a point of the rule (issue 12's goal)."""
    learner = OnlineLearner("ES", LearnerConfig(horizons=(1,)))
    n = hits = raw = reversal = 0
    for ts, price in es_ticks(150_000, 50_000):
        for s in learner.on_tick(ts, price).scores:
            n += 1
            hits += (s.p_net >= 0.5) == (s.label == 1)
            raw += (s.p_raw >= 0.5) == (s.label == 1)
            reversal += s.persist != s.label
    assert n > 2000 and reversal / n > 0.85
    assert raw / n < reversal / n - 0.01  # what the gate is for
    assert hits / n >= reversal / n - 0.005


def test_without_the_gate_the_mixed_expert_is_the_network_itself() -> None:
    learner = OnlineLearner("ES", LearnerConfig(horizons=(1, 5), rule_gate=False))
    for ts, price in es_ticks(150_000, 5_000):
        learner.on_tick(ts, price)
    for hz in learner.horizons:
        assert hz.pending_net == hz.pending_raw and hz.trust != 0.0


def test_the_gate_state_restores_bit_for_bit() -> None:
    config = LearnerConfig()
    ticks = es_ticks(150_000, 12_000)
    never_stopped, restarted = OnlineLearner("ES", config), OnlineLearner("ES", config)
    for i, (ts, price) in enumerate(ticks):
        if i == 8_000:
            assert all(hz.trust != 0.0 and sum(hz.cell_ups) > 0 for hz in restarted.horizons)
            restarted = OnlineLearner.from_bytes(restarted.to_bytes(), config)
        a, b = never_stopped.on_tick(ts, price), restarted.on_tick(ts, price)
        assert a.prediction == b.prediction and a.scores == b.scores
    assert never_stopped.to_bytes() == restarted.to_bytes()
    for a, b in zip(never_stopped.horizons, restarted.horizons, strict=True):
        assert a.trust == b.trust and (a.cell_ups, a.cell_downs) == (b.cell_ups, b.cell_downs)
        assert (a.sign_ups, a.sign_labels) == (b.sign_ups, b.sign_labels)
        assert [a.rule_rate(c) for c in range(N_CELLS)] == [b.rule_rate(c) for c in range(N_CELLS)]
        assert a.pending_raw == b.pending_raw and a.pending_rule == b.pending_rule
