"""Windowed tick features, updated in O(1) per tick, free of the price's scale.

Real trade ticks are mostly repeats: on the E-mini future 94% of trades print
the last price again, and many share a millisecond. A window of the last N
*prices* would be mostly zeros, so the features look at the last N *non-zero
moves* instead, plus how long the current price level has lasted.

Every move is the log return r = ln(p_t / p_{t-1}) of a price change, divided
by a running volatility σ (the root of an EWMA of r² over past moves, taken
*before* this move is folded in) and clipped to ±4: a "scaled move" z. Hence the
features are the same numbers for a $4 stock and a 1,640-point index, for ticks
and for daily closes. The input vector x (shape `(n_features,)`) is:

- `move_1..move_k` (k = min(4, window)): z of the last k moves, newest first —
  the recent path: bid-ask bounce, short runs.
- `sign`: s, the sign of the last move, unscaled — the whole of the reversal
  rule in one input, so a fresh network can copy it quickly (z's size wanders
  with σ).
- `record`: s · ρ, where ρ is an EWMA (span 4 windows of moves) of s_t·s_{t−1}:
  −1 when moves keep bouncing, +1 when they keep running, ~0 on a random walk.
  The regime's own evidence, so the network follows a change of regime without
  having to relearn its weights.
- `level_record`: s · ρ_long when the current level has lasted longer than the
  mean run, else s · ρ_short, where ρ_long / ρ_short are that EWMA over moves
  out of long / short levels only — old levels on ticks break (persist) in some
  sessions and bounce in others.
- `trend`: Σ z over the last `window` moves / √window, clipped ±4 — drift over
  the whole window.
- `bounce`: s / (1 + run), where s is the sign of the last move and run the
  ticks traded at this price since it — a fresh move on a tick stream tends to
  bounce back (the trade hit the other side of the book), a stale one less.
- `fresh`: s · exp(−run / (1 + mean run)) — the same idea measured against the
  symbol's usual run length, so it adapts to busy and quiet sessions.
- `stale`: ln(1 + run) − ln(1 + mean run), clipped ±4 — how long this level has
  held, against the symbol's usual.
- `signed_stale`: s · stale — "old level" with the move's direction, usable by
  a single unit.
- `signed_prev_stale`: s · (ln(1 + previous run) − ln(1 + mean run)), clipped
  ±4 — a move out of a long-held level is a break, out of a short one a flicker.

On daily closes every tick is a move (run = 0), so the `stale` features fade to 0
and `bounce` and `fresh` are the last move's sign: nothing there claims a pattern that the
data does not show. Features are *ready* once `window` moves have been seen.

The state is a handful of floats and the ring of the last `window` scaled
moves; `state_arrays()` / `load_state_arrays()` expose all of it, so a learner
can serialise it exactly.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np

from model.activations import Array

CLIP = 4.0
# The cells of the gate's counting rule (model.learner.Horizon): the last move's sign times
# how long the current level has held, run / (1 + mean run), cut at these bounds, with
# run = 0 (a fresh move) a bucket of its own: 2 signs x 5 buckets.
RUN_BOUNDS = (0.5, 1.0, 2.0)
N_CELLS = 2 * (len(RUN_BOUNDS) + 2)
_RUN_LOW, _RUN_MID, _RUN_HIGH = RUN_BOUNDS  # named for `TickFeatures.cell`'s comparisons
MAX_RECENT = 4
FEATURE_NAMES_TAIL = (
    "sign",
    "record",
    "level_record",
    "trend",
    "bounce",
    "fresh",
    "stale",
    "signed_stale",
    "signed_prev_stale",
)


def n_features(window: int) -> int:
    """Length of the feature vector for a window of `window` moves."""
    return min(MAX_RECENT, window) + len(FEATURE_NAMES_TAIL)


# pack_into(x, 0, *features) of each feature count: native float64s into x's bytes (an
# ndarray is a buffer). Module-level: a TickFeatures holding a Struct would not pickle.
_PACK_INTO: dict[int, Callable[..., None]] = {
    n_features(w): struct.Struct(f"{n_features(w)}d").pack_into for w in range(2, MAX_RECENT + 1)
}


def feature_names(window: int) -> list[str]:
    """Names of the inputs, in order (for docs, plots and debugging)."""
    return [f"move_{i + 1}" for i in range(min(MAX_RECENT, window))] + list(FEATURE_NAMES_TAIL)


def _clip(v: float) -> float:
    return CLIP if v > CLIP else -CLIP if v < -CLIP else v


class TickFeatures:
    """One symbol's feature state; `update(price)` per tick, `write(x)` when `ready`."""

    # Scalars of the state, in the order `state_arrays` stores them.
    _SCALARS = (
        "last_price",
        "var",
        "mean_run",
        "trend_sum",
        "n_moves",
        "run",
        "prev_run",
        "pos",
        "last_sign",
        "record",
        "record_short",
        "record_long",
    )

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 moves, got {window}")
        self.window = window
        self.k = min(MAX_RECENT, window)
        self.n_features = n_features(window)
        # EWMA weight of volatility and mean run length: a span of 4 windows, so σ
        # follows regime changes but one move never dominates it.
        self.alpha = 2.0 / (4 * window + 1)
        self._norm = 1.0 / math.sqrt(window)
        # Ring of scaled moves, moves[pos] the newest: a list, as each tick reads and writes
        # single elements (a numpy element access costs ~10x a list's).
        self.moves = [0.0] * window
        self.last_price = 0.0  # 0 = no tick yet (a valid price is > 0)
        self.var = 0.0  # EWMA of r² over moves; 0 until the first move
        self.mean_run = 1.0  # EWMA of the run lengths that ended in a move
        self.trend_sum = 0.0  # Σ moves, kept incrementally
        self.n_moves = 0
        self.run = 0  # ticks at the current price since the last move
        self.prev_run = 0  # run length of the previous level
        self.pos = window - 1
        self.last_sign = 0.0  # sign of the last move: +1, -1, or 0 before the first
        self.record = 0.0  # EWMA of s_t·s_{t-1} over moves: +1 runs, −1 bounces
        self.record_short = 0.0  # the same over moves out of levels shorter than mean run
        self.record_long = 0.0  # ... and out of levels that lasted longer

    @property
    def ready(self) -> bool:
        """True once a full window of moves has been seen."""
        return self.n_moves >= self.window

    def update(self, price: float) -> None:
        """Fold one tick's price (finite, > 0) into the state, O(1)."""
        last = self.last_price
        if last == 0.0:
            self.last_price = price
            return
        if price == last:
            self.run += 1
            return
        ratio = price / last
        # Valid prices span 5e-324..1.8e308, so the ratio can under- or overflow (log(0)
        # raised and crashed the worker on every restart): then take the logs apart.
        r = math.log(ratio) if 0.0 < ratio < math.inf else math.log(price) - math.log(last)
        var = self.var
        if var > 0.0:
            z = _clip(r / math.sqrt(var))
            self.var = var + self.alpha * (r * r - var)
        else:  # the first move defines the scale
            z = 1.0 if r > 0 else -1.0
            self.var = r * r
        pos = self.pos + 1
        if pos == self.window:
            pos = 0
        self.pos = pos
        moves = self.moves
        self.trend_sum += z - moves[pos]
        moves[pos] = z
        self.n_moves += 1
        sign = 1.0 if r > 0 else -1.0
        same = sign * self.last_sign
        self.record += self.alpha * (same - self.record)
        if self.run > self.mean_run:
            self.record_long += self.alpha * (same - self.record_long)
        else:
            self.record_short += self.alpha * (same - self.record_short)
        self.mean_run += self.alpha * (self.run - self.mean_run)
        self.prev_run = self.run
        self.run = 0
        self.last_sign = sign
        self.last_price = price

    def cell(self) -> int:
        """The counting rule's cell of the current state: 2 · bucket + (1 after an up move),
        the bucket 0 for a fresh move (run = 0), then 1 + the number of RUN_BOUNDS that
        run / (1 + mean run) reaches; −1 before the first move. On daily closes (every
        tick a move) the cell is the last move's sign alone."""
        s = self.last_sign
        if s == 0.0:
            return -1
        run = self.run
        bucket = 0
        if run:
            ratio = run / (1.0 + self.mean_run)
            bucket = 1 + (ratio >= _RUN_LOW) + (ratio >= _RUN_MID) + (ratio >= _RUN_HIGH)
        return 2 * bucket + (1 if s > 0 else 0)

    def write(self, x: Array) -> None:
        """Fill x[:n_features] with the current features (x, a C-contiguous float64 array,
        may be longer: the learner's rows end in the networks' bias input, left alone)."""
        moves, pos = self.moves, self.pos
        s = self.last_sign
        run, mean_run = self.run, self.mean_run
        log_mean = math.log1p(mean_run)
        stale = _clip(math.log1p(run) - log_mean)
        tail = (
            s,
            s * self.record,
            s * (self.record_long if run > mean_run else self.record_short),
            _clip(self.trend_sum * self._norm),
            s / (1 + run),
            s * math.exp(-run / (1.0 + mean_run)),
            stale,
            s * stale,
            s * _clip(math.log1p(self.prev_run) - log_mean),
        )
        # Packed straight into x's bytes: a third of the cost of numpy's slice assignment
        # from a tuple (which checks and converts each element).
        pack_into = _PACK_INTO[self.n_features]
        if self.k == MAX_RECENT:  # the recent moves newest first, written out
            pack_into(x, 0, moves[pos], moves[pos - 1], moves[pos - 2], moves[pos - 3], *tail)
        else:  # a negative index wraps the ring
            pack_into(x, 0, *[moves[pos - i] for i in range(self.k)], *tail)

    # --------------------------------------------------------------- state
    def state_arrays(self) -> tuple[Array, Array]:
        """(scalars, moves): the whole state as two float64 arrays (integers are exact)."""
        scalars = np.array([float(getattr(self, name)) for name in self._SCALARS])
        return scalars, np.array(self.moves)

    def load_state_arrays(self, scalars: Array, moves: Array) -> None:
        """Restore what `state_arrays` returned; ValueError on wrong shapes or values."""
        if scalars.shape != (len(self._SCALARS),) or moves.shape != (self.window,):
            raise ValueError(
                f"feature state: expected scalars ({len(self._SCALARS)},) and moves "
                f"({self.window},), got {scalars.shape} and {moves.shape}"
            )
        if not (np.isfinite(scalars).all() and np.isfinite(moves).all()):
            raise ValueError("feature state holds non-finite values")
        values = dict(zip(self._SCALARS, scalars.tolist(), strict=True))
        for name in ("n_moves", "run", "prev_run", "pos"):
            v = values[name]
            if v != int(v) or v < 0:
                raise ValueError(f"feature state: {name} must be a count, got {v}")
        if not 0 <= values["pos"] < self.window or values["last_price"] < 0:
            raise ValueError("feature state: position or last price out of range")
        self.last_price = values["last_price"]
        self.var = values["var"]
        self.mean_run = values["mean_run"]
        self.trend_sum = values["trend_sum"]
        self.n_moves = int(values["n_moves"])
        self.run = int(values["run"])
        self.prev_run = int(values["prev_run"])
        self.pos = int(values["pos"])
        self.last_sign = values["last_sign"]
        self.record = values["record"]
        self.record_short = values["record_short"]
        self.record_long = values["record_long"]
        self.moves = moves.tolist()
