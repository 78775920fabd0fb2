"""What is learnable at all on the late E-mini windows: offline fits of the learner's features.

Run: .venv/bin/python benchmarks/eval_ceiling.py [--horizons 5,20] [--epochs 1000]
     [--quick] [--walk-mlp] [--singles]

`eval_fresh_starts.py` shows the published p_up missing the 5- and 20-tick goals
(+1.5 / +3 points over the best simple rule) when the learner starts fresh on the
late part of the E-mini file (its last 100k trades, 50k chunks 3 and 4). Before
tuning the online learner further, this script measures how far ANY model of the
same inputs gets there. It computes, exactly as the learner sees them, the feature
vector x of every tick (`model.features.TickFeatures`, started fresh on the
window, as a fresh learner's) and the counting rule's cell, and the labels of each
horizon as the learner scores them (the price h trades later above / below; none
when equal, the default dead band of 0; only predictions made with ready
features), and fits offline:

- `cells`: the counting rule's cells, each calling its majority label;
- `logit`: logistic regression on x (Newton's method, a tiny ridge);
- `logit+cell`: logistic regression on x and the cell one-hot;
- `mlp16`, `mlp32x16`: tanh networks [n, 16, 1] and [n, 32, 16, 1] trained by
  full-batch Adam (lr 0.01) for `--epochs` epochs (numpy);

each five ways (columns):

- `in-sample`: trained and tested on the same window: an upper bound (for the
  networks mostly memory: consecutive labels overlap in h − 1 of their h trades,
  so the window holds far fewer independent labels than predictions);
- `2-fold`: trained on one half of the window, tested on the other, both ways
  (blocked in time);
- `walk`: walk-forward, what a fresh start could do with a batch optimiser: the
  window's scored predictions in 10 blocks, each called by a fit on every label
  resolved before it (reversal in the first block); networks only with
  `--walk-mlp` (slow);
- `recent`: the same, each block's fit on the last 2,000 resolved labels only
  (the window drifts: an online learner forgets, a fit on all the past does not);
- `transfer`: trained on the first 150k trades (disjoint from every late
  window), tested on the window.

Every figure is accuracy minus the best simple rule's on the same predictions
(the base rate as the learner computes it online, persistence, reversal), in
points, as in `eval_fresh_starts.py`. Then:

- the fresh learner itself on each window (`OnlineLearner`, default settings):
  the lead of its published p_up, its gated network (the mixture's expert), its
  network alone and its counting rule alone, over all scored predictions and after
  the first 1,000: where the published lead is lost;
- the same fits with cheap candidate features added to x (the last three moves'
  sign pattern, the last move's size in ticks, the time since the last trade and
  since the last move, trades in the last second, s·ln(1 + run) of this and the
  previous level, the price's position in the range of its last 16 moves; and,
  from the file's volume column, which `on_tick` does not receive today, the last
  trade's size and s·ln(1 + volume traded at this level)), once without the volume
  ones and once with all;
- each candidate alone added to x (`--singles` runs only this): the change in the
  logistic regression's walk-forward and transfer leads.

docs/horizons.md records a run and what it showed. It reports, it does not
assert (~8 minutes on the 2-core dev machine with the defaults, most of it the
networks' fits; `--quick` runs the first two tables only).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.eval_quality import DATA, ES_GOALS
from model.features import N_CELLS, TickFeatures
from model.learner import LearnerConfig, OnlineLearner

FILE = "es_ticks_2013-09-01_03.csv.gz"
TICK = 0.25  # the E-mini's price grid (candidate features only)
WALK_BLOCKS = 10  # walk-forward refits: the scored predictions in this many blocks
RECENT = 2000  # the `recent` walk-forward fits on this many latest resolved labels only
EARLY = 1000  # the learner's table: its lead after this many scored predictions too
TRAIN_END = 150_000  # the transfer fits train on trades [0, TRAIN_END)
WINDOWS = {  # name -> trades [lo, hi), as eval_fresh_starts.py cuts them
    "last 100k": (150_000, 250_000),
    "50k #3": (150_000, 200_000),
    "50k #4": (200_000, 250_000),
}
# The candidate features' groups (columns of `Samples.extra`), by name.
CANDIDATES = {
    "pattern3": range(0, 8),  # one-hot of the last three moves' signs
    "move size": range(8, 9),
    "dt trade": range(9, 10),
    "dt move": range(10, 11),
    "trades/1s": range(11, 12),
    "s*ln run": range(12, 13),
    "s*ln prev run": range(13, 14),
    "range pos": range(14, 15),
    "volume": range(15, 16),  # needs the volume column
    "level volume": range(16, 17),  # needs the volume column
}
N_EXTRA = 17
NO_VOLUME = np.arange(N_EXTRA) < 15
ALL = np.ones(N_EXTRA, dtype=bool)
NONE = np.zeros(N_EXTRA, dtype=bool)


@dataclass
class Samples:
    """The scored predictions of one stretch of trades, started fresh: x, candidate
    features, cell, persistence's call, each horizon's label (−1: none) and the online
    base rate's call, one row per tick with ready features."""

    x: np.ndarray
    extra: np.ndarray
    cell: np.ndarray
    persist: np.ndarray
    labels: dict[int, np.ndarray]
    base_call: dict[int, np.ndarray]

    def scored(self, h: int) -> np.ndarray:
        return self.labels[h] >= 0

    def design(self, mask: np.ndarray, extra: np.ndarray, cells: bool = False) -> np.ndarray:
        """The inputs of rows `mask`: x, the candidate columns `extra`, the cell one-hot."""
        parts = [self.x[mask], self.extra[mask][:, extra]]
        if cells:
            cell = self.cell[mask]
            hot = np.zeros((len(cell), N_CELLS))
            hot[np.arange(len(cell)), np.maximum(cell, 0)] = cell >= 0
            parts.append(hot)
        return np.hstack(parts)


