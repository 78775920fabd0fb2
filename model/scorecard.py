"""A prequential scorecard: how one symbol's forecasts for one horizon did, against baselines.

Fed one resolved, labelled prediction at a time (`add`), it keeps for the network
(`ffbpn`) and the three baselines (`base_rate`, `persistence`, `reversal`):

- accuracy: share of calls (p_up >= 0.5 means up) equal to the label;
- log loss: -ln p(label), p clipped to [1e-15, 1 - 1e-15]; only for the models that
  give a probability (ffbpn, base_rate), None for the hard-call rules;
- Brier score: (p_up - label)^2, a hard call counting as p_up = 0 or 1;
- kappa_temporal: (acc - acc_persistence) / (1 - acc_persistence), Cohen's kappa
  against the no-change classifier as MOA reports it (Bifet et al. 2013, "Pitfalls in
  benchmarking data stream classification"); the no-change classifier here is the
  `persistence` baseline (the last non-zero move continues), which at horizon 1 with
  no dead band is exactly MOA's "last label seen";
- kappa_m: (acc - acc_majority) / (1 - acc_majority), the majority class classifier
  being the `base_rate` baseline (up while ups >= downs).

Each is kept cumulatively and with a fading factor alpha (MOA's fading-factor
estimator: S <- alpha * S + x, W <- alpha * W + 1, estimate S / W), so a reader sees
both the whole history and roughly the last 1 / (1 - alpha) scores. A kappa whose
reference is perfect (denominator 0), or any statistic before the first score, is None.

The state is a fixed-length float64 vector updated in one fixed order: the scorecard is
a pure function of the sequence of scored predictions, so the worker's and the
backtest's agree bit for bit, and `from_state(state())` continues exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

P_CLIP = 1e-15  # log loss of a probability p uses max(p, 1e-15): no infinite losses
BASELINES = ("base_rate", "persistence", "reversal")

# The state vector: cumulative sums, then faded sums, in this order.
#   n/w          : scores (cumulative count; faded weight)
#   hits_*       : correct calls of ffbpn, base_rate, persistence (reversal: n - persistence)
#   brier_*      : squared errors of ffbpn, base_rate (hard calls: 1 - hit)
#   loss_*       : log losses of ffbpn, base_rate
FIELDS = ("n", "hits_net", "hits_base", "hits_persist", "brier_net", "brier_base",
          "loss_net", "loss_base")  # fmt: skip
STATE_SIZE = 2 * len(FIELDS)


def log_loss(p_up: float, label: int) -> float:
    """-ln of the probability given to `label` (1 up, 0 down), clipped to stay finite."""
    p = min(max(p_up, P_CLIP), 1.0 - P_CLIP)
    return -math.log(p if label == 1 else 1.0 - p)


def kappa(accuracy: float | None, reference: float | None) -> float | None:
    """(accuracy - reference) / (1 - reference); None when undefined."""
    if accuracy is None or reference is None or reference >= 1.0:
        return None
    return (accuracy - reference) / (1.0 - reference)


class Scorecard:
    """Cumulative and faded prequential statistics of ffbpn and the baselines, one horizon."""

    __slots__ = ("fading_factor", "_s")

    def __init__(self, fading_factor: float = 0.999) -> None:
        if not (math.isfinite(fading_factor) and 0.0 < fading_factor <= 1.0):
            raise ValueError(f"fading factor must be in (0, 1], got {fading_factor}")
        self.fading_factor = fading_factor
        self._s = [0.0] * STATE_SIZE

    @property
    def scored(self) -> int:
        """Scored predictions so far."""
        return int(self._s[0])

    def add(
        self, label: int, p_net: float, p_base: float, persist: int, loss_base: float | None = None
    ) -> None:
        """Fold in one scored prediction: the label (1 up, 0 down) and what each model said.

        p_net, p_base: p_up of the network and of the base rate; persist: persistence's
        call (1 up, 0 down; reversal calls the opposite). loss_base: the base rate's log
        loss when the caller has it already (a base rate lies well inside the clipping
        bounds, so it is -ln of p_base or 1 - p_base, as computed here).
        """
        up = label == 1
        hit_net = 1.0 if (p_net >= 0.5) == up else 0.0
        hit_base = 1.0 if (p_base >= 0.5) == up else 0.0
        hit_persist = 1.0 if persist == label else 0.0
        e_net, e_base = p_net - label, p_base - label
        brier_net, brier_base = e_net * e_net, e_base * e_base
        # log_loss() of both, inlined (the same clipping and operations)
        low, high = P_CLIP, 1.0 - P_CLIP
        q_net = low if p_net < low else high if p_net > high else p_net
        loss_net = -math.log(q_net if label == 1 else 1.0 - q_net)
        if loss_base is None:
            q_base = low if p_base < low else high if p_base > high else p_base
            loss_base = -math.log(q_base if label == 1 else 1.0 - q_base)
        # Unrolled (FIELDS order), the sums taken out and a new list built: this runs for
        # every horizon of every tick, and 16 item updates cost more.
        (n, h_net, h_base, h_persist, b_net, b_base, l_net, l_base,
         w, f_net, f_base, f_persist, fb_net, fb_base, fl_net, fl_base) = self._s  # fmt: skip
        a = self.fading_factor
        self._s = [
            n + 1.0,
            h_net + hit_net,
            h_base + hit_base,
            h_persist + hit_persist,
            b_net + brier_net,
            b_base + brier_base,
            l_net + loss_net,
            l_base + loss_base,
            a * w + 1.0,
            a * f_net + hit_net,
            a * f_base + hit_base,
            a * f_persist + hit_persist,
            a * fb_net + brier_net,
            a * fb_base + brier_base,
            a * fl_net + loss_net,
            a * fl_base + loss_base,
        ]

    # ------------------------------------------------------------------ reading
    def as_dict(self) -> dict[str, Any]:
        """The scorecard object of the query API (JSON-ready; None where undefined)."""
        k = len(FIELDS)
        cumulative = _statistics(self._s[:k])
        faded = _statistics(self._s[k:])
        out: dict[str, Any] = dict(cumulative["ffbpn"], scored=self.scored)
        out["fading"] = dict(faded["ffbpn"], weight=self._s[k])
        out["baselines"] = {name: dict(cumulative[name], fading=faded[name]) for name in BASELINES}
        return out

    def recent(self) -> tuple[float, float | None, float | None]:
        """(faded weight, faded kappa_temporal, faded accuracy minus the best baseline's).

        The cheap summary the metrics' spread across symbols is built from (None before
        the first score).
        """
        k = len(FIELDS)
        w, hits_net, hits_base, hits_persist = self._s[k : k + 4]
        if w <= 0.0:
            return w, None, None
        acc, persistence = hits_net / w, hits_persist / w
        best = max(hits_base / w, persistence, (w - hits_persist) / w)
        return w, kappa(acc, persistence), acc - best

    # ------------------------------------------------------------- serialisation
    def state(self) -> np.ndarray:
        """The whole state, shape (STATE_SIZE,) float64; `from_state` restores it exactly."""
        return np.array(self._s, dtype=np.float64)

    @classmethod
    def from_state(cls, state: np.ndarray, fading_factor: float) -> Scorecard:
        """Restore `state()`; ValueError when it is not a plausible scorecard state."""
        values = np.asarray(state, dtype=np.float64)
        if values.shape != (STATE_SIZE,):
            raise ValueError(f"scorecard state has shape {values.shape}, expected ({STATE_SIZE},)")
        if not np.isfinite(values).all() or (values < 0.0).any():
            raise ValueError("scorecard state holds negative or non-finite values")
        n = values[0]
        if n != math.floor(n) or (values[1:4] > n).any():
            raise ValueError(f"scorecard counts are inconsistent: {values[:4].tolist()}")
        card = cls(fading_factor)
        card._s = values.tolist()
        return card


def _statistics(s: list[float]) -> dict[str, dict[str, float | None]]:
    """Per model: accuracy, log_loss, brier, kappa_temporal, kappa_m from one block of sums."""
    n, hits_net, hits_base, hits_persist, brier_net, brier_base, loss_net, loss_base = s
    if n <= 0.0:
        empty = dict.fromkeys(("accuracy", "log_loss", "brier", "kappa_temporal", "kappa_m"))
        return {name: dict(empty) for name in ("ffbpn", *BASELINES)}
    acc = {
        "ffbpn": hits_net / n,
        "base_rate": hits_base / n,
        "persistence": hits_persist / n,
        "reversal": (n - hits_persist) / n,
    }
    loss = {"ffbpn": loss_net / n, "base_rate": loss_base / n}
    brier = {"ffbpn": brier_net / n, "base_rate": brier_base / n}
    persistence, majority = acc["persistence"], acc["base_rate"]
    return {
        name: {
            "accuracy": a,
            "log_loss": loss.get(name),
            "brier": brier.get(name, 1.0 - a),  # a hard call's squared error is its miss
            "kappa_temporal": kappa(a, persistence),
            "kappa_m": kappa(a, majority),
        }
        for name, a in acc.items()
    }
