"""The per-horizon scorecard: statistics against independent oracles, fading, exact restore."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, brier_score_loss
from sklearn.metrics import log_loss as sk_log_loss

from model.scorecard import STATE_SIZE, Scorecard, kappa

Sample = tuple[int, float, float, int]  # label, p_net, p_base, persist


def stream(n: int, seed: int = 3) -> list[Sample]:
    """Labels with some persistence, a noisy network, a drifting base rate."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.55).astype(int)
    persist = np.roll(labels, 1)
    persist[0] = 1
    p_net = np.clip(
        0.5 + 0.3 * (2 * labels - 1) * rng.random(n) + 0.2 * rng.normal(size=n), 0.001, 0.999
    )
    p_base = np.clip(0.5 + 0.05 * rng.normal(size=n), 0.01, 0.99)
    return [
        (int(a), float(b), float(c), int(d)) for a, b, c, d in zip(labels, p_net, p_base, persist)
    ]


def fill(samples: list[Sample], alpha: float = 0.999) -> Scorecard:
    card = Scorecard(alpha)
    for s in samples:
        card.add(*s)
    return card


def test_cumulative_statistics_equal_sklearn_and_moa_kappas() -> None:
    samples = stream(2000)
    labels = [s[0] for s in samples]
    card = fill(samples).as_dict()
    calls = {
        "ffbpn": [int(s[1] >= 0.5) for s in samples],
        "base_rate": [int(s[2] >= 0.5) for s in samples],
        "persistence": [s[3] for s in samples],
        "reversal": [1 - s[3] for s in samples],
    }
    acc = {m: accuracy_score(labels, c) for m, c in calls.items()}
    assert card["scored"] == 2000
    assert card["accuracy"] == pytest.approx(acc["ffbpn"], abs=1e-12)
    assert card["log_loss"] == pytest.approx(sk_log_loss(labels, [s[1] for s in samples]), rel=1e-9)
    assert card["brier"] == pytest.approx(
        brier_score_loss(labels, [s[1] for s in samples]), rel=1e-9
    )
    # MOA: kappa temporal = (p0 - p_nochange) / (1 - p_nochange); kappa M with the majority class.
    kt = (acc["ffbpn"] - acc["persistence"]) / (1 - acc["persistence"])
    km = (acc["ffbpn"] - acc["base_rate"]) / (1 - acc["base_rate"])
    assert card["kappa_temporal"] == pytest.approx(kt, abs=1e-12)
    assert card["kappa_m"] == pytest.approx(km, abs=1e-12)
    base = card["baselines"]
    for name in ("base_rate", "persistence", "reversal"):
        assert base[name]["accuracy"] == pytest.approx(acc[name], abs=1e-12)
        assert base[name]["brier"] == pytest.approx(
            brier_score_loss(
                labels, calls[name] if name != "base_rate" else [s[2] for s in samples]
            ),
            rel=1e-9,
        )
    assert base["base_rate"]["log_loss"] == pytest.approx(
        sk_log_loss(labels, [s[2] for s in samples]), rel=1e-9
    )
    assert base["persistence"]["log_loss"] is None and base["reversal"]["log_loss"] is None
    assert base["persistence"]["kappa_temporal"] == 0.0
    assert base["base_rate"]["kappa_m"] == 0.0


def test_fading_statistics_weigh_the_past_by_alpha_to_the_age() -> None:
    alpha = 0.99
    samples = stream(1500, seed=5)
    card = fill(samples, alpha).as_dict()
    labels = np.array([s[0] for s in samples], dtype=float)
    p_net = np.array([s[1] for s in samples])
    w = alpha ** np.arange(len(samples) - 1, -1, -1)
    hits = ((p_net >= 0.5) == (labels == 1)).astype(float)
    persist_hits = (np.array([s[3] for s in samples]) == labels).astype(float)
    fading = card["fading"]
    assert fading["weight"] == pytest.approx(w.sum(), rel=1e-12)
    assert fading["accuracy"] == pytest.approx((w * hits).sum() / w.sum(), rel=1e-10)
    assert fading["brier"] == pytest.approx((w * (p_net - labels) ** 2).sum() / w.sum(), rel=1e-10)
    p = np.clip(p_net, 1e-15, 1 - 1e-15)
    ll = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert fading["log_loss"] == pytest.approx((w * ll).sum() / w.sum(), rel=1e-10)
    ref = (w * persist_hits).sum() / w.sum()
    assert fading["kappa_temporal"] == pytest.approx(
        (fading["accuracy"] - ref) / (1 - ref), rel=1e-9
    )
    assert card["baselines"]["reversal"]["fading"]["accuracy"] == pytest.approx(1 - ref, rel=1e-10)