def read_trades() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts ms, price, volume) of every E-mini trade, in file order (one symbol, in time)."""
    with gzip.open(DATA / FILE, "rt", newline="") as f:
        rows = [(int(r["ts"]), float(r["price"]), float(r["volume"])) for r in csv.DictReader(f)]
    ts, price, volume = (np.array(c) for c in zip(*rows, strict=True))
    return ts, price, volume


def collect(ts: np.ndarray, price: np.ndarray, volume: np.ndarray, horizons: list[int]) -> Samples:
    """The learner's view of the trades from a fresh start (the learner's `on_tick` order:
    update, cell, write x when ready), plus the candidate features."""
    window = LearnerConfig().window
    feats = TickFeatures(window)
    n = len(price)
    x_all = np.zeros((n, feats.n_features))
    extra = np.zeros((n, N_EXTRA))
    cell = np.full(n, -1)
    sign = np.zeros(n)
    ready = np.zeros(n, dtype=bool)
    signs: list[float] = []  # the last three moves' signs, newest last
    levels: list[float] = []  # the prices of the last `window` moves
    last_ts = last_move_ts = ts[0]
    level_volume = 0.0
    start = 0  # the first trade within the last second
    for i in range(n):
        p = price[i]
        moved = i > 0 and p != price[i - 1]
        feats.update(p)
        if moved:
            signs = [*signs[-2:], 1.0 if p > price[i - 1] else -1.0]
            levels = [*levels[-(window - 1) :], p]
            last_move_ts = ts[i]
            level_volume = 0.0
        level_volume += volume[i]
        while ts[start] < ts[i] - 1000:
            start += 1
        s = feats.last_sign
        cell[i] = feats.cell()
        sign[i] = s
        if feats.ready:
            ready[i] = True
            feats.write(x_all[i])
            extra[i, sum(int(sg > 0) << k for k, sg in enumerate(signs))] = 1.0
            lo, hi = min(levels), max(levels)
            extra[i, 8:] = (
                min(abs(p - price[i - 1]) / TICK, 4.0) if moved else 0.0,
                math.log1p(ts[i] - last_ts),
                math.log1p(ts[i] - last_move_ts),
                math.log1p(i - start),
                s * math.log1p(feats.run),
                s * math.log1p(feats.prev_run),
                s * ((p - lo) / (hi - lo) - 0.5 if hi > lo else 0.0),
                math.log1p(volume[i]),
                s * math.log1p(level_volume),
            )
        last_ts = ts[i]
    labels, base_call = {}, {}
    for h in horizons:
        lab = np.full(n, -1)
        later, now = price[h:], price[:-h]
        lab[:-h] = np.where(later > now, 1, np.where(later < now, 0, -1))
        # The base rate the learner publishes at tick t counts the labels of ticks <= t - h.
        ups = np.concatenate([np.zeros(h), np.cumsum(lab == 1)[:-h]])
        downs = np.concatenate([np.zeros(h), np.cumsum(lab == 0)[:-h]])
        base_call[h] = ((ups + 1) / (ups + downs + 2) >= 0.5)[ready]
        labels[h] = lab[ready]
    persist = (sign[ready] > 0).astype(int)
    return Samples(x_all[ready], extra[ready], cell[ready], persist, labels, base_call)


# ---------------------------------------------------------------- fits
Model = Callable[[Samples, np.ndarray], np.ndarray]  # (samples, rows) -> P(up) of those rows
Fit = Callable[[Samples, np.ndarray, np.ndarray], Model]  # (samples, rows, labels) -> model


def logit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-4) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression by Newton's method (a tiny ridge keeps it finite if separable)."""
    a = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(a.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) / len(y) + ridge * w
        hess = (a * (p * (1 - p))[:, None]).T @ a / len(y) + ridge * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return lambda z: 1.0 / (1.0 + np.exp(-(np.hstack([z, np.ones((len(z), 1))]) @ w)))


