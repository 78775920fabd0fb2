"""Drift detection on a symbol's loss stream, and what the learner does on an alarm.

`PageHinkley` watches the network's per-prediction log loss for a rise in its mean
(Page 1954; Hinkley 1971; the form of Gama et al. 2013, "On evaluating stream
learning algorithms"):

    mean_t = mean_{t-1} + (x_t - mean_{t-1}) / t
    m_t    = m_{t-1} + (x_t - mean_t - delta)          (the cumulative deviation)
    M_t    = min(M_{t-1}, m_t)
    alarm when t >= min_samples and m_t - M_t > threshold; then the test restarts.

`delta` is the rise too small to care about, `threshold` the evidence an alarm needs
(in units of summed log loss). Why Page-Hinkley and these defaults: docs/drift.md, made
by benchmarks/eval_drift.py on synthetic regime switches (delay, false alarms, cost
per update against ADWIN).

`DriftMonitor` is one horizon's detector plus the alarm count, the tick of the last
alarm and the state of the response (`RESPONSES`). At horizon h consecutive labels share
h - 1 of their h ticks, so the losses come in correlated runs and their partial sums
spread ~sqrt(h) times wider: the monitor's threshold is PH_THRESHOLD * sqrt(h) (on the
E-mini ticks this takes horizon 20 from 187 alarms to 4, docs/drift.md).

- ``none``: count the alarm, change nothing;
- ``reset``: the learner puts that horizon's network back to its initial weights and
  clears its momentum (its step count, hence model_version, keeps counting);
- ``boost``: the learner multiplies that horizon's learning rate by `BOOST_FACTOR` for
  its next `BOOST_STEPS` backprop steps.

All state is a small float64 vector (`state` / `from_state`, exact), so a restored
learner raises the same alarms at the same ticks as one that never stopped.
"""

from __future__ import annotations

import math

import numpy as np

RESPONSES = ("none", "reset", "boost")
BOOST_FACTOR = 4.0
BOOST_STEPS = 500

PH_DELTA = 0.05
PH_THRESHOLD = 15.0
PH_MIN_SAMPLES = 30


class PageHinkley:
    """Page-Hinkley test for an increase of the mean of a stream; O(1) per value."""

    __slots__ = ("delta", "threshold", "min_samples", "n", "mean", "m", "m_min")

    def __init__(
        self,
        delta: float = PH_DELTA,
        threshold: float = PH_THRESHOLD,
        min_samples: int = PH_MIN_SAMPLES,
    ) -> None:
        if not (math.isfinite(delta) and delta >= 0.0):
            raise ValueError(f"delta must be finite and >= 0, got {delta}")
        if not (math.isfinite(threshold) and threshold > 0.0):
            raise ValueError(f"threshold must be finite and > 0, got {threshold}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.restart()

    def restart(self) -> None:
        """Forget the stream seen so far (after an alarm)."""
        self.n = 0.0
        self.mean = 0.0
        self.m = 0.0
        self.m_min = 0.0

    def update(self, x: float) -> bool:
        """Add one value; True when it raises an alarm (the test then restarts)."""
        self.n += 1.0
        self.mean += (x - self.mean) / self.n
        self.m += x - self.mean - self.delta
        if self.m < self.m_min:
            self.m_min = self.m
        if self.n >= self.min_samples and self.m - self.m_min > self.threshold:
            self.restart()
            return True
        return False

    def state(self) -> list[float]:
        return [self.n, self.mean, self.m, self.m_min]

    def load_state(self, values: list[float]) -> None:
        n, mean, m, m_min = values
        if n < 0.0 or n != math.floor(n) or m_min > min(m, 0.0):
            raise ValueError(f"Page-Hinkley state is inconsistent: {values}")
        self.n, self.mean, self.m, self.m_min = n, mean, m, m_min


class DriftMonitor:
    """One horizon's detector, alarm count, last alarm tick and pending response."""

    __slots__ = ("response", "detector", "alarms", "last_alarm_tick", "boost_left")

    STATE_SIZE = 7  # detector (4), alarms, last alarm tick (-1: none), boost steps left

    def __init__(self, response: str = "none", horizon: int = 1) -> None:
        if response not in RESPONSES:
            raise ValueError(
                f"drift response must be one of {', '.join(RESPONSES)}; got {response!r}"
            )
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.response = response
        self.detector = PageHinkley(threshold=PH_THRESHOLD * math.sqrt(horizon))
        self.alarms = 0
        self.last_alarm_tick: int | None = None
        self.boost_left = 0

    def observe(self, loss: float, tick: int) -> bool:
        """Feed one scored prediction's loss, resolved at the symbol's tick `tick`.

        True on an alarm; the learner then acts on the response: for ``reset`` it puts
        the horizon's network back to its initial weights; for ``boost`` this monitor
        arms BOOST_STEPS boosted steps (a boost during a boost only re-arms it), which
        the learner reads through `rate_factor` and spends through `stepped`.
        """
        if not self.detector.update(loss):
            return False
        self.alarms += 1
        self.last_alarm_tick = tick
        if self.response == "boost":
            self.boost_left = BOOST_STEPS
        return True

    @property
    def rate_factor(self) -> float:
        """What the horizon's learning rate is multiplied by for its next step."""
        return BOOST_FACTOR if self.boost_left else 1.0

    def stepped(self) -> None:
        """Count one backprop step of the horizon's network (spends a boost)."""
        if self.boost_left:
            self.boost_left -= 1

    def as_dict(self) -> dict[str, int | str | None]:
        """The drift object of the query API for this horizon."""
        return {
            "alarms": self.alarms,
            "last_alarm_tick": self.last_alarm_tick,
            "response": self.response,
        }

    def state(self) -> np.ndarray:
        last = -1.0 if self.last_alarm_tick is None else float(self.last_alarm_tick)
        values = [*self.detector.state(), float(self.alarms), last, float(self.boost_left)]
        return np.array(values, dtype=np.float64)

    @classmethod
    def from_state(cls, state: np.ndarray, response: str, horizon: int = 1) -> DriftMonitor:
        """Restore `state()`; ValueError when it is malformed."""
        values = np.asarray(state, dtype=np.float64)
        if values.shape != (cls.STATE_SIZE,) or not np.isfinite(values).all():
            raise ValueError(f"drift state must be {cls.STATE_SIZE} finite numbers, got {values}")
        monitor = cls(response, horizon)
        v = values.tolist()
        monitor.detector.load_state(v[:4])
        alarms, last, boost = v[4:]
        if alarms < 0 or alarms != math.floor(alarms) or last < -1 or last != math.floor(last):
            raise ValueError(f"drift counters are inconsistent: {v[4:]}")
        if not 0 <= boost <= BOOST_STEPS or boost != math.floor(boost):
            raise ValueError(f"boost steps left must be in [0, {BOOST_STEPS}], got {boost}")
        monitor.alarms = int(alarms)
        monitor.last_alarm_tick = None if last < 0 else int(last)
        monitor.boost_left = int(boost)
        return monitor
