"""Run the online learner offline over a CSV of ticks and report how well it predicted.

Each symbol's ticks go, in file order, through exactly the `OnlineLearner` code
path the worker uses, with the same defaults (LearnerConfig, overridden by the
TICKPROP_WINDOW/HORIZON/HIDDEN/LEARNING_RATE/SEED environment variables, then by
the flags). Rows the worker would dead-letter are skipped and counted here:
invalid rows (by the same validation rules as Kafka records) and late ticks
(older than the symbol's last one). Hence the report's `weights_sha256` of each
symbol equals what `tickprop inspect` shows after the worker consumed the same
valid ticks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from model.learner import LearnerConfig, OnlineLearner
from service.ticks_csv import BadRows, CsvFormatError, CsvRow, read_ticks

MODELS = ("ffbpn", "base_rate", "persistence", "reversal")
BASELINES = ("base_rate", "persistence", "reversal")
PROBABILISTIC = ("ffbpn", "base_rate")
P_CLIP = 1e-15  # log loss of a probability p uses max(p, 1e-15): no infinite losses

# flag -> (LearnerConfig field, TICKPROP_ variable, parser)
LEARNING_FLAGS: dict[str, tuple[str, str, Any]] = {
    "--window": ("window", "TICKPROP_WINDOW", int),
    "--horizon": ("horizon", "TICKPROP_HORIZON", int),
    "--hidden": ("hidden", "TICKPROP_HIDDEN", None),
    "--learning-rate": ("learning_rate", "TICKPROP_LEARNING_RATE", float),
    "--seed": ("seed", "TICKPROP_SEED", int),
}


def parse_hidden(text: str) -> tuple[int, ...]:
    """ "32" or "32,16" -> (32,) or (32, 16)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f'expected comma-separated positive integers like "32,16", got {text!r}')
    return tuple(int(p) for p in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, help="ticks as ts,symbol,price[,volume] (.gz ok)")
    parser.add_argument("--json", metavar="OUT", help="write the JSON report here")
    parser.add_argument("--plot", metavar="OUT.png", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--plot-symbol", help="symbol to draw (default: the one with the most scored predictions)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    defaults = LearnerConfig()
    for flag, (name, env, _) in LEARNING_FLAGS.items():
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            help=f"default ${env}, else {shown} (as the worker)",
        )
    parser.add_argument(
        "--dead-band",
        type=float,
        default=None,
        help=f"relative move a label must exceed (default {defaults.dead_band})",
    )