def mlp(
    x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], epochs: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A tanh network with a sigmoid output, full-batch Adam (lr 0.01) on mean log loss."""
    rng = np.random.default_rng(0)
    sizes = [x.shape[1], *hidden, 1]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        params += [rng.normal(0.0, 1.0 / math.sqrt(a), (a, b)), np.zeros(b)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    target = y.reshape(-1, 1)

    def forward(z: np.ndarray) -> list[np.ndarray]:
        acts = [z]
        for i in range(0, len(params), 2):
            s = acts[-1] @ params[i] + params[i + 1]
            acts.append(np.tanh(s) if i + 2 < len(params) else 1.0 / (1.0 + np.exp(-s)))
        return acts

    for t in range(1, epochs + 1):
        acts = forward(x)
        delta = (acts[-1] - target) / len(target)
        grads: list[np.ndarray] = []
        for i in range(len(params) - 2, -1, -2):
            grads = [acts[i // 2].T @ delta, delta.sum(0), *grads]
            if i:
                delta = (delta @ params[i].T) * (1.0 - acts[i // 2] ** 2)
        for p, g, mi, vi in zip(params, grads, m, v, strict=True):
            mi += 0.1 * (g - mi)
            vi += 0.001 * (g * g - vi)
            p -= 0.01 * (mi / (1 - 0.9**t)) / (np.sqrt(vi / (1 - 0.999**t)) + 1e-8)
    return lambda z: forward(z)[-1][:, 0]


def cells_fit(s: Samples, rows: np.ndarray, y: np.ndarray) -> Model:
    """Each cell's share of up labels (0.5 for a cell without labels)."""
    rate = np.full(N_CELLS + 1, 0.5)  # index −1 (no cell) is the last
    for c in range(-1, N_CELLS):
        hit = s.cell[rows] == c
        if hit.any():
            rate[c] = y[hit].mean()
    return lambda t, m: rate[t.cell[m]]


def on_design(
    fit: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]],
    extra: np.ndarray,
    cells: bool = False,
) -> Fit:
    """A fit of a matrix learner on `Samples.design(rows, extra, cells)`."""

    def make(s: Samples, rows: np.ndarray, y: np.ndarray) -> Model:
        f = fit(s.design(rows, extra, cells), y)
        return lambda t, m: f(t.design(m, extra, cells))

    return make


def fits(epochs: int, extra: np.ndarray) -> dict[str, Fit]:
    return {
        "cells": cells_fit,
        "logit": on_design(logit, extra),
        "logit+cell": on_design(logit, extra, cells=True),
        "mlp16": on_design(lambda x, y: mlp(x, y, (16,), epochs), extra),
        "mlp32x16": on_design(lambda x, y: mlp(x, y, (32, 16), epochs), extra),
    }


