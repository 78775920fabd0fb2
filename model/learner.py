"""The per-symbol online learner: features, one network per horizon, prequential scoring.

A symbol's learner predicts, on every tick, whether the price `h` ticks later will
be higher, for each horizon h of `LearnerConfig.horizons` (default 1, 5 and 20
ticks). Each tick, in this order (docs/messages.md defines the label):

1. fold the price into the feature window (`model.features.TickFeatures`);
2. for each horizon h, resolve the prediction made h ticks ago: its label is up
   (1) when the price rose by more than the dead band, down (0) when it fell by
   more than it, none inside the band (neither scored nor trained on);
3. score that prediction and the baselines' predictions made at the same tick
   ("test, then train"), only if the features were ready when it was made: into
   the horizon's scorecard (`model.scorecard`), and the network's log loss into its
   drift monitor (`model.drift`), whose alarm may reset or boost that network;
4. take at most one backprop step per horizon: each horizon's network on its own
   stored (x, label). The K networks are stepped together (`StackedNetworks`:
   stacked weights, one numpy call per layer whatever K);
5. predict for this tick: every horizon's network sees the same features x; the
   published p_up of a horizon is its network's probability mixed with the base
   rate (`Horizon.mixture_weight`), or the base rate before the features are ready.

The baselines, scored on the same labels per horizon: `base_rate` (p_up = (ups + 1)
/ (labels + 2), the share of up labels so far with a uniform prior), `persistence`
(the last non-zero move continues) and `reversal` (it reverses). `ffbpn` is the
model's *published* p_up, the probability the service stands behind.

Everything is deterministic: a horizon's initial weights depend only on
(config.seed, symbol, horizon) through SHA-256, and `to_bytes` / `from_bytes` carry
the whole state (networks and optimiser, feature window, pending predictions with
their inputs, each horizon's counters, mixture, scorecard and drift monitor), so a
restored learner continues bit-identically to one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from model.drift import RESPONSES, DriftMonitor
from model.errors import FormatError
from model.features import CLIP, N_CELLS, TickFeatures, n_features
from model.network import Network
from model.scorecard import STATE_SIZE as SCORECARD_SIZE
from model.scorecard import Scorecard
from model.stacked import StackedNetworks

MODELS = ("ffbpn", "base_rate", "persistence", "reversal")
PROB_MODELS = ("ffbpn", "base_rate")
MAX_HORIZONS = 8  # networks per symbol
MAX_HORIZON = 1000  # ticks ahead; a symbol's state holds one input per tick of the longest
# The gate of each horizon (docs/horizons.md): the counting rule's p_up in a cell c (the last
# move's sign s and how long the level has held, `TickFeatures.cell`) is
# (ups_c + CELL_PRIOR · q_s) / (labels_c + CELL_PRIOR), a count shrunk toward the sign
# rule's q_s = (ups_s + RULE_PRIOR · base) / (labels_s + RULE_PRIOR), itself shrunk toward
# the base rate; `Horizon.trust` is an EWMA of weight TRUST_RATE (memory ~3,000
# disagreements).
TRUST_RATE = 0.0003
RULE_PRIOR = 2.0
CELL_PRIOR = 20.0
X_MAX = CLIP  # every feature lies within ±CLIP (model.features)


@dataclass(frozen=True)
class LearnerConfig:
    """The learning settings; the ONE place their defaults live (worker and backtest)."""

    window: int = 16  # non-zero moves the features look back over (TICKPROP_WINDOW)
    horizons: tuple[int, ...] = (1, 5, 20)  # ticks ahead, one network each (TICKPROP_HORIZONS)
    hidden: tuple[int, ...] = (32,)  # hidden layer sizes (TICKPROP_HIDDEN)
    learning_rate: float = 0.01  # SGD step of the 1-tick horizon (TICKPROP_LEARNING_RATE)
    seed: int = 7  # with the symbol, fixes the initial weights (TICKPROP_SEED)
    dead_band: float = 0.0  # relative move a label must exceed: |p_h/p_0 - 1| > dead_band
    l2: float = 0.0  # L2 weight decay of the SGD step
    momentum: float = 0.0  # SGD momentum
    activation: str = "tanh"  # hidden units; the output is a sigmoid with log loss
    # Horizon h learns at learning_rate · h^-lr_power: its consecutive labels overlap in
    # h - 1 of their h ticks, so unscaled steps would count the same evidence ~h times.
    lr_power: float = 0.5
    # Each network's output adds its horizon's base-rate logit (known when it predicts): it
    # learns a correction to the base rate, starting at the base rate, not at 0.5.
    base_rate_offset: bool = True
    # The network may call against the counting rule (the label frequency in the cell of
    # the last move's sign and the level's age) only while its past calls against it were
    # right more often than wrong (`Horizon.trust`); until then, where they disagree, the
    # rule's frequency stands.
    rule_gate: bool = True
    fading_factor: float = 0.999  # of the scorecards' faded figures (TICKPROP_FADING_FACTOR)
    drift_response: str = "none"  # on a drift alarm: none, reset, boost (TICKPROP_DRIFT_RESPONSE)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")
        object.__setattr__(self, "horizons", check_horizons(self.horizons))
        if not self.hidden or any(int(n) < 1 for n in self.hidden):
            raise ValueError(f"hidden must be one or more positive sizes, got {self.hidden}")
        if not (math.isfinite(self.dead_band) and 0.0 <= self.dead_band < 1.0):
            raise ValueError(f"dead_band must be in [0, 1), got {self.dead_band}")
        object.__setattr__(self, "hidden", tuple(int(n) for n in self.hidden))
        if not (math.isfinite(self.fading_factor) and 0.0 < self.fading_factor <= 1.0):
            raise ValueError(f"fading_factor must be in (0, 1], got {self.fading_factor}")
        if self.drift_response not in RESPONSES:
            raise ValueError(
                f"drift_response must be one of {', '.join(RESPONSES)}, got {self.drift_response!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["horizons"] = list(self.horizons)
        return d


def check_horizons(horizons: Any) -> tuple[int, ...]:
    """The horizons as a tuple of ints: 1 to 8 distinct values, each 1 to 1000; else ValueError."""
    if isinstance(horizons, str):
        parts = [p.strip() for p in horizons.split(",")]
        if not all(p.isdigit() for p in parts):
            raise ValueError(f'expected tick counts like "1,5,20", got {horizons!r}')
        horizons = [int(p) for p in parts]
    values = tuple(horizons)
    if not all(isinstance(h, int) and not isinstance(h, bool) for h in values):
        raise ValueError(f"horizons must be whole tick counts, got {values!r}")
    if not 1 <= len(values) <= MAX_HORIZONS:
        raise ValueError(f"between 1 and {MAX_HORIZONS} horizons, got {len(values)}: {values}")
    if not all(1 <= h <= MAX_HORIZON for h in values):
        raise ValueError(f"each horizon must be 1 to {MAX_HORIZON} ticks, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"horizons must be distinct, got {values}")
    return values


# The per-tick results below are plain slots dataclasses, not frozen ones: a frozen
# dataclass's __init__ costs ~4x (object.__setattr__ per field), on every tick. Treat
# them as values all the same.


@dataclass(slots=True)
class Forecast:
    """One horizon's published prediction for this tick."""

    horizon: int
    p_up: float
    direction: str  # "up" | "down"
    model_version: int  # backprop steps of this horizon's network


