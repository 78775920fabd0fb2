"""What each processed tick adds to the metrics.

The worker calls `add` once per tick it learned from, and `flush` once per poll batch:
the counters (ticks processed, predictions, backprop steps, refused updates) are summed
over the batch and added once, because a prometheus_client counter takes a lock on every
`inc()`; the histograms (step time, event lag) and the rolling prequential scores per
horizon (`service.scoring.RollingScores`, read by `service.gauges`) take every tick.
"""

from __future__ import annotations

from model.learner import TickResult
from service.metrics import Metrics
from service.protocols import Clock
from service.scoring import RollingScores


class TickMetrics:
    """The per-tick part of the worker's metrics: counted per batch, observed per tick."""

    def __init__(self, metrics: Metrics, clock: Clock, rolling: dict[int, RollingScores]) -> None:
        self.metrics = metrics
        self.clock = clock
        self.rolling = rolling
        self._processed = metrics.ticks.labels(outcome="processed")
        self._step_seconds = metrics.step_seconds
        self._event_lag = metrics.event_lag_seconds
        self._n_processed = self._n_steps = self._n_refused = 0

    def add(self, result: TickResult, ts_ms: int) -> None:
        """One tick learned from, with its event time (ms): runs for every record."""
        self._n_processed += 1
        if result.steps:
            self._n_steps += result.steps
            for seconds in result.step_seconds:
                self._step_seconds.observe(seconds)
        if result.refused:
            self._n_refused += result.refused
        self._event_lag.observe(max(0.0, self.clock.time() - ts_ms / 1000.0))
        rolling = self.rolling
        for score in result.scores:
            rolling[score.horizon].add(score)
            if score.alarm:  # rare: a drift alarm of this symbol's horizon
                self.metrics.drift_alarms.labels(horizon=str(score.horizon)).inc()

    def flush(self) -> None:
        """Add the batch's counts to the counters (predictions: one per processed tick)."""
        if self._n_processed:
            self._processed.inc(self._n_processed)
            self.metrics.predictions.inc(self._n_processed)
        if self._n_steps:
            self.metrics.learn_steps.inc(self._n_steps)
        if self._n_refused:
            self.metrics.refused_updates.inc(self._n_refused)
        self._n_processed = self._n_steps = self._n_refused = 0