def lead(p_up: np.ndarray, s: Samples, h: int, rows: np.ndarray) -> float:
    """Accuracy of `p_up` minus the best simple rule's, in points, over predictions `rows`."""
    y = s.labels[h][rows]
    rules = (s.base_call[h][rows], s.persist[rows] == 1, s.persist[rows] == 0)
    best = max(float(np.mean(c == y)) for c in rules)
    return 100.0 * (float(np.mean((p_up >= 0.5) == y)) - best)


def walk_forward(fit: Fit, s: Samples, h: int, recent: int | None = None) -> np.ndarray:
    """P(up) of each scored prediction from a fit on every label resolved before its block
    (rows are consecutive ticks, so the label of a row at least h rows back has resolved),
    or on the last `recent` of them; the first block calls reversal."""
    scored = s.scored(h)
    idx = np.flatnonzero(scored)
    y = s.labels[h]
    p = np.where(s.persist[idx] == 1, 0.0, 1.0)
    cuts = np.linspace(0, len(idx), WALK_BLOCKS + 1).astype(int)
    for lo, hi in zip(cuts[1:-1], cuts[2:], strict=True):
        known = np.zeros_like(scored)
        known[idx[idx < idx[lo] - h][-recent if recent else 0 :]] = True
        block = np.zeros_like(scored)
        block[idx[lo:hi]] = True
        p[lo:hi] = fit(s, known, y[known])(s, block)
    return p


