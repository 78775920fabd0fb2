"""Prequential quality of the default learner against every baseline, over many series.

Run: .venv/bin/python benchmarks/eval_quality.py [--set learning_rate=0.01 ...] [--only es]

The DEFAULT learner is judged on held-out series nobody here has (other E-mini
days, intraday and daily prices from several markets, other scales), each
started fresh and scored per horizon. This script therefore runs the backtest
engine (`service.tools.backtest.Backtest`, the worker's learner) in-process over
series that stand in for them, every one from a fresh start:

- E-mini ticks: the whole shipped file, five disjoint 50k-tick chunks, and the
  first and last 100k ticks;
- "FX-like": the E-mini resampled to every 20th tick and to 1-minute last prices
  (fewer repeats, weaker bounce, closer to a quoted rate);
- daily stocks: each symbol alone and all five together;
- synthetic: a bid-ask bounce around a random-walk mid on a tick grid (the
  bounce is learnable, the mid is not), a tick random walk on a grid (nothing
  learnable), daily random walks (Gaussian, Student-t 3, and GARCH-like
  volatility clusters standing in for a crypto price), a trend (a walk with
  drift), a mean-reverting price (an AR(1) log price around a level) and a
  regime switch (returns that run, then bounce, alternating every 1,500 days).

It reports, it does not assert. One row per series and horizon. Columns: the
model's accuracy and log loss, each baseline's, and the two goal margins:
`acc-best` (model accuracy minus the best baseline's; on E-mini ticks the goal is
>= +0.015 at 5 ticks, >= +0.03 at 20 and >= -0.005 at 1) and `ll-base` (model log
loss minus the base rate's; goal <= +0.005 on every series and horizon).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import math
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from model.learner import LearnerConfig
from service.tools.backtest import Backtest

DATA = Path(__file__).resolve().parents[1] / "data"
Series = list[tuple[str, int, float]]  # (symbol, ts_ms, price)


def read(name: str) -> Series:
    with gzip.open(DATA / name, "rt", newline="") as f:
        return [(r["symbol"], int(r["ts"]), float(r["price"])) for r in csv.DictReader(f)]


def one_symbol(prices: Iterable[float], symbol: str = "S") -> Series:
    return [(symbol, i, float(p)) for i, p in enumerate(prices)]


# ---------------------------------------------------------------- synthetic
def bounce_ticks(seed: int, n: int = 100_000) -> Series:
    """Trades at bid or ask around a random-walk mid on a 0.25 grid.

    The mid moves a tick with probability 0.01 per trade; the trade side keeps
    its side with probability 0.8 (order flow comes in runs), else flips.
    """
    rng = np.random.default_rng(seed)
    mid = 1000 + 0.25 * np.cumsum(np.where(rng.random(n) < 0.01, rng.choice([-1, 1], n), 0))
    flips = rng.random(n) < 0.2
    side = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0)
    return one_symbol(mid + 0.125 * side)


def grid_walk(seed: int, n: int = 100_000) -> Series:
    """A tick random walk on a 0.25 grid, a move on 10% of ticks: nothing learnable."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n) < 0.1, rng.choice([-1, 1], n), 0)
    return one_symbol(1000 + 0.25 * np.cumsum(steps))


def daily_walk(seed: int, kind: str, n: int = 4000) -> Series:
    """Daily closes: Gaussian, Student-t(3) or GARCH(1,1)-like returns, ~1-3% a day."""
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        r = rng.normal(0, 0.01, n)
    elif kind == "t3":
        r = rng.standard_t(3, n) * 0.01
    else:  # volatility clusters, as in a crypto price
        r = np.zeros(n)
        var = 0.03**2
        for i in range(n):
            r[i] = math.sqrt(var) * rng.standard_normal()
            var = 0.03**2 * 0.05 + 0.85 * var + 0.10 * r[i] ** 2
    return one_symbol(100 * np.exp(np.cumsum(r)))


