"""The Page-Hinkley drift detector and the per-horizon monitor: alarms, restore, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from model.drift import (
    BOOST_FACTOR,
    BOOST_STEPS,
    PH_THRESHOLD,
    RESPONSES,
    DriftMonitor,
    PageHinkley,
)


def losses(n_before: int, n_after: int, before: float, after: float, seed: int = 1) -> list[float]:
    """Log losses of a forecaster saying p = 0.75 for its call, right with probability
    `before`, then `after`: the two-valued, skewed stream the detector sees live."""
    rng = np.random.default_rng(seed)
    right = (
        rng.random(n_before + n_after) < np.r_[np.full(n_before, before), np.full(n_after, after)]
    )
    return np.where(right, -np.log(0.75), -np.log(0.25)).tolist()


def alarms_at(values: list[float], detector: PageHinkley) -> list[int]:
    return [i for i, x in enumerate(values) if detector.update(x)]


def test_a_rise_in_the_mean_loss_is_caught_soon_and_a_flat_stream_is_quiet() -> None:
    flat = alarms_at(losses(50_000, 0, 0.8, 0.8), PageHinkley())
    assert len(flat) <= 2  # docs/drift.md: a few tenths of a false alarm per 10,000 scores
    rise = alarms_at(losses(5_000, 2_000, 0.8, 0.5), PageHinkley())
    # the mean loss rises by 0.3 * ln 3 = 0.33: 15 / (0.33 - 0.05) ~ 54 scores on average
    after = [a for a in rise if a >= 5_000]
    assert after and after[0] < 5_200


def test_a_fall_in_the_loss_is_not_drift() -> None:
    assert alarms_at(losses(5_000, 5_000, 0.5, 0.9), PageHinkley()) == []


def test_exact_page_hinkley_arithmetic_on_a_step() -> None:
    ph = PageHinkley(delta=0.0, threshold=2.5, min_samples=1)
    # mean after 4 zeros is 0; the 5th value 5: mean 1, m = 4, min 0 -> 4 > 2.5
    assert [ph.update(x) for x in (0.0, 0.0, 0.0, 0.0, 5.0)] == [False] * 4 + [True]
    assert ph.state() == [0.0, 0.0, 0.0, 0.0]  # restarted after the alarm


def test_a_restored_monitor_raises_the_same_alarms_at_the_same_ticks() -> None:
    stream = losses(3_000, 3_000, 0.9, 0.4, seed=4) + losses(3_000, 3_000, 0.9, 0.4, seed=5)
    whole = DriftMonitor("boost")
    expected = [t for t, x in enumerate(stream) if whole.observe(x, t)]
    assert len(expected) >= 2
    part = DriftMonitor("boost")
    got = [t for t, x in enumerate(stream[:4_000]) if part.observe(x, t)]
    blob = part.state().astype("<f8").tobytes()
    again = DriftMonitor.from_state(np.frombuffer(blob, dtype="<f8"), "boost")
    got += [t for t, x in enumerate(stream[4_000:], start=4_000) if again.observe(x, t)]
    assert got == expected
    assert again.state().tobytes() == whole.state().tobytes()
    assert again.as_dict() == {
        "alarms": len(expected),
        "last_alarm_tick": expected[-1],
        "response": "boost",
    }


def test_boost_arms_a_budget_of_faster_steps_and_the_others_do_not() -> None:
    for response in RESPONSES:
        monitor = DriftMonitor(response)
        fired = [monitor.observe(v, t) for t, v in enumerate(losses(200, 400, 0.95, 0.2))]
        assert any(fired)
        if response != "boost":
            assert monitor.boost_left == 0 and monitor.rate_factor == 1.0
            continue
        assert monitor.boost_left == BOOST_STEPS and monitor.rate_factor == BOOST_FACTOR
        for _ in range(BOOST_STEPS - 1):
            monitor.stepped()
        assert monitor.rate_factor == BOOST_FACTOR
        monitor.stepped()
        assert monitor.rate_factor == 1.0 and monitor.boost_left == 0
        monitor.stepped()  # no boost left: stays spent
        assert monitor.boost_left == 0
    assert DriftMonitor().as_dict() == {"alarms": 0, "last_alarm_tick": None, "response": "none"}


def test_bad_settings_and_states_are_refused() -> None:
    with pytest.raises(ValueError, match="none, reset, boost"):
        DriftMonitor("panic")
    for kwargs in ({"delta": -1.0}, {"threshold": 0.0}, {"min_samples": 0}):
        with pytest.raises(ValueError):
            PageHinkley(**kwargs)  # type: ignore[arg-type]
    good = DriftMonitor().state()
    bad_states = [good[:3], np.full(7, np.inf)]
    for index, value in ((0, 1.5), (3, 1.0), (4, -1.0), (5, -2.0), (6, BOOST_STEPS + 1.0)):
        bad = good.copy()
        bad[index] = value
        bad_states.append(bad)
    for bad in bad_states:
        with pytest.raises(ValueError):
            DriftMonitor.from_state(bad, "none")


def test_the_threshold_grows_with_the_square_root_of_the_horizon() -> None:
    assert DriftMonitor("none", 1).detector.threshold == PH_THRESHOLD
    assert DriftMonitor("none", 4).detector.threshold == 2 * PH_THRESHOLD
    restored = DriftMonitor.from_state(DriftMonitor("none", 9).state(), "none", 9)
    assert restored.detector.threshold == 3 * PH_THRESHOLD
    with pytest.raises(ValueError, match="horizon"):
        DriftMonitor("none", 0)