def evaluate(fit: Fit, late: Samples, early: Samples, h: int, walk: bool) -> list[float]:
    """[in-sample, 2-fold, walk-forward, walk-forward on the last RECENT labels, transfer]
    leads of a fit (the walk-forward ones NaN unless `walk`)."""
    scored = late.scored(h)
    idx = np.flatnonzero(scored)
    y = late.labels[h]
    inside = fit(late, scored, y[scored])(late, scored)
    half = np.zeros_like(scored)
    half[idx[: len(idx) // 2]] = True
    other = scored & ~half
    folds = np.concatenate(
        [fit(late, other, y[other])(late, half), fit(late, half, y[half])(late, other)]
    )
    forward = [walk_forward(fit, late, h, r) for r in (None, RECENT)] if walk else None
    moved = fit(early, early.scored(h), early.labels[h][early.scored(h)])(late, scored)
    return [
        lead(inside, late, h, scored),
        lead(folds, late, h, scored),
        *([math.nan] * 2 if forward is None else [lead(p, late, h, scored) for p in forward]),
        lead(moved, late, h, scored),
    ]


def fit_table(
    title: str, table: dict[str, Fit], lates: dict[str, Samples], early: Samples,
    horizons: list[int], walk_mlp: bool,
) -> None:  # fmt: skip
    print(f"\n{title}: accuracy minus the best simple rule, points")
    print(f"{'window':<10} {'h':>3} {'scored':>7} {'goal':>5} {'fit':<11} "
          f"{'in-sample':>9} {'2-fold':>7} {'walk':>7} {'recent':>7} {'transfer':>8}")  # fmt: skip
    for wname, late in lates.items():
        for h in horizons:
            goal = 100 * ES_GOALS.get(h, 0.0)
            for fname, fit in table.items():
                walk = walk_mlp or not fname.startswith("mlp")
                ins, cv, wf, wr, tr = evaluate(fit, late, early, h, walk)
                print(f"{wname:<10} {h:>3} {int(late.scored(h).sum()):>7,} {goal:>+5.1f} "
                      f"{fname:<11} {ins:>+9.2f} {cv:>+7.2f} {wf:>+7.2f} {wr:>+7.2f} {tr:>+8.2f}",
                      flush=True)  # fmt: skip


# ---------------------------------------------------------------- the learner
def learner_table(ts: np.ndarray, price: np.ndarray, horizons: list[int]) -> None:
    """The fresh learner's leads per window: published, gated, network alone, rule alone."""
    print(f"\nthe learner from a fresh start: lead over the best simple rule, points, all scored "
          f"predictions / after the first {EARLY:,}")  # fmt: skip
    names = ("published", "gated", "network", "cell rule")
    print(f"{'window':<10} {'h':>3} " + " ".join(f"{n:>15}" for n in names))
    # the default horizons and any others asked for (each horizon independent of the rest)
    config = LearnerConfig(horizons=tuple(sorted({*LearnerConfig().horizons, *horizons})))
    for wname, (lo, hi) in WINDOWS.items():
        learner = OnlineLearner("ES", config)
        pending: dict[tuple[int, int], tuple[float, float]] = {}
        rows: dict[int, list[tuple[float, ...]]] = {h: [] for h in horizons}
        for t, p in zip(ts[lo:hi].tolist(), price[lo:hi].tolist(), strict=True):
            result = learner.on_tick(t, p)
            n = learner.ticks - 1
            for s in result.scores:
                gated, rule = pending.pop((s.horizon, n - s.horizon))
                if s.horizon in rows:
                    row = (s.label, s.persist, s.p_base, s.p_net, gated, s.p_raw, rule)
                    rows[s.horizon].append(row)
            for hz in learner.horizons:
                own = n % hz.h
                pending[(hz.h, n)] = (hz.pending_net[own], hz.pending_rule[own])
        for h in horizons:
            a = np.array(rows[h])
            cells = []
            for col in range(3, 7):
                figures = []
                for part in (a, a[EARLY:]):
                    y, persist = part[:, 0], part[:, 1]
                    best = max(np.mean((part[:, 2] >= 0.5) == y), np.mean(persist == y),
                               np.mean(persist != y))  # fmt: skip
                    figures.append(100 * (np.mean((part[:, col] >= 0.5) == y) - best))
                cells.append(f"{figures[0]:>+7.2f}/{figures[1]:>+6.2f}")
            print(f"{wname:<10} {h:>3} " + " ".join(f"{c:>15}" for c in cells), flush=True)


def single_candidates(lates: dict[str, Samples], early: Samples, horizons: list[int]) -> None:
    """Each candidate group alone added to x: the change in the logistic regression's
    walk-forward / transfer lead, in points."""
    print("\none candidate at a time, logit on x + it: change in walk-forward / transfer lead")
    plain = on_design(logit, NONE)
    for wname, late in lates.items():
        for h in horizons:
            base = evaluate(plain, late, early, h, True)
            cells = []
            for gname, group in CANDIDATES.items():
                extra = NONE.copy()
                extra[list(group)] = True
                with_it = evaluate(on_design(logit, extra), late, early, h, True)
                cells.append(f"{gname} {with_it[2] - base[2]:+.2f}/{with_it[4] - base[4]:+.2f}")
            print(f"{wname:<10} h={h:<3} " + ", ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", default="5,20", help="comma list of horizons")
    parser.add_argument("--epochs", type=int, default=1000, help="full-batch Adam epochs")
    parser.add_argument("--walk-mlp", action="store_true", help="walk-forward networks too")
    parser.add_argument("--quick", action="store_true", help="skip the candidate features")
    parser.add_argument("--singles", action="store_true", help="only the one-at-a-time table")
    args = parser.parse_args()
    horizons = [int(h) for h in args.horizons.split(",")]
    start = time.perf_counter()
    ts, price, volume = read_trades()
    early = collect(ts[:TRAIN_END], price[:TRAIN_END], volume[:TRAIN_END], horizons)
    lates = {
        name: collect(ts[a:b], price[a:b], volume[a:b], horizons)
        for name, (a, b) in WINDOWS.items()
    }
    print(f"features and labels: {time.perf_counter() - start:.0f} s")
    if args.singles:
        single_candidates(lates, early, horizons)
        return
    fit_table("the learner's x", fits(args.epochs, NONE), lates, early, horizons, args.walk_mlp)
    learner_table(ts, price, horizons)
    if not args.quick:
        for title, extra in (("x + candidates without volume", NO_VOLUME),
                             ("x + every candidate", ALL)):  # fmt: skip
            table = {k: v for k, v in fits(args.epochs, extra).items() if k in ("logit", "mlp16")}
            fit_table(title, table, lates, early, horizons, args.walk_mlp)
        single_candidates(lates, early, horizons)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
