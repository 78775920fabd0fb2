"""TickMetrics: counters move once per batch, histograms and rolling scores once per tick."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from model.learner import Prediction, Score, TickResult
from service.metrics import Metrics
from service.scoring import RollingScores
from service.tick_metrics import TickMetrics
from tests.unit.fakes import FakeClock


def result(steps: int, refused: int, scores: tuple[Score, ...]) -> TickResult:
    prediction = Prediction(0.5, "up", 0, True, 1, ())
    return TickResult(prediction, scores, steps, refused, (1e-5,) * steps)


def test_counts_wait_for_the_batch_and_everything_else_is_per_tick() -> None:
    metrics = Metrics(CollectorRegistry(), horizons=(1, 5))
    r = metrics.registry
    rolling = {1: RollingScores(10), 5: RollingScores(10)}
    clock = FakeClock(start=1_000.0)
    tm = TickMetrics(metrics, clock, rolling)
    up = Score(1, 1, 0.7, 0.5, 1, 0.7)
    alarm = Score(5, 0, 0.4, 0.5, 0, 0.4, alarm=True)
    tm.add(result(2, 0, (up,)), ts_ms=999_000)  # 1 s old
    tm.add(result(1, 1, (up, alarm)), ts_ms=1_000_000)
    assert r.get_sample_value("tickprop_ticks_total", {"outcome": "processed"}) == 0
    assert r.get_sample_value("tickprop_step_seconds_count") == 3
    assert r.get_sample_value("tickprop_event_lag_seconds_count") == 2
    assert r.get_sample_value("tickprop_event_lag_seconds_sum") == 1.0
    assert r.get_sample_value("tickprop_drift_alarms_total", {"horizon": "5"}) == 1
    assert rolling[1].accuracy("ffbpn") == 1.0 and rolling[5].accuracy("ffbpn") == 1.0
    tm.flush()
    assert r.get_sample_value("tickprop_ticks_total", {"outcome": "processed"}) == 2
    assert r.get_sample_value("tickprop_predictions_total") == 2
    assert r.get_sample_value("tickprop_learn_steps_total") == 3
    assert r.get_sample_value("tickprop_refused_updates_total") == 1
    tm.flush()  # nothing new: nothing added twice
    assert r.get_sample_value("tickprop_predictions_total") == 2
