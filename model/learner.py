"""The per-symbol online learner: features, prequential scoring, one backprop step per label.

Each tick, in this order (DESIGN.md):

1. fold the price into the feature window (`model.features.TickFeatures`);
2. resolve the prediction made `horizon` ticks ago: its label is up (1) when the
   price rose by more than the dead band, down (0) when it fell by more than it,
   none inside the band (neither scored nor trained on);
3. score that prediction and the baselines' predictions made at the same tick
   ("test, then train"), only if the features were ready when it was made;
4. take exactly one backprop step on the stored (x, label);
5. predict for this tick: the network's p_up once the features are ready, the
   base rate before.

The baselines, scored on the same labels: `base_rate` (p_up = (ups + 1) / (labels
+ 2), the share of up labels so far with a uniform prior), `persistence` (the
last non-zero move continues) and `reversal` (it reverses).

Everything is deterministic: a symbol's initial weights depend only on
(config.seed, symbol) through SHA-256, and `to_bytes` / `from_bytes` carry the
whole state (network and optimiser, feature window, running statistics, pending
predictions with their inputs, counters), so a restored learner continues
bit-identically to one that never stopped.
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

from model.errors import FormatError, RefusedUpdate
from model.features import TickFeatures, n_features
from model.network import Network

MODELS = ("ffbpn", "base_rate", "persistence", "reversal")
PROB_MODELS = ("ffbpn", "base_rate")


@dataclass(frozen=True)
class LearnerConfig:
    """The learning settings; the ONE place their defaults live (worker and backtest)."""

    window: int = 16  # non-zero moves the features look back over (TICKPROP_WINDOW)
    horizon: int = 1  # ticks ahead a prediction is about (TICKPROP_HORIZON)
    hidden: tuple[int, ...] = (32,)  # hidden layer sizes (TICKPROP_HIDDEN)
    learning_rate: float = 0.005  # SGD step (TICKPROP_LEARNING_RATE)
    seed: int = 7  # with the symbol, fixes the initial weights (TICKPROP_SEED)
    dead_band: float = 0.0  # relative move a label must exceed: |p_h/p_0 - 1| > dead_band
    l2: float = 0.0  # L2 weight decay of the SGD step
    momentum: float = 0.0  # SGD momentum
    activation: str = "tanh"  # hidden units; the output is a sigmoid with log loss

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not self.hidden or any(int(n) < 1 for n in self.hidden):
            raise ValueError(f"hidden must be one or more positive sizes, got {self.hidden}")
        if not (math.isfinite(self.dead_band) and 0.0 <= self.dead_band < 1.0):
            raise ValueError(f"dead_band must be in [0, 1), got {self.dead_band}")
        object.__setattr__(self, "hidden", tuple(int(n) for n in self.hidden))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings (hidden as a list)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


# The per-tick results below are plain slots dataclasses, not frozen ones: a frozen
# dataclass's __init__ costs ~4x (object.__setattr__ per field), on every tick. Treat
# them as values all the same.


@dataclass(slots=True)
class Prediction:
    p_up: float
    direction: str  # "up" | "down"
    model_version: int
    features_ready: bool
    horizon: int


@dataclass(slots=True)
class Score:
    """One resolved, labelled prediction made with ready features: what each model said."""

    label: int  # 1 = up, 0 = down
    p_net: float  # ffbpn's p_up; it calls up when p_net >= 0.5
    p_base: float  # base_rate's p_up; likewise
    persist: int  # persistence's call, 1 up / 0 down; reversal calls 1 - persist

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
    scores: tuple[Score, ...]  # the prediction resolved (and scored) by this tick, if any
    steps: int  # backprop steps taken on this tick (0 or 1)
    refused: int  # steps refused (non-finite)
    step_seconds: tuple[float, ...]  # wall time of each forward + backward + update


def symbol_seed(seed: int, symbol: str) -> int:
    """A 64-bit seed from (seed, symbol) by SHA-256: stable across processes and versions."""
    digest = hashlib.sha256(f"tickprop/{seed}/{symbol}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def build_network(symbol: str, config: LearnerConfig) -> Network:
    """The symbol's initial network: hidden weights from its seed, output layer zero.

    A zero output layer starts every symbol at p_up = 0.5 with no random opinion
    to unlearn; the hidden units still learn (their gradient flows once the
    output weights move off zero).
    """
    sizes = [n_features(config.window), *config.hidden, 1]
    net = Network(
        sizes=sizes,
        activations=[config.activation] * len(config.hidden) + ["sigmoid"],
        loss="log",
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        l2=config.l2,
        seed=symbol_seed(config.seed, symbol),
    )
    weights = [w.copy() for w in net.weights]
    weights[-1][:] = 0.0
    net.set_parameters(weights, [b.copy() for b in net.biases])
    return net


class OnlineLearner:
    """One symbol's features, network, pending predictions and baselines."""

    def __init__(self, symbol: str, config: LearnerConfig) -> None:
        self.symbol = symbol
        self.config = config
        self.network = build_network(symbol, config)
        self.features = TickFeatures(config.window)
        h, n_in = config.horizon, self.features.n_features
        self._x = np.zeros(n_in)  # this tick's input, before it is stored
        # Pending predictions: a ring of `horizon` slots; the prediction of tick n
        # sits in slot n % h and resolves at tick n + h, just before slot reuse.
        # The scalars are lists: each tick reads and writes one element of each.
        self.pending_x = np.zeros((h, n_in))
        self.pending_price = [0.0] * h
        self.pending_p = [0.0] * h  # network's p_up (== base rate when not ready)
        self.pending_base = [0.0] * h  # base rate's p_up
        self.pending_sign = [0.0] * h  # sign of the last move: persistence's call
        self.pending_ready = [False] * h
        self.ticks = 0  # ticks accepted
        self.last_ts: int | None = None
        self.ups = 0  # labels seen (all, ready or not), for the base rate
        self.downs = 0
        self.scored = 0
        self.refused = 0
        self._up_lo = 1.0 + config.dead_band
        self._down_hi = 1.0 - config.dead_band

    # ------------------------------------------------------------- properties
    @property
    def model_version(self) -> int:
        """Backprop steps the network has taken."""
        return self.network.steps

    def base_rate(self) -> float:
        """p_up of the base-rate baseline: (ups + 1) / (labels + 2)."""
        return (self.ups + 1.0) / (self.ups + self.downs + 2.0)

    def is_late(self, ts_ms: int) -> bool:
        """True when ts is strictly older than the last accepted tick (equal is fine)."""
        return self.last_ts is not None and ts_ms < self.last_ts

    def weights_sha256(self) -> str:
        """sha256 of the network's `to_bytes()`, hex: compares worker and backtest."""
        return hashlib.sha256(self.network.to_bytes()).hexdigest()

    # ------------------------------------------------------------------ tick
    def on_tick(self, ts_ms: int, price: float) -> TickResult:
        """Process one valid, not-late tick (the caller checked `is_late`)."""
        self.last_ts = ts_ms
        self.features.update(price)
        slot = self.ticks % self.config.horizon
        resolved = self.ticks >= self.config.horizon
        self.ticks += 1
        if resolved:
            score, seconds, refused = self._resolve(slot, price)
            if score is not None:
                return TickResult(
                    self._predict(slot, price),
                    (score,),
                    0 if seconds is None else 1,
                    refused,
                    () if seconds is None else (seconds,),
                )
        return TickResult(self._predict(slot, price), (), 0, 0, ())

    def _resolve(self, slot: int, price: float) -> tuple[Score | None, float | None, int]:
        """Score and learn from the prediction in `slot`: (score, step seconds, refused).

        The score is None when the label fell inside the dead band or the features were
        not ready; the step seconds are None when no step was taken or it was refused.
        """
        then = self.pending_price[slot]
        if price > then * self._up_lo:
            label = 1
        elif price < then * self._down_hi:
            label = 0
        else:
            return None, None, 0  # inside the dead band: neither scored nor trained on
        if label:
            self.ups += 1
        else:
            self.downs += 1
        if not self.pending_ready[slot]:
            return None, None, 0
        score = Score(
            label,
            self.pending_p[slot],
            self.pending_base[slot],
            1 if self.pending_sign[slot] > 0 else 0,
        )
        self.scored += 1
        start = time.perf_counter()
        try:
            self.network.learn_one(self.pending_x[slot], float(label))
        except RefusedUpdate:
            self.refused += 1
            return score, None, 1
        return score, time.perf_counter() - start, 0

    def _predict(self, slot: int, price: float) -> Prediction:
        base = self.base_rate()
        ready = self.features.ready
        if ready:
            x = self.pending_x[slot]
            self.features.write(x)
            p = self.network.predict_one(x)
        else:
            p = base
        self.pending_price[slot] = price
        self.pending_p[slot] = p
        self.pending_base[slot] = base
        self.pending_sign[slot] = self.features.last_sign
        self.pending_ready[slot] = ready
        return Prediction(
            p, "up" if p >= 0.5 else "down", self.network.steps, ready, self.config.horizon
        )

    # --------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        """The whole state, no pickle: see `model.learner` FORMAT notes in `_pack`."""
        return _pack(self)

    @classmethod
    def from_bytes(cls, blob: bytes, config: LearnerConfig) -> OnlineLearner:
        """Restore `to_bytes` output; FormatError (a ValueError) on anything malformed
        or on state learned under different settings than `config`."""
        return _unpack(blob, config)