@dataclass(slots=True)
class Prediction:
    """This tick's prediction: every horizon in `forecasts`; the rest repeats the first."""

    p_up: float
    direction: str
    model_version: int
    features_ready: bool
    horizon: int
    forecasts: tuple[Forecast, ...]


@dataclass(slots=True)
class Score:
    """One resolved, labelled prediction made with ready features: what each model said."""

    horizon: int
    label: int  # 1 = up, 0 = down
    p_net: float  # ffbpn's published p_up; it calls up when p_net >= 0.5
    p_base: float  # base_rate's p_up; likewise
    persist: int  # persistence's call, 1 up / 0 down; reversal calls 1 - persist
    p_raw: float  # the horizon's network alone, before the gate and the mixture (diagnostics)
    alarm: bool = False  # the horizon's drift monitor raised an alarm on this score

    @property
    def p_up(self) -> dict[str, float]:
        """Probability of up, by probabilistic model ("ffbpn", "base_rate")."""
        return {"ffbpn": self.p_net, "base_rate": self.p_base}

    @property
    def direction(self) -> dict[str, int]:
        """Every model in MODELS -> its call, 1 (up) / 0 (down)."""
        return {
            "ffbpn": 1 if self.p_net >= 0.5 else 0,
            "base_rate": 1 if self.p_base >= 0.5 else 0,
            "persistence": self.persist,
            "reversal": 1 - self.persist,
        }


@dataclass(slots=True)
class TickResult:
    prediction: Prediction
    scores: tuple[Score, ...]  # predictions resolved (and scored) by this tick, any horizons
    steps: int  # backprop steps taken on this tick (0 to K, at most one per horizon)
    refused: int  # steps refused (non-finite)
    step_seconds: tuple[float, ...]  # wall time of the stacked forward + backward + update


def _logit(p: float) -> float:
    """ln(p / (1 − p)) for p in (0, 1) (a base rate is never 0 or 1)."""
    return math.log(p / (1.0 - p))


