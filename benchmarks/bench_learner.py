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
"""

from __future__ import annotations

import argparse
import csv
import gzip
import time
from pathlib import Path

from model.learner import LearnerConfig, OnlineLearner

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


if __name__ == "__main__":
    main()