def test_fading_follows_a_change_the_cumulative_figure_hides() -> None:
    good = [(1, 0.9, 0.5, 0)] * 5000
    bad = [(1, 0.1, 0.5, 0)] * 1000  # the network turns wrong for the last 1,000
    card = fill(good + bad, 0.999).as_dict()
    assert card["accuracy"] == pytest.approx(5000 / 6000)
    assert card["fading"]["accuracy"] < 0.4  # 1 - 0.999**1000 of the weight is recent


def test_empty_and_undefined_figures_are_none() -> None:
    card = Scorecard().as_dict()
    assert card["scored"] == 0 and card["accuracy"] is None and card["kappa_m"] is None
    assert card["fading"]["accuracy"] is None and card["fading"]["weight"] == 0.0
    perfect_persistence = fill([(1, 0.9, 0.4, 1)] * 10).as_dict()
    assert perfect_persistence["kappa_temporal"] is None  # the reference is never wrong
    assert kappa(0.7, None) is None and kappa(0.75, 0.5) == 0.5


def test_restore_continues_bit_for_bit() -> None:
    samples = stream(3000, seed=9)
    whole = fill(samples)
    first = fill(samples[:1234])
    blob = first.state().astype("<f8").tobytes()
    again = Scorecard.from_state(np.frombuffer(blob, dtype="<f8"), 0.999)
    for s in samples[1234:]:
        again.add(*s)
    assert again.state().tobytes() == whole.state().tobytes()
    assert json.dumps(again.as_dict()) == json.dumps(whole.as_dict())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1),
            st.floats(0, 1),
            st.floats(0, 1),
            st.integers(0, 1),
        ),
        max_size=40,
    ),
    st.integers(0, 40),
)
def test_any_split_of_any_stream_restores_to_the_same_state(
    samples: list[Sample], cut: int
) -> None:
    cut = min(cut, len(samples))
    whole = fill(samples, 0.9)
    card = Scorecard.from_state(fill(samples[:cut], 0.9).state(), 0.9)
    for s in samples[cut:]:
        card.add(*s)
    assert card.state().tobytes() == whole.state().tobytes()
    out = card.as_dict()
    for value in (out["accuracy"], out["log_loss"], out["brier"]):
        assert value is None or 0.0 <= value < 40.0


def test_malformed_states_and_factors_are_refused() -> None:
    good = fill(stream(10)).state()
    for bad in (good[:-1], np.full(STATE_SIZE, np.nan), -good, np.r_[2.5, good[1:]]):
        with pytest.raises(ValueError):
            Scorecard.from_state(bad, 0.999)
    hits_over_n = good.copy()
    hits_over_n[1] = 11.0
    with pytest.raises(ValueError, match="inconsistent"):
        Scorecard.from_state(hits_over_n, 0.999)
    for alpha in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fading factor"):
            Scorecard(alpha)


def test_recent_summary_agrees_with_the_faded_figures() -> None:
    card = fill(stream(800, seed=2), 0.99)
    weight, kappa_t, lead = card.recent()
    faded = card.as_dict()["fading"]
    baselines = card.as_dict()["baselines"]
    best = max(baselines[b]["fading"]["accuracy"] for b in baselines)
    assert weight == faded["weight"] and kappa_t == faded["kappa_temporal"]
    assert lead == pytest.approx(faded["accuracy"] - best, abs=1e-12)
    assert Scorecard().recent() == (0.0, None, None)