def symbol_seed(seed: int, symbol: str) -> int:
    """A 64-bit seed from (seed, symbol) by SHA-256: stable across processes and versions."""
    digest = hashlib.sha256(f"tickprop/{seed}/{symbol}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def horizon_seed(seed: int, symbol: str, horizon: int) -> int:
    """The seed of one horizon's network: `symbol_seed` of "<symbol>/h<horizon>"."""
    return symbol_seed(seed, f"{symbol}/h{horizon}")


def build_network(symbol: str, config: LearnerConfig, horizon: int) -> Network:
    """One horizon's initial network: hidden weights from its seed, output layer zero.

    A zero output layer starts every horizon at p_up = 0.5 with no random opinion
    to unlearn; the hidden units still learn (their gradient flows once the
    output weights move off zero).
    """
    sizes = [n_features(config.window), *config.hidden, 1]
    net = Network(
        sizes=sizes,
        activations=[config.activation] * len(config.hidden) + ["sigmoid"],
        loss="log",
        learning_rate=horizon_learning_rate(config, horizon),
        momentum=config.momentum,
        l2=config.l2,
        seed=horizon_seed(config.seed, symbol, horizon),
    )
    weights = [w.copy() for w in net.weights]
    weights[-1][:] = 0.0
    net.set_parameters(weights, [b.copy() for b in net.biases])
    return net


def horizon_learning_rate(config: LearnerConfig, horizon: int) -> float:
    """The SGD step of horizon h's network: learning_rate · h^-lr_power."""
    return (
        config.learning_rate * horizon**-config.lr_power
        if config.lr_power
        else config.learning_rate
    )


class Horizon:
    """One horizon of a symbol's learner: its pending predictions, labels, base rate, mixture.

    Its network is row `index` of the learner's `StackedNetworks`. Its published p_up mixes
    two experts: the gated network (`gated`) and the base rate, one mixture per slot. The
    state is counters (ints), floats and rings of h floats; `state()` / `load()` hand them
    to the learner's format, so a field added here is serialised by adding it to COUNTERS,
    FLOATS or RINGS. The scorecard and the drift monitor follow as their own vectors.
    """

    # ups, downs: every label
    COUNTERS = ("ups", "downs", "scored")
    # ups, downs of the labels per cell of the counting rule (`TickFeatures.cell`)
    CELL_COUNTERS = ("cell_ups", "cell_downs")
    FLOATS = ("trust",)
    RINGS = (
        "pending_p",
        "pending_net",
        "pending_base",
        "pending_raw",
        "pending_rule",
        "loss_net",
        "loss_base",
    )

    __slots__ = (
        "h",
        "index",
        *RINGS,
        "base",
        "w_net",
        "base_logit",
        "log_prior",
        "sign_ups",
        "sign_labels",
        "card",
        "drift",
        *COUNTERS,
        *CELL_COUNTERS,
        *FLOATS,
    )

    def __init__(
        self, h: int, index: int, fading_factor: float = 0.999, drift_response: str = "none"
    ) -> None:
        self.h = h
        self.index = index
        self.card = Scorecard(fading_factor)  # the published p_up and the baselines, scored
        self.drift = DriftMonitor(drift_response, h)  # on the network's own log loss
        # Rings of h slots: the prediction of tick n sits in slot n % h and resolves at
        # tick n + h, just before the slot is reused. Lists: one element per tick.
        self.pending_p = [0.0] * h  # published p_up
        self.pending_net = [0.0] * h  # the gated network's p_up (== base rate when not ready)
        self.pending_base = [0.0] * h  # the base rate's p_up
        self.pending_raw = [0.0] * h  # the network's own p_up, before the gate
        self.pending_rule = [0.0] * h  # the counting rule's p_up
        # The mixture of slot r weighs the predictions of the ticks n with n % h == r: each
        # learns its loss just before it predicts again (docs/horizons.md). Summed log loss
        # of the gated network's scored predictions, and of the base rate's, per slot:
        self.loss_net = [0.0] * h
        self.loss_base = [0.0] * h
        self.ups = 0  # labels seen (all, ready or not), for the base rate
        self.downs = 0
        self.cell_ups = [0] * N_CELLS  # ... of them, the labels predicted in each cell
        self.cell_downs = [0] * N_CELLS
        self.scored = 0
        # EWMA of +1 (the network was right) / -1 (wrong) over the scored predictions where
        # its call and the counting rule's differed: the gate is open while it is > 0.
        self.trust = 0.0
        # Derived from the state above, kept because every tick reads them:
        self.log_prior = math.log(h)  # the base rate's prior log-odds against the network
        self.base = 0.5  # base_rate()
        self.w_net = [self.mixture_weight(0)] * h  # the network's weight, per slot
        self.base_logit = 0.0  # ln(base / (1 − base))
        self.sign_ups = [0, 0]  # Σ cell_ups over the cells after a down (0) / up (1) move
        self.sign_labels = [0, 0]  # ... and Σ of their labels

    def base_rate(self) -> float:
        """p_up of the base-rate baseline: (ups + 1) / (labels + 2)."""
        return (self.ups + 1.0) / (self.ups + self.downs + 2.0)

    def rule_rate(self, cell: int) -> float:
        """p_up of the counting rule in `cell` (`TickFeatures.cell`; −1: none, the base
        rate): (ups + 20·q) / (labels + 20) over the labels whose prediction was made in
        that cell, q the sign rule's (ups + 2·base) / (labels + 2) over the labels after a
        move of the cell's sign. On ticks it learns the bid-ask bounce from its first
        labels, and then how far it holds as a level ages; on daily closes (one cell per
        sign) it is the sign rule."""
        if cell < 0:
            return self.base
        up = cell & 1  # the sign rule's counts: the cells of the same sign, summed
        q_sign = (self.sign_ups[up] + RULE_PRIOR * self.base) / (self.sign_labels[up] + RULE_PRIOR)
        ups = self.cell_ups[cell]
        return (ups + CELL_PRIOR * q_sign) / (ups + self.cell_downs[cell] + CELL_PRIOR)

    def gated(self, p_raw: float, cell: int) -> tuple[float, float]:
        """(the gated network's p_up, the counting rule's) for a network p_up `p_raw`
        predicted in `cell`: the network's, unless it calls against the rule while the
        gate is shut (trust <= 0); then the rule's."""
        q = self.rule_rate(cell)
        if self.trust <= 0.0 and (p_raw >= 0.5) != (q >= 0.5):
            return q, q
        return p_raw, q

    def mixture_weight(self, slot: int) -> float:
        """The network's weight in the published p_up of slot `slot`, against the base rate's.

        A Bayesian mixture of the two experts under log loss, one per slot: each expert is
        weighted by its prior times exp(−its summed log loss on the slot's predictions so
        far). A slot's prediction resolves just before the slot predicts again, so each
        slot's mixture has its losses in time, and its summed log loss is at most the
        base rate's + ln(1 + 1/h) (prior odds h : 1 for the base rate): over all h slots,
        at most h·ln(1 + 1/h) < 1 nat above the base rate's, whatever the network does
        (docs/horizons.md).
        """
        # > 0: the base rate has done better (or the network has not yet earned its trust)
        d = self.loss_net[slot] - self.loss_base[slot] + self.log_prior
        if d > 0:
            e = math.exp(-d) if d < 700 else 0.0
            return e / (1.0 + e)
        return 1.0 / (1.0 + math.exp(d if d > -700 else -700))

    def count(self, label: int, cell: int) -> None:
        """A label resolved (ready or not): it counts toward the base rate, and toward the
        counting rule's `cell` (the one its prediction was made in; −1: none)."""
        if label:
            self.ups += 1
            if cell >= 0:
                self.cell_ups[cell] += 1
                self.sign_ups[cell & 1] += 1
        else:
            self.downs += 1
            if cell >= 0:
                self.cell_downs[cell] += 1
        if cell >= 0:
            self.sign_labels[cell & 1] += 1
        self.base = base = (self.ups + 1.0) / (self.ups + self.downs + 2.0)  # base_rate()
        self.base_logit = _logit(base)

    def resolve(self, slot: int, label: int, persist: int, tick: int) -> Score:
        """Score the prediction in `slot` (made with ready features) against `label`,
        resolved at the symbol's `tick`-th tick."""
        p_net = self.pending_net[slot]
        p_base = self.pending_base[slot]
        p = self.pending_p[slot]
        # Each expert's log loss: -ln of the probability it gave to what happened, clipped at
        # 1e-15 so it stays finite (inlined: this runs for every score of every horizon).
        q_net = p_net if label else 1.0 - p_net
        q_base = p_base if label else 1.0 - p_base
        loss = -math.log(q_net if q_net > 1e-15 else 1e-15)
        loss_base = -math.log(q_base if q_base > 1e-15 else 1e-15)
        self.loss_net[slot] += loss
        self.loss_base[slot] += loss_base
        self.scored += 1
        self.w_net[slot] = self.mixture_weight(slot)
        p_raw = self.pending_raw[slot]
        if (p_raw >= 0.5) != (self.pending_rule[slot] >= 0.5):  # the network called against
            right = 1.0 if (p_raw >= 0.5) == (label == 1) else -1.0
            self.trust += TRUST_RATE * (right - self.trust)
            if p_raw != p_net:  # the gate stood in: the drift monitor watches the network
                q_raw = p_raw if label else 1.0 - p_raw
                loss = -math.log(q_raw if q_raw > 1e-15 else 1e-15)
        self.card.add(label, p, p_base, persist, loss_base)
        alarm = self.drift.observe(loss, tick)
        return Score(self.h, label, p, p_base, persist, p_raw, alarm)

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, int], np.ndarray]:
        """(counters, floats): FLOATS, the RINGS in order, the scorecard, the drift monitor."""
        counters: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        for name in self.CELL_COUNTERS:
            counters[name] = list(getattr(self, name))
        head = [float(getattr(self, name)) for name in self.FLOATS]
        rings = np.array(head + [v for name in self.RINGS for v in getattr(self, name)])
        return counters, np.concatenate([rings, self.card.state(), self.drift.state()])

    def n_floats(self) -> int:
        n_rings = len(self.RINGS) * self.h
        return len(self.FLOATS) + n_rings + SCORECARD_SIZE + DriftMonitor.STATE_SIZE

    def load(self, counters: dict[str, Any], floats: np.ndarray) -> None:
        """Restore what `state()` returned; ValueError on anything malformed."""
        for name in self.COUNTERS:
            v = counters.get(name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"horizon {self.h}: counter {name!r} must be a count, got {v!r}")
        for name in self.CELL_COUNTERS:
            v = counters.get(name)
            if not (
                isinstance(v, list)
                and len(v) == N_CELLS
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)
            ):
                raise ValueError(f"horizon {self.h}: {name!r} must be {N_CELLS} counts, got {v!r}")
        if floats.shape != (self.n_floats(),) or not np.isfinite(floats).all():
            raise ValueError(f"horizon {self.h}: expected {self.n_floats()} finite floats")
        for name in (*self.COUNTERS, *self.CELL_COUNTERS):
            setattr(self, name, counters[name])
        values = floats.tolist()
        n = len(self.FLOATS)
        for name, v in zip(self.FLOATS, values[:n], strict=True):
            setattr(self, name, v)
        h = self.h
        for i, name in enumerate(self.RINGS):
            setattr(self, name, values[n + i * h : n + (i + 1) * h])
        tail = n + len(self.RINGS) * h
        self.card = Scorecard.from_state(
            floats[tail : tail + SCORECARD_SIZE], self.card.fading_factor
        )
        self.drift = DriftMonitor.from_state(
            floats[tail + SCORECARD_SIZE :], self.drift.response, self.h
        )
        self.base = self.base_rate()
        self.base_logit = _logit(self.base)
        ups, downs = self.cell_ups, self.cell_downs
        self.sign_ups = [sum(ups[0::2]), sum(ups[1::2])]
        self.sign_labels = [self.sign_ups[s] + sum(downs[s::2]) for s in (0, 1)]
        self.w_net = [self.mixture_weight(slot) for slot in range(h)]


