"""The E-mini accuracy margins from fresh starts: the whole file and disjoint slices of it.

Run: .venv/bin/python benchmarks/eval_fresh_starts.py [--set field=value ...] [--size N]

Held-out E-mini days look like the learner started fresh on a part of the shipped
file it has not seen. This script runs the default learner (`OnlineLearner`, as the
backtest does) from a fresh start on the whole file, its first and last 100k
trades and its disjoint slices (50k trades each, or `--size`), and prints per window and horizon:

- `pub-best`: the published p_up's accuracy minus the best simple rule's
  (base rate, persistence, reversal); goals >= -0.005 at 1 tick, >= +0.015 at 5,
  >= +0.03 at 20;
- `raw-best`: the same for the horizon's network alone, before the mixture;
- `early`: `pub-best` over the first N scored predictions only (default 1,000):
  what a fresh start costs while the network learns;
- `w_net`: the network's mean weight in the mixture over those first N;
- `ll-base`: the published log loss minus the base rate's (goal <= +0.005).

It reports, it does not assert.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

from benchmarks.eval_quality import ES_GOALS, LL_GOAL, Series, parse_set, read
from model.learner import LearnerConfig, OnlineLearner

EPS = 1e-15


@dataclass
class Tally:
    """Hits of each model and log losses of the probabilistic ones, over scored predictions."""

    n: int = 0
    hits: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("pub", "raw", "base", "persist", "reversal"), 0)
    )
    loss_pub: float = 0.0
    loss_base: float = 0.0
    w_net: float = 0.0

    def add(self, label: int, p_pub: float, p_raw: float, p_base: float, persist: int) -> None:
        self.n += 1
        calls = {
            "pub": p_pub >= 0.5,
            "raw": p_raw >= 0.5,
            "base": p_base >= 0.5,
            "persist": persist == 1,
            "reversal": persist == 0,
        }
        for name, up in calls.items():
            self.hits[name] += int(up) == label
        self.loss_pub -= math.log(max(p_pub if label else 1.0 - p_pub, EPS))
        self.loss_base -= math.log(max(p_base if label else 1.0 - p_base, EPS))

    def margin(self, model: str) -> float:
        best = max(self.hits[k] for k in ("base", "persist", "reversal"))
        return (self.hits[model] - best) / max(self.n, 1)


def run(series: Series, config: LearnerConfig, early: int) -> dict[int, tuple[Tally, Tally]]:
    """(all, first `early`) tallies per horizon, from a fresh learner per symbol."""
    learners: dict[str, OnlineLearner] = {}
    tallies = {h: (Tally(), Tally()) for h in config.horizons}
    for sym, ts, price in series:
        learner = learners.get(sym)
        if learner is None:
            learner = learners[sym] = OnlineLearner(sym, config)
        if learner.is_late(ts):
            continue
        for s in learner.on_tick(ts, price).scores:
            whole, first = tallies[s.horizon]
            whole.add(s.label, s.p_net, s.p_raw, s.p_base, s.persist)
            if first.n < early:
                first.add(s.label, s.p_net, s.p_raw, s.p_base, s.persist)
                hz = learner.horizons[learner.config.horizons.index(s.horizon)]
                first.w_net += hz.w_net[(learner.ticks - 1) % hz.h]  # its slot's weight
    return tallies


def windows(es: Series, size: int = 50_000) -> list[tuple[str, Series]]:
    out = [("whole 250k", es), ("first 100k", es[:100_000]), ("last 100k", es[-100_000:])]
    label = f"{size // 1000}k"
    out += [(f"{label} #{i}", es[lo : lo + size]) for i, lo in enumerate(range(0, len(es), size))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="LearnerConfig field=value")
    parser.add_argument("--early", type=int, default=1000, help="first N scored predictions")
    parser.add_argument("--window", action="append", help="only these windows (by name)")
    parser.add_argument("--size", type=int, default=50_000, help="trades per disjoint slice")
    args = parser.parse_args()
    config = LearnerConfig(**parse_set(args.set))
    print(f"settings: {config.as_dict()}")
    es = read("es_ticks_2013-09-01_03.csv.gz")
    head = f"{'window':<11} {'h':>3} {'scored':>7} {'pub-best':>9} {'raw-best':>9} "
    head += f"{'early':>8} {'w_net':>6} {'ll-base':>8}  goal"
    print(head)
    start = time.perf_counter()
    worst: dict[int, float] = {}
    for name, series in windows(es, args.size):
        if args.window and name not in args.window:
            continue
        for h, (whole, first) in run(series, config, args.early).items():
            ll = (whole.loss_pub - whole.loss_base) / max(whole.n, 1)
            pub = whole.margin("pub")
            ok = pub >= ES_GOALS.get(h, -1.0) and ll <= LL_GOAL
            worst[h] = min(worst.get(h, math.inf), pub)
            print(
                f"{name:<11} {h:>3} {whole.n:>7,} {pub:>+9.4f} {whole.margin('raw'):>+9.4f} "
                f"{first.margin('pub'):>+8.4f} {first.w_net / max(first.n, 1):>6.3f} "
                f"{ll:>+8.4f}  {'ok' if ok else 'MISS'}",
                flush=True,
            )
    print("worst pub-best per horizon: " + ", ".join(f"h={h} {v:+.4f}" for h, v in worst.items()))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
