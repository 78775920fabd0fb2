"""Backtest throughput (ticks/s) on the shipped E-mini ticks, beside the bare network step.

Run: .venv/bin/python benchmarks/bench_backtest.py [--ticks N]

Measured in one process, with the default settings (horizons 1, 5 and 20): (1) the
whole backtest loop — CSV reading and validation, features, prediction of every
horizon, scoring, at most one backprop step per horizon per tick — over the real
file; (2) the same learner over ticks already in memory; (3) the bare
`Network.predict` and `Network.learn_one` of one horizon's network. The ratio says
how many bare steps one backtested tick costs. Goal (issues 3 and 12): >= 30,000
ticks/s with the default horizons.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from model.learner import LearnerConfig, OnlineLearner, build_network
from service.tools.backtest import Backtest, run_rows
from service.tools.ticks_csv import read_ticks

DATA = Path(__file__).resolve().parents[1] / "data" / "es_ticks_2013-09-01_03.csv.gz"


def best_of(repeats: int, fn) -> float:  # type: ignore[no-untyped-def]
    return min(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = LearnerConfig()

    def full() -> float:
        bt = run_rows(Backtest(config), read_ticks(DATA))
        return bt.seconds / bt.ticks

    ticks = [(r.tick.ts_ms, r.tick.price) for r in read_ticks(DATA) if r.tick is not None]

    def learner_only() -> float:
        learner = OnlineLearner("ES", config)
        start = time.perf_counter()
        for ts, p in ticks:
            learner.on_tick(ts, p)
        return (time.perf_counter() - start) / len(ticks)

    net = build_network("ES", config, config.horizons[0])
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(2000, net.n_in))
    ys = (rng.random(2000) < 0.5).astype(float)

    def step() -> float:
        start = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            net.learn_one(x, y)
        return (time.perf_counter() - start) / len(xs)

    def predict() -> float:
        start = time.perf_counter()
        for x in xs:
            net.predict(x)
        return (time.perf_counter() - start) / len(xs)

    t_full = best_of(args.repeats, full)
    t_learner = best_of(args.repeats, learner_only)
    t_step = best_of(args.repeats * 3, step)
    t_predict = best_of(args.repeats * 3, predict)
    labelled = sum(1 for a, b in zip(ticks, ticks[1:], strict=False) if a[1] != b[1]) / len(ticks)
    print(f"E-mini ticks: {len(ticks):,}, share with a label (a price change next): {labelled:.3f}")
    print(f"network {net.sizes}, default settings {config.as_dict()}")
    print(f"bare network: learn_one {t_step * 1e6:6.2f} us   predict {t_predict * 1e6:6.2f} us")
    print(
        f"learner only (ticks in memory): {1 / t_learner:>9,.0f} ticks/s = "
        f"{t_learner * 1e6:6.2f} us/tick = {t_learner / t_step:4.1f} bare steps"
    )
    print(
        f"backtest (CSV read + validate + learn): {1 / t_full:>9,.0f} ticks/s = "
        f"{t_full * 1e6:6.2f} us/tick = {t_full / t_step:4.1f} bare steps   (goal >= 30,000)"
    )


if __name__ == "__main__":
    main()