class OnlineLearner:
    """One symbol's features, its horizons' networks, pending predictions and baselines."""

    def __init__(
        self, symbol: str, config: LearnerConfig, nets: StackedNetworks | None = None
    ) -> None:
        """A fresh learner; `nets` (restoring a state) replaces the initial networks."""
        self.symbol = symbol
        self.config = config
        self.horizons = [
            Horizon(h, k, config.fading_factor, config.drift_response)
            for k, h in enumerate(config.horizons)
        ]
        if nets is None:
            nets = StackedNetworks([build_network(symbol, config, h) for h in config.horizons])
        self.nets = nets
        self.features = TickFeatures(config.window)
        k, n_in = len(self.horizons), self.features.n_features
        # Shared rings over the longest horizon H: what tick n saw sits in slot n % H,
        # read back by every horizon h <= H at tick n + h (before the slot is reused).
        self._ring = ring = max(config.horizons)
        # The features x of each pending tick, with a trailing 1 (the networks' bias input),
        # so a row goes into the networks as it is; pending_x is the view without it.
        self._x1 = np.ones((ring, n_in + 1))
        self.pending_x = self._x1[:, :-1]
        self.pending_price = [0.0] * ring
        self.pending_sign = [0.0] * ring  # sign of the last move: persistence's call
        self.pending_cell = [-1] * ring  # the counting rule's cell (`TickFeatures.cell`)
        self.pending_ready = [False] * ring
        self.ticks = 0  # ticks accepted
        self.last_ts: int | None = None
        self.refused = 0
        self._up_lo = 1.0 + config.dead_band
        self._down_hi = 1.0 - config.dead_band
        # Row views, made once: a list index costs a third of a numpy row view's
        self._x1_rows = list(self._x1)
        self._net_x_rows = list(nets.X)  # each network's own input for its step
        self._targets = [0.0] * k
        self._offsets = [0.0] * k
        self._sync_base_logits()

    def _sync_base_logits(self) -> None:
        """Each horizon's current base-rate logit, in horizon order: the offsets of this
        tick's predictions, kept up to date as labels count (read on every tick)."""
        self._base_logits = [hz.base_logit for hz in self.horizons]

    # ------------------------------------------------------------- properties
    @property
    def model_version(self) -> int:
        """Backprop steps of the first horizon's network (the top-level prediction's)."""
        return self.nets.steps[0]

    def network(self, index: int = 0) -> Network:
        """A copy of horizon `index`'s network as a stand-alone `Network`."""
        return self.nets.network(index)

    def base_rate(self, index: int = 0) -> float:
        """p_up of the base-rate baseline of horizon `index`."""
        return self.horizons[index].base_rate()

    def is_late(self, ts_ms: int) -> bool:
        """True when ts is strictly older than the last accepted tick (equal is fine)."""
        return self.last_ts is not None and ts_ms < self.last_ts

    def forecasts(self) -> list[dict[str, Any]]:
        """The latest tick's published forecasts, one per horizon, as in the prediction's
        `forecasts` (before the first tick: each horizon's base rate)."""
        n, steps = self.ticks - 1, self.nets.steps
        out = []
        for hz in self.horizons:
            p = hz.pending_p[n % hz.h] if n >= 0 else hz.base
            direction = "up" if p >= 0.5 else "down"
            version = steps[hz.index]
            out.append(
                {"horizon": hz.h, "p_up": p, "direction": direction, "model_version": version}
            )
        return out

    def scorecards(self) -> dict[str, dict[str, Any]]:
        """Each horizon's scorecard (`Scorecard.as_dict`), keyed by the horizon as a string."""
        return {str(hz.h): hz.card.as_dict() for hz in self.horizons}

    def drift_states(self) -> dict[str, dict[str, Any]]:
        """Each horizon's drift alarms (`DriftMonitor.as_dict`), keyed like `scorecards`."""
        return {str(hz.h): hz.drift.as_dict() for hz in self.horizons}

    def network_bytes(self) -> list[bytes]:
        """Each horizon's network as `Network.to_bytes()`, in horizon order."""
        return [self.nets.network_bytes(k) for k in range(len(self.horizons))]

    def weights_sha256(self) -> str:
        """sha256 of every horizon's network bytes, in horizon order, hex (worker vs backtest)."""
        digest = hashlib.sha256()
        for blob in self.network_bytes():
            digest.update(blob)
        return digest.hexdigest()

    # ------------------------------------------------------------------ tick
    def on_tick(self, ts_ms: int, price: float) -> TickResult:
        """Process one valid, not-late tick (the caller checked `is_late`)."""
        self.last_ts = ts_ms
        features = self.features
        features.update(price)
        n = self.ticks
        self.ticks = n + 1
        ring = self._ring
        scores: list[Score] = []
        stepping: list[int] = []
        prices, up_lo, down_hi = self.pending_price, self._up_lo, self._down_hi
        offset, base_logits = self.config.base_rate_offset, self._base_logits
        for hz in self.horizons:
            h = hz.h
            if n < h:
                continue
            then = (n - h) % ring
            old = prices[then]
            if price > old * up_lo:
                label = 1
            elif price < old * down_hi:
                label = 0
            else:
                continue  # inside the dead band: neither scored nor trained on
            sign = self.pending_sign[then]
            hz.count(label, self.pending_cell[then])
            base_logits[hz.index] = hz.base_logit
            if not self.pending_ready[then]:
                continue
            own = n % h
            score = hz.resolve(own, label, 1 if sign > 0 else 0, n + 1)
            scores.append(score)
            k = hz.index
            if hz.drift.response != "none":
                self._respond(hz, score.alarm)
            stepping.append(k)
            # its stored input leaves the ring before this tick's x may overwrite it
            self._net_x_rows[k][...] = self._x1_rows[then]
            self._targets[k] = float(label)
            if offset:  # the base-rate logit this prediction's network output was added to
                self._offsets[k] = _logit(hz.pending_base[own])
        slot = n % ring
        ready = features.ready
        cell = features.cell()
        x = self._x1_rows[slot]
        if ready:
            features.write(x)
        x_offsets = base_logits if offset and ready else None
        if stepping:
            start = time.perf_counter()
            refused, p_nets = self.nets.learn(
                stepping,
                self._targets,
                X_MAX,
                x if ready else None,
                self._offsets if offset else None,
                x_offsets,
            )
            seconds = time.perf_counter() - start
            self.refused += len(refused)
            steps = len(stepping) - len(refused)
            result = TickResult(
                self._publish(n, p_nets, cell),
                tuple(scores),
                steps,
                len(refused),
                (seconds,) if steps else (),
            )
        else:
            p_nets = self.nets.predict(x, x_offsets) if ready else None
            result = TickResult(self._publish(n, p_nets, cell), tuple(scores), 0, 0, ())
        self.pending_price[slot] = price
        self.pending_sign[slot] = features.last_sign
        self.pending_cell[slot] = cell
        self.pending_ready[slot] = ready
        return result

    def _respond(self, hz: Horizon, alarm: bool) -> None:
        """Act on a drift alarm before horizon `hz` steps: ``reset`` puts its network back to
        its initial weights; ``boost`` steps it at a multiple of the learning rate while
        its monitor has boosted steps left (`DriftMonitor.rate_factor`)."""
        drift, k = hz.drift, hz.index
        if alarm and drift.response == "reset":
            self.nets.set_weights(k, build_network(self.symbol, self.config, hz.h))
        elif drift.response == "boost":
            self.nets.learning_rates[k] = (
                horizon_learning_rate(self.config, hz.h) * drift.rate_factor
            )
            drift.stepped()

    def _publish(self, n: int, p_nets: list[float] | None, cell: int) -> Prediction:
        """Every horizon's published p_up for tick n (the base rate while not ready), the
        counting rule's `cell` that of tick n."""
        steps = self.nets.steps
        forecasts = []
        gate = self.config.rule_gate
        for hz in self.horizons:
            base = hz.base
            own = n % hz.h
            if p_nets is None:
                p = p_net = p_raw = rule = base
            else:
                p_raw = p_nets[hz.index]
                if gate:  # hz.gated(p_raw, cell), inlined
                    rule = hz.rule_rate(cell)
                    shut = hz.trust <= 0.0 and (p_raw >= 0.5) != (rule >= 0.5)
                    p_net = rule if shut else p_raw
                else:
                    p_net, rule = p_raw, base
                w = hz.w_net[own]  # the slot's mixture of the network and the base rate
                p = w * p_net + (1.0 - w) * base
            hz.pending_p[own] = p
            hz.pending_net[own] = p_net
            hz.pending_base[own] = base
            hz.pending_raw[own] = p_raw
            hz.pending_rule[own] = rule
            forecasts.append(Forecast(hz.h, p, "up" if p >= 0.5 else "down", steps[hz.index]))
        first = forecasts[0]
        return Prediction(
            first.p_up,
            first.direction,
            first.model_version,
            p_nets is not None,
            first.horizon,
            tuple(forecasts),
        )

    # --------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        """The whole state, no pickle: see the FORMAT notes above `_pack`."""
        return _pack(self)

    @classmethod
    def from_bytes(cls, blob: bytes, config: LearnerConfig) -> OnlineLearner:
        """Restore `to_bytes` output; FormatError (a ValueError) on anything malformed
        or on state learned under different settings than `config`."""
        return _unpack(blob, config)