def trend(seed: int, n: int = 4000) -> Series:
    """Daily closes with a steady drift of a quarter of a day's volatility."""
    rng = np.random.default_rng(seed)
    return one_symbol(100 * np.exp(np.cumsum(rng.normal(0.0025, 0.01, n))))


def mean_reverting(seed: int, n: int = 4000) -> Series:
    """A log price pulled back to its level: x_t = 0.9 x_{t-1} + e_t (an AR(1))."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    e = rng.normal(0, 0.01, n)
    for i in range(1, n):
        x[i] = 0.9 * x[i - 1] + e[i]
    return one_symbol(100 * np.exp(x))


def regime_switch(seed: int, n: int = 6000, every: int = 1500) -> Series:
    """Returns that run (r_t = +0.4 r_{t-1} + e) then bounce (-0.4), switching every `every`."""
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    e = rng.normal(0, 0.01, n)
    for i in range(1, n):
        phi = 0.4 if (i // every) % 2 == 0 else -0.4
        r[i] = phi * r[i - 1] + e[i]
    return one_symbol(100 * np.exp(np.cumsum(r)))


# ---------------------------------------------------------------- resampling
def chunk(ticks: Series, start: int, size: int) -> Series:
    return ticks[start : start + size]


def only(ticks: Series, symbol: str) -> Series:
    return [t for t in ticks if t[0] == symbol]


def every_nth(ticks: Series, n: int) -> Series:
    return ticks[::n]


def minute_last(ticks: Series) -> Series:
    """The last trade price of each minute (1-minute bars' closes)."""
    out: dict[int, tuple[str, int, float]] = {}
    for sym, ts, p in ticks:
        out[ts // 60_000] = (sym, ts, p)
    return list(out.values())


# ---------------------------------------------------------------- the run
ES_GOALS = {1: -0.005, 5: 0.015, 20: 0.03}  # accuracy lead over the best rule, E-mini ticks
LL_GOAL = 0.005  # log loss at most the base rate's + this, everywhere


@dataclasses.dataclass
class Row:
    name: str
    kind: str  # "es" (accuracy goals per horizon) or "other" (log-loss goal only)
    horizon: int
    section: dict[str, Any]  # the report's horizons[str(h)]

    def margins(self) -> tuple[float, float]:
        m, b = self.section["model"], self.section["baselines"]
        best = max(b[k]["accuracy"] for k in b)
        return m["accuracy"] - best, m["log_loss"] - b["base_rate"]["log_loss"]

    def cells(self) -> list[str]:
        m, b = self.section["model"], self.section["baselines"]
        acc_margin, ll_margin = self.margins()
        return [
            self.name,
            str(self.horizon),
            f"{self.section['scored']:,}",
            f"{m['accuracy']:.4f}",
            f"{m['log_loss']:.4f}",
            f"{b['base_rate']['accuracy']:.4f}",
            f"{b['base_rate']['log_loss']:.4f}",
            f"{b['persistence']['accuracy']:.4f}",
            f"{b['reversal']['accuracy']:.4f}",
            f"{acc_margin:+.4f}",
            f"{ll_margin:+.4f}",
            self.verdict(),
        ]

    def verdict(self) -> str:
        acc_margin, ll_margin = self.margins()
        misses = []
        if ll_margin > LL_GOAL:
            misses.append("LL")
        goal = ES_GOALS.get(self.horizon)
        if self.kind == "es" and goal is not None and acc_margin < goal:
            misses.append("ACC")
        return "ok" if not misses else "MISS " + "+".join(misses)


HEAD = [
    "series",
    "h",
    "scored",
    "acc",
    "logloss",
    "base_acc",
    "base_ll",
    "persist",
    "reversal",
    "acc-best",
    "ll-base",
    "goal",
]


def backtest(series: Series, config: LearnerConfig) -> dict[str, Any]:
    bt = Backtest(config)
    start = time.perf_counter()
    for sym, ts, p in series:
        bt.add(sym, ts, p)
    bt.seconds = time.perf_counter() - start
    return bt.report()


def suites() -> list[tuple[str, str, str, Callable[[], Series]]]:
    """(group, name, kind, series factory) for every series, cheapest data first."""
    es = read("es_ticks_2013-09-01_03.csv.gz")
    stocks = read("stocks_daily_2000-2013.csv.gz")
    out: list[tuple[str, str, str, Callable[[], Series]]] = [
        ("es", "ES whole file 250k", "es", lambda: es),
        ("es", "ES first 100k", "es", lambda: es[:100_000]),
        ("es", "ES last 100k", "es", lambda: es[-100_000:]),
    ]
    for i in range(5):
        lo = i * 50_000
        out.append(("es", f"ES chunk {i} (50k)", "es", partial(chunk, es, lo, 50_000)))
    out += [
        ("fx", "ES every 20th tick", "other", lambda: every_nth(es, 20)),
        ("fx", "ES 1-minute last", "other", lambda: minute_last(es)),
    ]
    out.append(("stocks", "stocks, 5 together", "other", lambda: stocks))
    for sym in ("AAPL", "GOOG", "IBM", "MSFT", "FB"):
        out.append(("stocks", f"stocks {sym}", "other", partial(only, stocks, sym)))
    out += [
        ("synth", "bid-ask bounce, seed 1", "other", lambda: bounce_ticks(1)),
        ("synth", "bid-ask bounce, seed 2 (20k)", "other", lambda: bounce_ticks(2, 20_000)),
        ("synth", "grid walk 100k", "other", lambda: grid_walk(3)),
        ("synth", "gauss daily 4000", "other", lambda: daily_walk(4, "gauss")),
        ("synth", "t3 daily 4000", "other", lambda: daily_walk(5, "t3")),
        ("synth", "garch daily 4000", "other", lambda: daily_walk(6, "garch")),
        ("synth", "gauss daily 1000", "other", lambda: daily_walk(7, "gauss", 1000)),
        ("synth", "trend daily 4000", "other", lambda: trend(8)),
        ("synth", "mean-reverting daily 4000", "other", lambda: mean_reverting(9)),
        ("synth", "regime switch daily 6000", "other", lambda: regime_switch(10)),
    ]
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(LearnerConfig)}
    values: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {item}: unknown field; known: {', '.join(fields)}")
        default = getattr(LearnerConfig(), key)
        if isinstance(default, tuple):
            values[key] = tuple(int(v) for v in raw.split(","))
        elif isinstance(default, bool):  # bool("False") is True
            if raw.lower() not in ("true", "false"):
                raise SystemExit(f"--set {item}: expected true or false")
            values[key] = raw.lower() == "true"
        else:
            values[key] = type(default)(raw)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="LearnerConfig field=value")
    parser.add_argument("--only", action="append", help="groups: es, fx, stocks, synth")
    args = parser.parse_args()
    config = LearnerConfig(**parse_set(args.set))
    print(f"settings: {config.as_dict()}")
    rows = []
    start = time.perf_counter()
    for group, name, kind, make in suites():
        if args.only and group not in args.only:
            continue
        report = backtest(make(), config)
        for h, section in report["horizons"].items():
            rows.append(Row(name, kind, int(h), section))
            print(" | ".join(rows[-1].cells()), flush=True)
    widths = [max(len(h), *(len(r.cells()[i]) for r in rows)) for i, h in enumerate(HEAD)]

    def line(cells: list[str]) -> str:
        padded = zip(cells, widths, strict=True)
        return "  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, w) in enumerate(padded))

    print()
    print(line(HEAD))
    for r in rows:
        print(line(r.cells()))
    misses = [f"{r.name} h={r.horizon}" for r in rows if r.verdict() != "ok"]
    print(
        f"\n{len(rows) - len(misses)}/{len(rows)} meet their goal; "
        f"misses: {', '.join(misses) or 'none'}; {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