def learner_config(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> LearnerConfig:
    """LearnerConfig defaults < TICKPROP_* variables < flags; ValueError names the bad one."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for flag, (name, env, parse) in LEARNING_FLAGS.items():
        raw, source = getattr(args, name, None), flag
        if raw is None and environ.get(env, "").strip():
            raw, source = environ[env], env
        if raw is None:
            continue
        try:
            values[name] = parse_hidden(raw) if name == "hidden" else parse(raw)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    if getattr(args, "dead_band", None) is not None:
        values["dead_band"] = args.dead_band
    return LearnerConfig(**values)


# ----------------------------------------------------------------- the run
@dataclass
class Tally:
    """Hits and summed log loss of every model over scored predictions."""

    scored: int = 0
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODELS, 0))
    loss: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROBABILISTIC, 0.0))

    def accuracy(self, model: str) -> float | None:
        return self.hits[model] / self.scored if self.scored else None

    def log_loss(self, model: str) -> float | None:
        return self.loss[model] / self.scored if self.scored else None


@dataclass
class Trace:
    """What the plot draws for one symbol: prices, and every scored prediction."""

    prices: list[float] = field(default_factory=list)
    tick: list[int] = field(default_factory=list)  # index into prices of the predicted tick
    label: list[int] = field(default_factory=list)
    p_up: list[float] = field(default_factory=list)
    p_base: list[float] = field(default_factory=list)
    persist: list[int] = field(default_factory=list)


@dataclass
class Backtest:
    """Learners and tallies of one run; feed ticks with `add`, read `report()`."""

    config: LearnerConfig
    keep_traces: bool = False
    learners: dict[str, OnlineLearner] = field(default_factory=dict)
    total: Tally = field(default_factory=Tally)
    per_symbol: dict[str, Tally] = field(default_factory=dict)
    ticks_per_symbol: dict[str, int] = field(default_factory=dict)
    traces: dict[str, Trace] = field(default_factory=dict)
    rows: int = 0
    ticks: int = 0
    bad: BadRows = field(default_factory=BadRows)  # invalid rows, by reason
    late: int = 0
    seconds: float = 0.0

    def add(self, symbol: str, ts_ms: int, price: float) -> None:
        """One valid tick: skipped if late, else through the symbol's learner and scored."""
        self.rows += 1
        learner = self.learners.get(symbol)
        if learner is None:
            learner = self.learners[symbol] = OnlineLearner(symbol, self.config)
            self.per_symbol[symbol] = Tally()
            self.ticks_per_symbol[symbol] = 0
            if self.keep_traces:
                self.traces[symbol] = Trace()
        if learner.is_late(ts_ms):
            self.late += 1
            return
        result = learner.on_tick(ts_ms, price)
        self.ticks += 1
        self.ticks_per_symbol[symbol] += 1
        trace = self.traces.get(symbol) if self.keep_traces else None
        if trace is not None:
            trace.prices.append(price)
        if not result.scores:
            return
        tallies = (self.total, self.per_symbol[symbol])
        for score in result.scores:
            label = score.label
            for tally in tallies:
                tally.scored += 1
                hits = tally.hits
                for model, direction in score.direction.items():
                    if direction == label:
                        hits[model] += 1
                for model, p in score.p_up.items():
                    tally.loss[model] -= math.log(max(p if label else 1.0 - p, P_CLIP))
            if trace is not None:  # the prediction answered ticks `horizon` ago
                trace.tick.append(len(trace.prices) - 1 - self.config.horizon)
                trace.label.append(label)
                trace.p_up.append(score.p_up["ffbpn"])
                trace.p_base.append(score.p_up["base_rate"])
                trace.persist.append(score.direction["persistence"])

    def report(self) -> dict[str, Any]:
        """The DESIGN.md report (plus `rows`, `skipped` and per-symbol extras)."""
        t = self.total
        per_symbol = {}
        for symbol, learner in self.learners.items():
            s = self.per_symbol[symbol]
            per_symbol[symbol] = {
                "ticks": self.ticks_per_symbol[symbol],
                "scored": s.scored,
                "accuracy": _round(s.accuracy("ffbpn")),
                "log_loss": _round(s.log_loss("ffbpn")),
                "model_version": learner.model_version,
                "refused_updates": learner.refused,
                "weights_sha256": learner.weights_sha256(),
            }
        return {
            "ticks": self.ticks,
            "symbols": len(self.learners),
            "scored": t.scored,
            "model": {
                "accuracy": _round(t.accuracy("ffbpn")),
                "log_loss": _round(t.log_loss("ffbpn")),
            },
            "baselines": {
                m: {
                    "accuracy": _round(t.accuracy(m)),
                    "log_loss": _round(t.log_loss(m)) if m in PROBABILISTIC else None,
                }
                for m in BASELINES
            },
            "per_symbol": per_symbol,
            "rows": self.rows,
            "skipped": {
                "invalid": self.bad.count,
                "late": self.late,
                "reasons": dict(sorted(self.bad.by_reason.items())),
                "examples": [
                    {"line": r.line, "reason": r.reason, "detail": r.detail}
                    for r in self.bad.examples
                ],
            },
            "ticks_per_second": round(self.ticks / self.seconds, 1) if self.seconds > 0 else None,
            "seconds": round(self.seconds, 3),
            "settings": self.config.as_dict(),
        }


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(v, digits)


# ------------------------------------------------------------- reading CSV
def run_rows(bt: Backtest, rows: Iterable[CsvRow], progress: Progress | None = None) -> Backtest:
    """Feed CSV rows (`service.ticks_csv.read_ticks`) to the backtest, timing the whole loop
    (reading and validation included)."""
    start = time.perf_counter()
    add, bad = bt.add, bt.bad
    for n, row in enumerate(rows, 1):
        tick = row.tick
        if tick is not None:
            add(tick.symbol, tick.ts_ms, tick.price)
        else:
            bt.rows += 1
            bad.add(row)
        if progress is not None and not n & 0x3FFF:
            progress.update(bt)
    bt.seconds += time.perf_counter() - start
    if progress is not None:
        progress.done(bt)
    return bt


class Progress:
    """A one-line progress display on a stream (stderr), at most a few updates a second."""

    def __init__(self, stream: IO[str], total_bytes: int | None = None) -> None:
        self.stream = stream
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, bt: Backtest, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < 0.25:
            return
        self.last = now
        rate = bt.ticks / max(now - self.start, 1e-9)
        acc = bt.total.accuracy("ffbpn")
        acc_text = f"accuracy {acc:.3f}" if acc is not None else "accuracy -"
        self.stream.write(
            f"\r{bt.rows:>12,} rows  {bt.ticks:>12,} ticks  {rate:>9,.0f} ticks/s  "
            f"{bt.total.scored:>10,} scored  {acc_text}"
        )
        self.stream.flush()

    def done(self, bt: Backtest) -> None:
        self.update(bt, final=True)
        self.stream.write("\n")
        self.stream.flush()


# -------------------------------------------------------------- summary
def summary(report: dict[str, Any], source: str) -> str:
    """A few human lines: counts, then each model's accuracy and log loss side by side."""
    skipped = report["skipped"]
    lines = [
        f"tickprop backtest over {source}",
        f"  {report['ticks']:,} ticks, {report['symbols']} symbol(s), {report['scored']:,} scored "
        f"predictions; skipped {skipped['invalid']:,} invalid and {skipped['late']:,} late rows",
        f"  {report['ticks_per_second'] or 0:,.0f} ticks/s; settings "
        + ", ".join(f"{k}={v}" for k, v in report["settings"].items()),
        "",
        f"  {'model':<12} {'accuracy':>9} {'log loss':>9}",
    ]
    rows = [("ffbpn", report["model"])] + list(report["baselines"].items())
    for name, m in rows:
        acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.4f}"
        ll = "-" if m["log_loss"] is None else f"{m['log_loss']:.4f}"
        lines.append(f"  {name:<12} {acc:>9} {ll:>9}")
    if report["symbols"] > 1:
        lines += ["", f"  {'symbol':<12} {'scored':>8} {'accuracy':>9} {'steps':>8}"]
        for sym, s in report["per_symbol"].items():
            acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
            lines.append(f"  {sym:<12} {s['scored']:>8,} {acc:>9} {s['model_version']:>8,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = learner_config(args)
    except (TypeError, ValueError) as exc:
        print(f"tickprop backtest: {exc}", file=sys.stderr)
        return 2
    if not os.path.exists(args.csv):
        print(f"tickprop backtest: no such file: {args.csv}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bt = Backtest(config, keep_traces=bool(args.plot))
    try:
        run_rows(bt, read_ticks(args.csv), Progress(sys.stderr) if show else None)
    except (CsvFormatError, OSError, EOFError) as exc:  # EOFError: a truncated gzip
        print(f"tickprop backtest: {exc}", file=sys.stderr)
        return 2
    report = bt.report()
    print(summary(report, args.csv))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\n  report written to {args.json}")
    if args.plot:
        symbol = args.plot_symbol or _busiest(bt)
        if symbol is None or symbol not in bt.traces:
            print(f"tickprop backtest: nothing to plot for {symbol!r}", file=sys.stderr)
            return 1
        plot(bt.traces[symbol], symbol, report, args.plot)
        print(f"  plot written to {args.plot}")
    return 0


def _busiest(bt: Backtest) -> str | None:
    if not bt.per_symbol:
        return None
    return max(bt.per_symbol, key=lambda s: (bt.per_symbol[s].scored, bt.ticks_per_symbol[s]))


# ------------------------------------------------------------------ plot
PLOT_COLORS = {
    "ffbpn": "#1f5fbf",
    "base_rate": "#8c8c8c",
    "persistence": "#d98c1f",
    "reversal": "#2a9d5c",
}


def _rolling_mean(values: Any, size: int) -> Any:
    """Mean over the last `size` values at each point (fewer at the start)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    n = np.arange(1, len(v) + 1)
    lo = np.maximum(n - size, 0)
    return (c[n] - c[lo]) / (n - lo)


def plot(trace: Trace, symbol: str, report: dict[str, Any], path: str, zoom: int = 400) -> None:
    """A PNG: price with predicted directions (whole run + the last `zoom` scored
    predictions), rolling accuracy of the model and each baseline, rolling log loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    prices = np.asarray(trace.prices)
    tick = np.asarray(trace.tick, dtype=np.int64)
    label = np.asarray(trace.label)
    p_up = np.asarray(trace.p_up)
    persist = np.asarray(trace.persist)
    pred = (p_up >= 0.5).astype(int)
    hits = {
        "ffbpn": pred == label,
        "base_rate": (np.asarray(trace.p_base) >= 0.5).astype(int) == label,
        "persistence": persist == label,
        "reversal": (1 - persist) == label,
    }
    clip = P_CLIP
    loss = {
        "ffbpn": -np.log(np.maximum(np.where(label == 1, p_up, 1 - p_up), clip)),
        "base_rate": -np.log(
            np.maximum(np.where(label == 1, trace.p_base, 1 - np.asarray(trace.p_base)), clip)
        ),
    }
    size = max(20, min(500, len(label) // 20 or 20))

    best = max(BASELINES, key=lambda m: float(hits[m].mean()) if len(label) else 0.0)
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    fig = plt.figure(figsize=(12, 11), dpi=110, constrained_layout=True)
    grid = fig.add_gridspec(5, 1, height_ratios=[1.0, 1.3, 1.0, 0.55, 0.8])
    ax_all, ax_zoom, ax_acc, ax_lead, ax_ll = (fig.add_subplot(grid[i]) for i in range(5))
    acc = report["per_symbol"][symbol]["accuracy"]
    s = report["settings"]
    fig.suptitle(
        f"tickprop backtest — {symbol}: {len(prices):,} ticks, {len(label):,} scored, "
        f"model accuracy {'-' if acc is None else f'{acc:.3f}'}"
        f" (best baseline: {best} {float(hits[best].mean()) if len(label) else 0:.3f})\n"
        f"window {s['window']}, horizon {s['horizon']}, hidden {s['hidden']}, "
        f"learning rate {s['learning_rate']}, seed {s['seed']}",
        fontsize=11,
    )

    ax_all.plot(np.arange(len(prices)), prices, color="#333333", lw=0.6)
    ax_all.set_ylabel("price")
    ax_all.set_title("whole run (shaded: zoomed below)", loc="left", fontsize=9, color="#555555")
    if len(tick):
        start = max(0, len(tick) - zoom)
        lo, hi = int(tick[start]), len(prices)
        ax_all.axvspan(lo, hi - 1, color=PLOT_COLORS["ffbpn"], alpha=0.12, lw=0)
        ax_zoom.step(np.arange(lo, hi), prices[lo:hi], where="post", color="#777777", lw=0.8)
        sel = slice(start, len(tick))
        t, pr, ok, up = tick[sel], prices[tick[sel]], hits["ffbpn"][sel], pred[sel] == 1
        for mask, marker, face, name in (
            (up & ok, "^", "#2a9d5c", "up, right"),
            (~up & ok, "v", "#c0392b", "down, right"),
            (up & ~ok, "^", "none", "up, wrong"),
            (~up & ~ok, "v", "none", "down, wrong"),
        ):
            edge = "#2a9d5c" if marker == "^" else "#c0392b"
            ax_zoom.scatter(
                t[mask],
                pr[mask],
                marker=marker,
                s=24,
                facecolors=face,
                edgecolors=edge,
                linewidths=0.9,
                label=f"{name} ({int(mask.sum())})",
                zorder=3,
            )
        ax_zoom.legend(
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncol=4,
            fontsize=8,
            frameon=False,
            title="predicted direction of the next move:",
            title_fontsize=8,
            alignment="left",
        )
        ax_zoom.set_title(
            f"the last {len(t)} scored predictions", loc="right", fontsize=9, color="#555555"
        )
    ax_zoom.set_ylabel("price")
    ax_zoom.set_xlabel("tick")

    x = np.arange(1, len(label) + 1)
    skip = min(size, 50)  # a rolling mean over a handful of points is noise
    for name in MODELS:
        if len(label) > skip:
            ax_acc.plot(
                x[skip:],
                _rolling_mean(hits[name], size)[skip:],
                color=PLOT_COLORS[name],
                lw=1.8 if name == "ffbpn" else 1.0,
                label=name,
                zorder=3 if name == "ffbpn" else 2,
            )
    ax_acc.set_ylabel(f"accuracy (last {size})")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.axhline(0.5, color="#bbbbbb", lw=0.6, ls=":")
    if ax_acc.lines[1:]:
        ax_acc.legend(
            loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, fontsize=8, frameon=False
        )
    ax_acc.set_title("rolling prequential accuracy", loc="right", fontsize=9, color="#555555")

    if len(label) > skip:
        lead = (_rolling_mean(hits["ffbpn"], size) - _rolling_mean(hits[best], size))[skip:]
        xs = x[skip:]
        ax_lead.fill_between(xs, lead, 0, where=lead >= 0, color="#2a9d5c", alpha=0.5, lw=0)
        ax_lead.fill_between(xs, lead, 0, where=lead < 0, color="#c0392b", alpha=0.5, lw=0)
    ax_lead.axhline(0, color="#777777", lw=0.6)
    ax_lead.set_ylabel("accuracy lead")
    ax_lead.set_title(
        f"model minus best baseline ({best}), rolling", loc="right", fontsize=9, color="#555555"
    )

    for name in PROBABILISTIC:
        if len(label) > skip:
            ax_ll.plot(
                x[skip:],
                _rolling_mean(loss[name], size)[skip:],
                color=PLOT_COLORS[name],
                lw=1.8 if name == "ffbpn" else 1.0,
                label=name,
            )
    ax_ll.axhline(math.log(2), color="#bbbbbb", lw=0.6, ls=":")
    ax_ll.set_ylabel(f"log loss (last {size})")
    ax_ll.set_xlabel("scored prediction")
    if ax_ll.lines[1:]:
        ax_ll.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax_ll.set_title(
        "rolling log loss (dotted: ln 2, a coin flip)", loc="right", fontsize=9, color="#555555"
    )

    fig.savefig(path)
    plt.close(fig)