# ---------------------------------------------------------------- format
# b"TPLS" | u32 LE header length | header (UTF-8 JSON) | float64 LE arrays
#        | each horizon's floats | each horizon's network blob (`Network.to_bytes`)
#
# The header holds the format name and version, the symbol, the learning
# settings, the integer counters, the name and shape of each shared array in
# payload order, each horizon's counters and float count, and each network blob's
# length. Floats live only in the arrays (exact).
MAGIC = b"TPLS"
VERSION = 7  # 3: one network, pending ring, base rate and mixture per horizon; 4: scorecards,
# drift; 5: the sign rule's counts, the gate's trust, the raw and rule rings; 6: a mixture
# per slot of a horizon (its two loss sums are rings); 7: the counting rule's cells (the sign
# rule's four counts become two lists of counts per cell, and each pending tick keeps its cell)
_LEN = struct.Struct("<I")
_ARRAYS = ("features", "moves", "pending_x", "pending")  # payload order


def _arrays(learner: OnlineLearner) -> dict[str, np.ndarray]:
    scalars, moves = learner.features.state_arrays()
    pending = np.array(
        [
            learner.pending_price,
            learner.pending_sign,
            [1.0 if ready else 0.0 for ready in learner.pending_ready],
            learner.pending_cell,
        ]
    )
    return {"features": scalars, "moves": moves, "pending_x": learner.pending_x, "pending": pending}


