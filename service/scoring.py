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

    `add` only keeps the score: the worker adds every score of every horizon, and the
    gauges read the figures at most twice a second. A read sums the window (`entry` of
    each score; the log losses with `math.fsum`, so rounding cannot drift), once per
    change of the window.
    """

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.window: deque[Score] = deque(maxlen=size)
        self._added = 0  # scores added so far
        self._summed = -1  # the value of _added when the sums below were taken
        self._hits = [0] * len(MODELS)
        self._losses = [0.0] * len(PROB_MODELS)

    def add(self, score: Score) -> None:
        """Keep one scored prediction, dropping the oldest beyond `size`."""
        self.window.append(score)
        self._added += 1

    def accuracy(self, model: str) -> float | None:
        window = self.window
        return self._sums()[0][MODELS.index(model)] / len(window) if window else None

    def log_loss(self, model: str) -> float | None:
        if model not in PROB_MODELS:
            return None
        window = self.window
        return self._sums()[1][PROB_MODELS.index(model)] / len(window) if window else None

    def _sums(self) -> tuple[list[int], list[float]]:
        """Hits per model in MODELS order and summed log loss per model in PROB_MODELS order."""
        if self._summed != self._added:
            self._summed = self._added
            entries = [entry(score) for score in self.window]
            self._hits = [sum(1 for e in entries if e[i]) for i in range(len(MODELS))]
            self._losses = [
                math.fsum(e[len(MODELS) + i] for e in entries) for i in range(len(PROB_MODELS))
            ]
        return self._hits, self._losses
