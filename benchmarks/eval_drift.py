"""Drift detection on synthetic regime switches: delay, false alarms, cost; writes docs/drift.md.

Run: .venv/bin/python benchmarks/eval_drift.py [--seeds 5] [--out docs/drift.md]

The streams: prices on a 0.25 grid whose every move repeats the previous move's sign
with probability q. q = 0.8 is a trending regime (persistence right 80% of the time),
q = 0.2 a mean-reverting one, q = 0.5 a random walk (nothing to learn). A default
learner (`model.learner.OnlineLearner`) with one horizon (1) runs over each stream from
a fresh start; the per-prediction log loss of its network is the stream the detectors
watch. Then the default learner with every horizon runs over the same streams and the
shipped E-mini trades, its own monitors counting alarms per horizon.

- switches: segments of 5,000 ticks alternating q = 0.8 and 0.2 ("flip"), and
  0.8 -> 0.5 -> 0.8 ... ("fade": only 0.8 -> 0.5 raises the loss);
- stationary: q = 0.8 and q = 0.5 throughout, 30,000 ticks (every alarm is false).

A switch that raises the loss is detected when an alarm comes within 2,000 scores of
it; its delay is the number of scores from the switch to that alarm. Every other alarm
is false; the false-alarm rate is per 10,000 scores. Detectors: Page-Hinkley (ours,
`model.drift.PageHinkley`) over a grid of (delta, threshold), on the log loss and on
the 0/1 error; ADWIN (river's, when river is installed) on the 0/1 error. The cost is
microseconds per update, measured here in the same process.

The response to an alarm (`TICKPROP_DRIFT_RESPONSE`) is measured by running the learner
with each response over the same streams: accuracy in the 2,000 scores after each
switch and over whole streams, and on the stationary streams (where any alarm is false,
so a response can only cost); and on the E-mini trades, every horizon.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.drift import PH_DELTA, PH_THRESHOLD, RESPONSES, PageHinkley
from model.learner import LearnerConfig, OnlineLearner
from model.scorecard import log_loss

SEGMENT = 5_000
WINDOW_AFTER = 2_000  # scores after a switch in which an alarm counts as its detection
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stream:
    name: str
    losses: list[float]  # the network's log loss per scored prediction
    errors: list[float]  # 1.0 where its call was wrong
    hits: list[int]
    switches: list[int]  # score index of each loss-raising switch


def regime_prices(qs: Sequence[float], seed: int, segment: int = SEGMENT) -> list[float]:
    """Prices whose moves repeat the last sign with probability q, one q per segment."""
    rng = np.random.default_rng(seed)
    prices, price, sign = [], 1000.0, 1.0
    for q in qs:
        for u in rng.random(segment):
            sign = sign if u < q else -sign
            price += 0.25 * sign
            prices.append(price)
    return prices


def run_learner(
    prices: Sequence[float], response: str = "none"
) -> tuple[list[float], list[int], list[int]]:
    """(log loss, hit, tick index) of each scored prediction of a fresh default learner."""
    learner = OnlineLearner("S", LearnerConfig(horizons=(1,), drift_response=response))
    losses, hits, ticks = [], [], []
    for i, price in enumerate(prices):
        for score in learner.on_tick(i, price).scores:
            losses.append(log_loss(score.p_raw, score.label))  # what the learner's detector sees
            hits.append(int((score.p_net >= 0.5) == (score.label == 1)))  # the published call
            ticks.append(i)
    return losses, hits, ticks


def make_stream(name: str, qs: Sequence[float], seed: int, response: str = "none") -> Stream:
    losses, hits, ticks = run_learner(regime_prices(qs, seed), response)
    switches = []
    for k in range(1, len(qs)):
        less_predictable = _expected_accuracy(qs[k]) < _expected_accuracy(qs[k - 1])
        reversed_regime = (qs[k] - 0.5) * (qs[k - 1] - 0.5) < 0
        if less_predictable or reversed_regime:
            switches.append(next(j for j, t in enumerate(ticks) if t >= k * SEGMENT))
    return Stream(name, losses, [1.0 - h for h in hits], hits, switches)


def _expected_accuracy(q: float) -> float:
    return max(q, 1.0 - q)


SCENARIOS: dict[str, list[float]] = {
    "flip": [0.8, 0.2, 0.8, 0.2, 0.8, 0.2],
    "fade": [0.8, 0.5, 0.8, 0.5, 0.8, 0.5],
    "steady q=0.8": [0.8] * 6,
    "steady q=0.5": [0.5] * 6,
}


# ---------------------------------------------------------------- detectors
@dataclass
class Outcome:
    detected: int
    switches: int
    delays: list[int]
    false_alarms: int
    scores: int


def evaluate(
    streams: Sequence[Stream], detector: Callable[[], Callable[[float], bool]], on: str
) -> Outcome:
    out = Outcome(0, 0, [], 0, 0)
    for s in streams:
        update = detector()
        values = s.losses if on == "loss" else s.errors
        alarms = [i for i, x in enumerate(values) if update(x)]
        out.scores += len(values)
        out.switches += len(s.switches)
        claimed: set[int] = set()
        for sw in s.switches:
            hit = next((a for a in alarms if sw <= a < sw + WINDOW_AFTER), None)
            if hit is not None:
                out.detected += 1
                out.delays.append(hit - sw)
                claimed.add(hit)
        out.false_alarms += sum(
            1
            for a in alarms
            if a not in claimed and not any(sw <= a < sw + WINDOW_AFTER for sw in s.switches)
        )
    return out


def page_hinkley(delta: float, threshold: float) -> Callable[[], Callable[[float], bool]]:
    return lambda: PageHinkley(delta=delta, threshold=threshold).update


def adwin(delta: float) -> Callable[[], Callable[[float], bool]] | None:
    try:
        from river.drift import ADWIN
    except ImportError:
        return None

    def make() -> Callable[[float], bool]:
        detector = ADWIN(delta=delta)

        def update(x: float) -> bool:
            detector.update(x)
            return bool(detector.drift_detected)

        return update

    return make


def cost_us(make: Callable[[], Callable[[float], bool]], values: Sequence[float]) -> float:
    update = make()
    start = time.perf_counter()
    for x in values:
        update(x)
    return (time.perf_counter() - start) / len(values) * 1e6


# ---------------------------------------------------------------- report
HEADER = (
    "| {first} | detected | median delay | mean delay | worst delay | false alarms "
    "| per 10k scores | µs/update |"
)


def row(name: str, o: Outcome, cost: float) -> str:
    median = f"{statistics.median(o.delays):.0f}" if o.delays else "-"
    mean = f"{statistics.fmean(o.delays):.0f}" if o.delays else "-"
    worst = f"{max(o.delays)}" if o.delays else "-"
    rate = o.false_alarms / o.scores * 10_000
    return (
        f"| {name} | {o.detected}/{o.switches} | {median} | {mean} | {worst} | "
        f"{o.false_alarms} | {rate:.2f} | {cost:.2f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "drift.md"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    streams = {
        name: [make_stream(name, qs, seed) for seed in range(args.seeds)]
        for name, qs in SCENARIOS.items()
    }
    every = [s for group in streams.values() for s in group]
    sample = every[0].losses[:20_000]
    lines = [HEADER.format(first="detector"), "|---|---|---|---|---|---|---|---|"]
    for delta in (0.005, 0.025, 0.05, 0.1):
        for threshold in (10.0, 15.0, 25.0, 50.0):
            make = page_hinkley(delta, threshold)
            o = evaluate(every, make, "loss")
            lines.append(
                row(
                    f"Page-Hinkley on log loss, δ={delta}, λ={threshold:g}",
                    o,
                    cost_us(make, sample),
                )
            )
    for delta, threshold in ((0.005, 10.0), (0.025, 15.0), (0.05, 15.0), (0.05, 25.0)):
        make = page_hinkley(delta, threshold)
        o = evaluate(every, make, "error")
        lines.append(
            row(f"Page-Hinkley on 0/1 error, δ={delta}, λ={threshold:g}", o, cost_us(make, sample))
        )
    for delta in (0.002, 0.0002):
        make_adwin = adwin(delta)
        if make_adwin is not None:
            o = evaluate(every, make_adwin, "error")
            errors = every[0].errors[:20_000]
            lines.append(
                row(f"ADWIN (river) on 0/1 error, δ={delta}", o, cost_us(make_adwin, errors))
            )
    print("\n".join(lines))
    per_scenario = _per_scenario(streams)
    print(per_scenario)
    responses = _responses(args.seeds)
    print(responses)
    real = _real_data()
    print(real)
    per_horizon = _per_horizon(args.seeds, es_prices())
    print(per_horizon)
    text = TEMPLATE.format(
        seeds=args.seeds,
        table="\n".join(lines),
        per_scenario=per_scenario,
        responses=responses,
        real=real,
        per_horizon=per_horizon,
        seconds=time.perf_counter() - started,
    )
    Path(args.out).write_text(text)
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


def _per_scenario(streams: dict[str, list[Stream]]) -> str:

    make = page_hinkley(PH_DELTA, PH_THRESHOLD)
    lines = [HEADER.format(first="scenario"), "|---|---|---|---|---|---|---|---|"]
    for name, group in streams.items():
        lines.append(
            row(name, evaluate(group, make, "loss"), float("nan")).replace("| nan |", "| |")
        )
    return "\n".join(lines)


def _per_horizon(seeds: int, es_prices: Sequence[float]) -> str:
    """The learner's own monitors (threshold x sqrt(h)) at every default horizon."""
    horizons = LearnerConfig().horizons
    found: dict[int, list[int]] = {h: [] for h in horizons}  # delays of detected switches
    switches = dict.fromkeys(horizons, 0)
    false: dict[str, dict[int, int]] = {}
    scores: dict[str, dict[int, int]] = {}
    for name, qs in SCENARIOS.items():
        false[name], scores[name] = dict.fromkeys(horizons, 0), dict.fromkeys(horizons, 0)
        for seed in range(seeds):
            learner = OnlineLearner("S", LearnerConfig())
            events: dict[int, list[tuple[int, bool]]] = {h: [] for h in horizons}
            for i, price in enumerate(regime_prices(qs, seed)):
                for sc in learner.on_tick(i, price).scores:
                    events[sc.horizon].append((i, sc.alarm))
            for h in horizons:
                ticks = [t for t, _ in events[h]]
                alarms = [j for j, (_, a) in enumerate(events[h]) if a]
                starts = [
                    next(j for j, t in enumerate(ticks) if t >= k * SEGMENT)
                    for k in range(1, len(qs))
                    if _raises_loss(qs[k - 1], qs[k])
                ]
                for sw in starts:
                    switches[h] += 1
                    hit = next((a for a in alarms if sw <= a < sw + WINDOW_AFTER), None)
                    if hit is not None:
                        found[h].append(hit - sw)
                false[name][h] += sum(
                    1 for a in alarms if not any(sw <= a < sw + WINDOW_AFTER for sw in starts)
                )
                scores[name][h] += len(ticks)
    es = OnlineLearner("ES", LearnerConfig())
    es_losses: dict[int, list[float]] = {h: [] for h in horizons}
    for i, price in enumerate(es_prices):
        for sc in es.on_tick(i, price).scores:
            es_losses[sc.horizon].append(log_loss(sc.p_raw, sc.label))
    es_scores = {h: len(es_losses[h]) for h in horizons}
    es_alarms = {h: es.drift_states()[str(h)]["alarms"] for h in horizons}
    unscaled = {}
    for h in horizons:
        detector = PageHinkley(PH_DELTA, PH_THRESHOLD)
        unscaled[h] = sum(detector.update(x) for x in es_losses[h])
    lines = [
        "| horizon | threshold | switches detected | median delay | false alarms per 10k "
        "scores (flip, fade, steady 0.8, steady 0.5) | E-mini alarms per 10k scores "
        f"| E-mini alarms with λ = {PH_THRESHOLD:g} at every horizon |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in horizons:
        rates = ", ".join(
            f"{false[name][h] / max(scores[name][h], 1) * 10_000:.2f}" for name in SCENARIOS
        )
        median = f"{statistics.median(found[h]):.0f}" if found[h] else "-"
        lines.append(
            f"| {h} | {PageHinkley(threshold=PH_THRESHOLD * h**0.5).threshold:.1f} | "
            f"{len(found[h])}/{switches[h]} | {median} | {rates} | "
            f"{es_alarms[h] / max(es_scores[h], 1) * 10_000:.2f} ({es_alarms[h]}) | "
            f"{unscaled[h] / max(es_scores[h], 1) * 10_000:.2f} ({unscaled[h]}) |"
        )
    return "\n".join(lines)


def _raises_loss(before: float, after: float) -> bool:
    return (
        _expected_accuracy(after) < _expected_accuracy(before) or (after - 0.5) * (before - 0.5) < 0
    )


def es_prices() -> list[float]:
    import csv
    import gzip

    with gzip.open(ROOT / "data" / "es_ticks_2013-09-01_03.csv.gz", "rt", newline="") as f:
        return [float(row["price"]) for row in csv.DictReader(f)]


def _real_data() -> str:
    """The default detector on the shipped E-mini trades (where the market changed is
    unknown), then every response with the default learner (all its horizons)."""
    prices = es_prices()
    losses, hits, _ = run_learner(prices)
    detector = PageHinkley(PH_DELTA, PH_THRESHOLD)
    alarms = sum(detector.update(x) for x in losses)
    text = (
        f"On the shipped E-mini trades (data/es_ticks_2013-09-01_03.csv.gz, {len(prices):,} "
        f"ticks, {len(losses):,} scored predictions at horizon 1, accuracy "
        f"{statistics.fmean(hits):.3f}) the default detector raises {alarms} alarms: "
        f"{alarms / len(losses) * 10_000:.2f} per 10,000 scores. Nobody knows where this "
        "market changed, so this is an order of magnitude for the alarm rate on real ticks, "
        "not a false-alarm rate.\n\nThe default learner (every horizon of "
        "TICKPROP_HORIZONS) over the same file, by response; accuracy and kappa-temporal "
        "from the learner's own scorecards, alarms from its drift monitors:\n\n"
    )
    horizons = LearnerConfig().horizons
    head = " | ".join(f"h={h}: accuracy / κ-temporal / alarms" for h in horizons)
    rows = [f"| response | {head} |", "|---|" + "---|" * len(horizons)]
    for response in RESPONSES:
        learner = OnlineLearner("ES", LearnerConfig(drift_response=response))
        for i, price in enumerate(prices):
            learner.on_tick(i, price)
        cards, drift = learner.scorecards(), learner.drift_states()
        cells = [
            f"{cards[str(h)]['accuracy']:.4f} / {cards[str(h)]['kappa_temporal']:.3f} / "
            f"{drift[str(h)]['alarms']}"
            for h in horizons
        ]
        rows.append(f"| {response} | " + " | ".join(cells) + " |")
    return text + "\n".join(rows)


def _responses(seeds: int) -> str:
    lines = [
        "| response | flip: accuracy 2,000 scores after a switch | flip: whole stream | "
        "fade: whole stream | steady q=0.8 | steady q=0.5 |",
        "|---|---|---|---|---|---|",
    ]
    for response in RESPONSES:
        cells = []
        for name in ("flip", "fade", "steady q=0.8", "steady q=0.5"):
            after, whole = [], []
            for seed in range(seeds):
                s = make_stream(name, SCENARIOS[name], seed, response)
                whole.append(statistics.fmean(s.hits))
                after += [statistics.fmean(s.hits[sw : sw + WINDOW_AFTER]) for sw in s.switches]
            if name == "flip":
                cells.append(f"{statistics.fmean(after):.4f}")
            cells.append(f"{statistics.fmean(whole):.4f}")
        lines.append(f"| {response} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TEMPLATE = """# Drift detection: which detector, which settings, which response

Produced by `benchmarks/eval_drift.py` ({seeds} seeds per scenario, {seconds:.0f} s on a
shared 2-core machine); do not edit the tables by hand, re-run the script. Everything in
it is seeded and the learner is deterministic, so a re-run gives the same figures until
the learner changes.

## What was chosen, and why

- **Page-Hinkley on the network's per-prediction log loss, δ = 0.05, λ = 15**
  (`model/drift.py`), at horizon h with λ·√h. In the first table it detects as many of
  the switches as ADWIN (river's, on the 0/1 error) within 2,000 scores, with a lower
  median delay and a false-alarm rate of the same order; smaller thresholds or δ buy
  speed with many more false alarms; larger ones are several times slower or miss
  switches. λ = 25 would have no false alarm here at three times the delay: with the
  default response an alarm costs nothing, so the faster setting wins. On the log loss it sees
  a network growing confident and wrong before its calls flip, which the 0/1 error
  shows only later (compare the 0/1 rows' mean and worst delays). Its state is four
  floats, serialised in the learner's state like everything else, where ADWIN's is a
  list of buckets of varying length; each update costs a fraction of a microsecond
  (the µs/update column, measured here).
- **λ·√h at horizon h**: the labels of horizon h overlap in h − 1 of their h ticks, so
  consecutive losses come in correlated runs and their partial sums spread wider. With
  one λ for all horizons the detector fires far more often on the E-mini ticks at
  horizons 5 and 20 than at horizon 1 (last column of the per-horizon table); scaled,
  the rates are of the same order. At horizons 5 and 20 the synthetic switches raise
  the loss by less than δ (the features track the move-sign regime themselves, and the
  longer horizons' networks are never confident on these streams), so their monitors
  stay quiet there: this detector does not see a switch that barely moves the loss.
- **Response `none` by default**: on the synthetic flips `reset` (and less so `boost`)
  recovers faster after a switch and costs nothing on the steady streams (last table),
  but on the E-mini ticks neither helps: their accuracies stay within a few tenths of a
  point of `none`'s, mostly below (the E-mini table). The responses stay available
  (`TICKPROP_DRIFT_RESPONSE=reset` or `boost`) for markets known to switch regimes.

## The test streams

Prices on a 0.25 grid; each move repeats the previous move's sign with probability q
(q = 0.8: trending, q = 0.2: mean-reverting, q = 0.5: a random walk). Segments of
5,000 ticks. A learner with the default settings but one horizon (1) runs over each
stream from a fresh start; the detectors watch the per-prediction log loss of its
network (or its 0/1 error).

- flip: q = 0.8, 0.2, 0.8, 0.2, 0.8, 0.2 (five switches, each makes the model wrong);
- fade: q = 0.8, 0.5, 0.8, ... (three switches raise the loss: 0.8 -> 0.5);
- steady q=0.8 and steady q=0.5: no switch (every alarm is false).

A switch counts as detected when an alarm comes within 2,000 scores after it; the
delay is the number of scored predictions from the switch to that alarm. Every other
alarm is a false alarm; the rate is per 10,000 scored predictions over all streams.
µs/update is the detector's own cost per value, measured in the same process. The
ADWIN rows need `river` installed (`pip install river`; not a dependency of tickprop).

## Detectors compared (horizon 1, all scenarios together)

{table}

## The default (Page-Hinkley on the log loss, δ = 0.05, λ = 15) per scenario, horizon 1

{per_scenario}

## At every horizon (the default learner's own monitors, λ·√h)

The same scenarios, now with every horizon of the default `TICKPROP_HORIZONS`, and the
shipped E-mini trades (where the market changed is unknown: alarms there are an order
of magnitude, not a false-alarm rate).

{per_horizon}

## On real ticks, and the responses there

{real}

## Responses (`TICKPROP_DRIFT_RESPONSE`) on the synthetic streams, horizon 1: accuracy

{responses}
"""


if __name__ == "__main__":
    raise SystemExit(main())