def _pack(learner: OnlineLearner) -> bytes:
    arrays = _arrays(learner)
    states = [hz.state() for hz in learner.horizons]
    nets = learner.network_bytes()
    header = {
        "format": "tickprop.learner",
        "version": VERSION,
        "symbol": learner.symbol,
        "config": learner.config.as_dict(),
        "counters": {
            "ticks": learner.ticks,
            "last_ts": learner.last_ts,
            "refused": learner.refused,
        },
        "arrays": {name: list(arrays[name].shape) for name in _ARRAYS},
        "horizons": [
            {"horizon": hz.h, "counters": counters, "floats": len(floats)}
            for hz, (counters, floats) in zip(learner.horizons, states, strict=True)
        ],
        "network_bytes": [len(blob) for blob in nets],
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = [np.ascontiguousarray(arrays[n], dtype="<f8").tobytes() for n in _ARRAYS]
    body += [floats.astype("<f8").tobytes() for _, floats in states]
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *body, *nets])


class _Reader:
    """Reads float64 arrays and byte blobs off a learner state, refusing truncation."""

    def __init__(self, blob: bytes, offset: int) -> None:
        self.blob, self.offset = blob, offset

    def floats(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        end = self.offset + 8 * count
        if end > len(self.blob):
            raise FormatError(f"learner state truncated in {name}")
        values = np.frombuffer(self.blob, dtype="<f8", count=count, offset=self.offset)
        self.offset = end
        return values.reshape(shape).astype(np.float64)

    def raw(self, name: str, size: int) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.blob):
            raise FormatError(f"learner state truncated in {name}")
        out = self.blob[self.offset : end]
        self.offset = end
        return out