# ---------------------------------------------------------------- format
# b"TPLS" | u32 LE header length | header (UTF-8 JSON) | float64 LE arrays | network blob
#
# The header holds the format name and version, the symbol, the learning
# settings, the integer counters, the name and shape of each array in payload
# order and the network blob's length. Floats live only in the arrays (exact).
MAGIC = b"TPLS"
VERSION = 2  # 2: features gained sign, record, level_record (3 more inputs and scalars)
_LEN = struct.Struct("<I")
_ARRAYS = ("features", "moves", "pending_x", "pending")  # payload order


def _arrays(learner: OnlineLearner) -> dict[str, np.ndarray]:
    scalars, moves = learner.features.state_arrays()
    pending = np.stack(
        [
            learner.pending_price,
            learner.pending_p,
            learner.pending_base,
            learner.pending_sign,
            [1.0 if ready else 0.0 for ready in learner.pending_ready],
        ]
    )
    return {"features": scalars, "moves": moves, "pending_x": learner.pending_x, "pending": pending}


def _pack(learner: OnlineLearner) -> bytes:
    arrays = _arrays(learner)
    net_blob = learner.network.to_bytes()
    header = {
        "format": "tickprop.learner",
        "version": VERSION,
        "symbol": learner.symbol,
        "config": learner.config.as_dict(),
        "counters": {
            "ticks": learner.ticks,
            "last_ts": learner.last_ts,
            "ups": learner.ups,
            "downs": learner.downs,
            "scored": learner.scored,
            "refused": learner.refused,
        },
        "arrays": {name: list(arrays[name].shape) for name in _ARRAYS},
        "network_bytes": len(net_blob),
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = [np.ascontiguousarray(arrays[n], dtype="<f8").tobytes() for n in _ARRAYS]
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *body, net_blob])


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
    learner = OnlineLearner(header["symbol"], config)
    expected = {n: a.shape for n, a in _arrays(learner).items()}
    offset = 8 + head_len
    values: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        shape = tuple(header["arrays"][name])
        if shape != expected[name]:
            raise FormatError(f"array {name!r}: expected shape {expected[name]}, found {shape}")
        size = 8 * int(np.prod(shape))
        if offset + size > len(blob):
            raise FormatError(f"learner state truncated in array {name!r}")
        values[name] = np.frombuffer(blob, dtype="<f8", count=size // 8, offset=offset).reshape(
            shape
        )
        offset += size
    if len(blob) - offset != header["network_bytes"]:
        raise FormatError(
            f"network blob is {len(blob) - offset} bytes, header says {header['network_bytes']}"
        )
    network = Network.from_bytes(blob[offset:])
    if network.sizes != learner.network.sizes:
        raise FormatError(f"network sizes {network.sizes} != {learner.network.sizes} of the config")
    try:
        learner.features.load_state_arrays(values["features"].copy(), values["moves"].copy())
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    pending = values["pending"]
    if not (np.isfinite(pending).all() and np.isfinite(values["pending_x"]).all()):
        raise FormatError("pending predictions hold non-finite values")
    learner.network = network
    np.copyto(learner.pending_x, values["pending_x"])
    learner.pending_price = pending[0].tolist()
    learner.pending_p = pending[1].tolist()
    learner.pending_base = pending[2].tolist()
    learner.pending_sign = pending[3].tolist()
    learner.pending_ready = (pending[4] != 0.0).tolist()
    counters = header["counters"]
    learner.ticks = counters["ticks"]
    learner.last_ts = counters["last_ts"]
    learner.ups = counters["ups"]
    learner.downs = counters["downs"]
    learner.scored = counters["scored"]
    learner.refused = counters["refused"]
    return learner


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
    for name in ("ticks", "ups", "downs", "scored", "refused"):
        v = counters.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"counter {name!r} must be a count, got {v!r}")
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
    if not isinstance(header.get("network_bytes"), int):
        raise ValueError("network_bytes must be an integer")
    return header
