"""Prequential scores of the learner and its baselines, shared by the worker and the backtest.

Each resolved prediction (`model.learner.Score`) is scored "test, then train": whether each
model in `MODELS` called the direction right, and the log loss of each probabilistic model
in `PROB_MODELS`. `Tally` sums them over a whole run (the backtest's report); `RollingScores`
over the last `size` scored predictions (the worker's live gauges).
"""

from __future__ import annotations

import math
from collections import deque

from model.learner import MODELS, PROB_MODELS, Score

BASELINES = tuple(m for m in MODELS if m != "ffbpn")
P_CLIP = 1e-15  # log loss of a probability p uses p clipped to [1e-15, 1 - 1e-15]: no infinities


def entry(score: Score) -> tuple[int, int, int, int, float, float]:
    """What one scored prediction adds: a hit (1/0) per model in MODELS order, then the log
    loss per model in PROB_MODELS order (p clipped to [P_CLIP, 1 - P_CLIP]).

    Written out (no per-model loop): it runs for every score of every horizon."""
    label, p, base, persist = score.label, score.p_net, score.p_base, score.persist
    low, high = P_CLIP, 1.0 - P_CLIP
    p_clipped = low if p < low else high if p > high else p
    base_clipped = low if base < low else high if base > high else base
    return (
        1 if (p >= 0.5) == label else 0,
        1 if (base >= 0.5) == label else 0,
        1 if persist == label else 0,
        0 if persist == label else 1,
        -math.log(p_clipped if label == 1 else 1.0 - p_clipped),
        -math.log(base_clipped if label == 1 else 1.0 - base_clipped),
    )


class Tally:
    """Hits and summed log loss of every model over all scored predictions (a whole run)."""

    def __init__(self) -> None:
        self.scored = 0
        self._hits = [0] * len(MODELS)
        self._losses = [0.0] * len(PROB_MODELS)

    def add(self, score: Score) -> None:
        """Count one scored prediction (`entry`)."""
        e = entry(score)
        self.scored += 1
        hit_sums, loss_sums = self._hits, self._losses
        hit_sums[0] += e[0]
        hit_sums[1] += e[1]
        hit_sums[2] += e[2]
        hit_sums[3] += e[3]
        loss_sums[0] += e[4]
        loss_sums[1] += e[5]

    def accuracy(self, model: str) -> float | None:
        return self._hits[MODELS.index(model)] / self.scored if self.scored else None

    def log_loss(self, model: str) -> float | None:
        """Mean log loss; None for a model with no probability or before any score."""
        if model not in PROB_MODELS or not self.scored:
            return None
        return self._losses[PROB_MODELS.index(model)] / self.scored


class RollingScores:
    """Accuracy and log loss of each model over the last `size` scored predictions.

    Sums are kept incrementally (O(1) per score); the float sums are recomputed from the
    window every `size` scores so rounding cannot drift. Each window entry is the tuple
    (hit per model in MODELS order, then loss per model in PROB_MODELS order).
    """

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.window: deque[tuple[int, int, int, int, float, float]] = deque()
        self._hits = [0] * len(MODELS)
        self._losses = [0.0] * len(PROB_MODELS)
        self._since_resum = 0

    def add(self, score: Score) -> None:
        """Add one scored prediction (`entry`) and drop the oldest beyond `size`."""
        added = entry(score)
        window, hit_sums, loss_sums = self.window, self._hits, self._losses
        window.append(added)
        hit_sums[0] += added[0]
        hit_sums[1] += added[1]
        hit_sums[2] += added[2]
        hit_sums[3] += added[3]
        loss_sums[0] += added[4]
        loss_sums[1] += added[5]
        if len(window) > self.size:
            old = window.popleft()
            hit_sums[0] -= old[0]
            hit_sums[1] -= old[1]
            hit_sums[2] -= old[2]
            hit_sums[3] -= old[3]
            loss_sums[0] -= old[4]
            loss_sums[1] -= old[5]
        self._since_resum += 1
        if self._since_resum >= self.size:
            self._since_resum = 0
            loss_sums[0] = math.fsum(e[4] for e in window)
            loss_sums[1] = math.fsum(e[5] for e in window)

    def accuracy(self, model: str) -> float | None:
        window = self.window
        return self._hits[MODELS.index(model)] / len(window) if window else None

    def log_loss(self, model: str) -> float | None:
        window = self.window
        return self._losses[PROB_MODELS.index(model)] / len(window) if window else None