def _unpack(blob: bytes, config: LearnerConfig) -> OnlineLearner:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise FormatError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise FormatError(f"not a tickprop learner state: starts {blob[:4]!r}, expected {MAGIC!r}")
    (head_len,) = _LEN.unpack_from(blob, 4)
    if head_len > len(blob) - 8:
        raise FormatError(f"header length {head_len} exceeds the {len(blob) - 8} bytes left")
    try:
        header = json.loads(blob[8 : 8 + head_len])
        header = _check_header(header, config)
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"learner state header: {exc}") from None
    nets = StackedNetworks.blank(
        len(config.horizons),
        [n_features(config.window), *config.hidden, 1],
        [config.activation] * len(config.hidden),
        config.momentum,
        config.l2,
    )
    learner = OnlineLearner(header["symbol"], config, nets)
    expected = {n: a.shape for n, a in _arrays(learner).items()}
    reader = _Reader(blob, 8 + head_len)
    values: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        shape = tuple(header["arrays"][name])
        if shape != expected[name]:
            raise FormatError(f"array {name!r}: expected shape {expected[name]}, found {shape}")
        values[name] = reader.floats(f"array {name!r}", shape)
    floats = [reader.floats(f"horizon {hz.h}", (hz.n_floats(),)) for hz in learner.horizons]
    for hz, size in zip(learner.horizons, header["network_bytes"], strict=True):
        nets.load(hz.index, reader.raw(f"network {hz.h}", size))
    if reader.offset != len(blob):
        raise FormatError(f"{len(blob) - reader.offset} unexpected bytes after the networks")
    try:
        learner.features.load_state_arrays(values["features"], values["moves"])
        for hz, meta, f in zip(learner.horizons, header["horizons"], floats, strict=True):
            hz.load(meta["counters"], f)
        learner._sync_base_logits()
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    pending = values["pending"]
    if not (np.isfinite(pending).all() and np.isfinite(values["pending_x"]).all()):
        raise FormatError("pending predictions hold non-finite values")
    np.copyto(learner.pending_x, values["pending_x"])
    learner.pending_price = pending[0].tolist()
    learner.pending_sign = pending[1].tolist()
    learner.pending_ready = (pending[2] != 0.0).tolist()
    cells = pending[3]
    if not np.all((cells == np.round(cells)) & (cells >= -1) & (cells < N_CELLS)):
        raise FormatError(f"pending cells must be integers in [-1, {N_CELLS})")
    learner.pending_cell = [int(c) for c in cells.tolist()]
    counters = header["counters"]
    learner.ticks = counters["ticks"]
    learner.last_ts = counters["last_ts"]
    learner.refused = counters["refused"]
    return learner


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_header(header: Any, config: LearnerConfig) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise ValueError("not a JSON object")
    if header.get("format") != "tickprop.learner" or header.get("version") != VERSION:
        raise ValueError(
            f"format {header.get('format')!r} version {header.get('version')!r}, "
            f"expected 'tickprop.learner' version {VERSION}"
        )
    if not isinstance(header.get("symbol"), str):
        raise ValueError("symbol must be a string")
    stored = header.get("config")
    if stored != config.as_dict():
        raise ValueError(
            f"state was learned with settings {stored}, but the learner is configured with "
            f"{config.as_dict()}; delete the state or restore the settings"
        )
    counters = header.get("counters")
    if not isinstance(counters, dict):
        raise ValueError("counters missing")
    for name in ("ticks", "refused"):
        if not _is_count(counters.get(name)):
            raise ValueError(f"counter {name!r} must be a count, got {counters.get(name)!r}")
    last_ts = counters.get("last_ts")
    if last_ts is not None and (not isinstance(last_ts, int) or isinstance(last_ts, bool)):
        raise ValueError(f"last_ts must be an integer or null, got {last_ts!r}")
    arrays = header.get("arrays")
    if not isinstance(arrays, dict) or set(arrays) != set(_ARRAYS):
        raise ValueError(f"arrays must name exactly {list(_ARRAYS)}")
    for name in _ARRAYS:
        shape = arrays[name]
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in shape
        ):
            raise ValueError(f"array {name!r} has a bad shape {shape!r}")
    horizons = header.get("horizons")
    if not isinstance(horizons, list) or [
        h.get("horizon") if isinstance(h, dict) else None for h in horizons
    ] != list(config.horizons):
        raise ValueError(f"horizons must describe {list(config.horizons)} in order")
    if not all(isinstance(h.get("counters"), dict) for h in horizons):
        raise ValueError("each horizon needs its counters")
    sizes = header.get("network_bytes")
    if (
        not isinstance(sizes, list)
        or len(sizes) != len(config.horizons)
        or not all(_is_count(n) for n in sizes)
    ):
        raise ValueError(f"network_bytes must list {len(config.horizons)} lengths")
    return header
