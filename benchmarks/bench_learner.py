"""The learner's per-tick cost with 3 horizons against 1, as ratios measured in one process.

Run: .venv/bin/python benchmarks/bench_learner.py [--ticks N] [--repeats R]

`OnlineLearner.on_tick` over ticks already in memory (no CSV, no I/O), every
configuration timed in interleaved rounds (best of R) so the shared machine's load
hits all alike. Streams:

- E-mini trades (one symbol): 94% repeat the last price, so a 1-tick label
  resolves on ~6% of ticks while a 20-tick label resolves on most;
- daily closes of five stocks (every tick moves: every horizon learns every tick).

Configurations: the default horizons (1, 5, 20) against one horizon, both the
1-tick horizon (the old default) and the 20-tick one (which, alone, trains as often
as the three together do on the E-mini stream). Goal (issue 12): 3 horizons cost at
most 1.5x one.

Then the stacked networks alone (`StackedNetworks`, no features, scoring or mixture),
3 against 1 doing the same work per tick: a prediction for every network, and a tick
where every network steps on its label and predicts in the same pass. That is what
stacking the weights makes cheap; the learner's ratio on a real stream also counts
that more labels resolve with more horizons.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import time
from pathlib import Path

import numpy as np

from model.learner import X_MAX, LearnerConfig, OnlineLearner, build_network
from model.stacked import StackedNetworks

DATA = Path(__file__).resolve().parents[1] / "data"
CONFIGS = {"1": (1,), "20": (20,), "1,5,20": (1, 5, 20)}


def read(name: str, limit: int) -> list[tuple[str, int, float]]:
    with gzip.open(DATA / name, "rt", newline="") as f:
        rows = [(r["symbol"], int(r["ts"]), float(r["price"])) for r in csv.DictReader(f)]
    return rows[:limit]


def per_tick(ticks: list[tuple[str, int, float]], horizons: tuple[int, ...]) -> tuple[float, int]:
    """Seconds per tick through fresh learners, and the backprop steps they took."""
    config = LearnerConfig(horizons=horizons)
    learners: dict[str, OnlineLearner] = {}
    start = time.perf_counter()
    for symbol, ts, price in ticks:
        learner = learners.get(symbol)
        if learner is None:
            learner = learners[symbol] = OnlineLearner(symbol, config)
        if not learner.is_late(ts):
            learner.on_tick(ts, price)
    seconds = (time.perf_counter() - start) / len(ticks)
    return seconds, sum(sum(ln.nets.steps) for ln in learners.values())


def stacked_per_tick(horizons: tuple[int, ...], n: int) -> tuple[float, float]:
    """Seconds per prediction, and per fused step-and-prediction, of the stacked networks
    of `horizons` (every network stepping), over n random inputs within the features' range."""
    config = LearnerConfig(horizons=horizons)
    nets = StackedNetworks([build_network("ES", config, h) for h in horizons])
    k, rng = len(horizons), np.random.default_rng(0)
    xs = rng.uniform(-X_MAX, X_MAX, (n, nets.sizes[0]))
    targets, offsets, every = [1.0] * k, [0.0] * k, list(range(k))
    start = time.perf_counter()
    for x in xs:
        nets.predict(x, offsets)
    predict = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i, x in enumerate(xs):
        nets.X_body[:] = xs[i - 1]
        targets[0] = float(i & 1)
        nets.learn(every, targets, X_MAX, x, offsets, offsets)
    return predict, (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    streams = {
        "E-mini trades": read("es_ticks_2013-09-01_03.csv.gz", args.ticks),
        "daily stocks": read("stocks_daily_2000-2013.csv.gz", args.ticks),
    }
    for name, ticks in streams.items():
        best = dict.fromkeys(CONFIGS, float("inf"))
        steps = dict.fromkeys(CONFIGS, 0)
        for _ in range(args.repeats):
            for label, horizons in CONFIGS.items():
                seconds, steps[label] = per_tick(ticks, horizons)
                best[label] = min(best[label], seconds)
        print(f"{name}: {len(ticks):,} ticks, best of {args.repeats} interleaved rounds")
        for label in CONFIGS:
            print(
                f"  horizons {label:<7} {best[label] * 1e6:6.2f} us/tick   "
                f"{steps[label] / len(ticks):5.2f} backprop steps/tick"
            )
        three = best["1,5,20"]
        print(
            f"  3 horizons / 1: {three / best['1']:.2f}x against horizon 1, "
            f"{three / best['20']:.2f}x against horizon 20   (goal <= 1.5x)"
        )
    n = 20_000
    fast = {1: [float("inf")] * 2, 3: [float("inf")] * 2}
    for _ in range(args.repeats):
        for horizons in ((1,), (1, 5, 20)):
            seconds = stacked_per_tick(horizons, n)
            old = fast[len(horizons)]
            fast[len(horizons)] = [min(a, b) for a, b in zip(old, seconds, strict=True)]
    print(f"stacked networks alone: {n:,} ticks, best of {args.repeats} interleaved rounds")
    for what, i in (("prediction", 0), ("step + prediction, every network", 1)):
        one, three = fast[1][i], fast[3][i]
        print(f"  {what:<33} 1: {one * 1e6:5.2f} us  3: {three * 1e6:5.2f} us  {three / one:.2f}x")


if __name__ == "__main__":
    main()
