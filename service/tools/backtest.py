"""Run the online learner offline over a CSV of ticks and report how well it predicted.

Each symbol's ticks go, in file order, through exactly the `OnlineLearner` code
path the worker uses, with the same defaults (LearnerConfig, overridden by the
TICKPROP_WINDOW/HORIZONS/HIDDEN/LEARNING_RATE/SEED environment variables, then by
the flags). Every horizon is scored on its own labels and reported on its own.
Rows the worker would dead-letter are skipped and counted here:
invalid rows (by the same validation rules as Kafka records) and late ticks
(older than the symbol's last one). Hence the report's `weights_sha256` of each
symbol equals what `tickprop inspect` shows after the worker consumed the same
valid ticks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from model.learner import LearnerConfig, OnlineLearner, Score
from service.scoring import BASELINES, P_CLIP, Tally
from service.settings import ConfigError, env_name, load_learning_settings
from service.tools.ticks_csv import BadRows, CsvFormatError, CsvRow, read_ticks

# flag -> the setting it overrides (TICKPROP_<SETTING>); parsed and bounded by
# LearningSettings, the same settings code as the worker's.
LEARNING_FLAGS: dict[str, str] = {
    "--window": "window",
    "--horizons": "horizons",
    "--hidden": "hidden",
    "--learning-rate": "learning_rate",
    "--seed": "seed",
    "--fading-factor": "fading_factor",
    "--drift-response": "drift_response",
}


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
    for flag, name in LEARNING_FLAGS.items():
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            help=f"default ${env_name(name)}, else {shown} (as the worker)",
        )
    parser.add_argument("--horizon", dest="old_horizon", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dead-band",
        type=float,
        default=None,
        help=f"relative move a label must exceed (default {defaults.dead_band})",
    )


def learner_config(args: argparse.Namespace) -> LearnerConfig:
    """LearnerConfig defaults < TICKPROP_* variables < flags, through the worker's settings
    code (`LearningSettings`); ConfigError names the bad variable or flag."""
    old = getattr(args, "old_horizon", None)
    if old is not None:
        raise ConfigError(
            f"--horizon {old} is no longer read: use --horizons, a comma list of tick counts "
            f'(e.g. --horizons {old} for that one horizon, or "1,5,20", the default)'
        )
    overrides = {
        name: getattr(args, name)
        for name in LEARNING_FLAGS.values()
        if getattr(args, name, None) is not None
    }
    flags = {name: flag for flag, name in LEARNING_FLAGS.items() if name in overrides}
    config = load_learning_settings(flags, **overrides).learner_config()
    if getattr(args, "dead_band", None) is not None:
        config = dataclasses.replace(config, dead_band=args.dead_band)
    return config


# ----------------------------------------------------------------- the run
@dataclass
class Trace:
    """What the plot draws for one symbol: prices, and every scored prediction per horizon."""

    prices: list[float] = field(default_factory=list)
    tick: dict[int, list[int]] = field(default_factory=dict)  # index into prices of the tick
    label: dict[int, list[int]] = field(default_factory=dict)
    p_up: dict[int, list[float]] = field(default_factory=dict)
    p_base: dict[int, list[float]] = field(default_factory=dict)
    persist: dict[int, list[int]] = field(default_factory=dict)

    def add(self, score: Score) -> None:
        h = score.horizon
        if h not in self.tick:
            for series in (self.tick, self.label, self.p_up, self.p_base, self.persist):
                series[h] = []
        self.tick[h].append(len(self.prices) - 1 - h)  # the prediction answered h ticks ago
        self.label[h].append(score.label)
        self.p_up[h].append(score.p_net)
        self.p_base[h].append(score.p_base)
        self.persist[h].append(score.persist)


def _tallies(horizons: tuple[int, ...]) -> dict[int, Tally]:
    return {h: Tally() for h in horizons}


@dataclass
class Backtest:
    """Learners and tallies of one run; feed ticks with `add`, read `report()`."""

    config: LearnerConfig
    keep_traces: bool = False
    learners: dict[str, OnlineLearner] = field(default_factory=dict)
    total: dict[int, Tally] = field(default_factory=dict)  # per horizon
    per_symbol: dict[str, dict[int, Tally]] = field(default_factory=dict)  # per symbol, horizon
    ticks_per_symbol: dict[str, int] = field(default_factory=dict)
    traces: dict[str, Trace] = field(default_factory=dict)
    rows: int = 0
    ticks: int = 0
    bad: BadRows = field(default_factory=BadRows)  # invalid rows, by reason
    late: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.total = self.total or _tallies(self.config.horizons)

    def add(self, symbol: str, ts_ms: int, price: float) -> None:
        """One valid tick: skipped if late, else through the symbol's learner and scored."""
        self.rows += 1
        learner = self.learners.get(symbol)
        if learner is None:
            learner = self.learners[symbol] = OnlineLearner(symbol, self.config)
            self.per_symbol[symbol] = _tallies(self.config.horizons)
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
        total, mine = self.total, self.per_symbol[symbol]
        for score in result.scores:
            total[score.horizon].add(score)
            mine[score.horizon].add(score)
            if trace is not None:
                trace.add(score)

    def report(self) -> dict[str, Any]:
        """The report of docs/commands.md (plus `rows`, `skipped` and per-symbol extras).

        The top-level `scored`, `model` and `baselines` are the first horizon's;
        `horizons` holds every horizon's, keyed by the horizon as a string.
        """
        horizons = self.config.horizons
        first = horizons[0]
        per_symbol = {}
        for symbol, learner in self.learners.items():
            tallies = self.per_symbol[symbol]
            s = tallies[first]
            per_symbol[symbol] = {
                "ticks": self.ticks_per_symbol[symbol],
                "scored": s.scored,
                "accuracy": _round(s.accuracy("ffbpn")),
                "log_loss": _round(s.log_loss("ffbpn")),
                "model_version": learner.model_version,
                "refused_updates": learner.refused,
                "weights_sha256": learner.weights_sha256(),
                "horizons": {
                    str(h): {
                        "scored": tallies[h].scored,
                        "accuracy": _round(tallies[h].accuracy("ffbpn")),
                        "log_loss": _round(tallies[h].log_loss("ffbpn")),
                        "model_version": learner.nets.steps[k],
                        # each series is judged against its own baselines
                        "baselines": _baselines(tallies[h]),
                    }
                    for k, h in enumerate(horizons)
                },
                # The learner's own state: what GET /symbols/{symbol} and inspect --symbol show.
                "scorecard": learner.scorecards(),
                "drift": learner.drift_states(),
            }
        by_horizon = {str(h): _section(self.total[h]) for h in horizons}
        return {
            "ticks": self.ticks,
            "symbols": len(self.learners),
            **by_horizon[str(first)],
            "horizons": by_horizon,
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


def _section(t: Tally) -> dict[str, Any]:
    """One horizon's `scored`, `model` and `baselines`."""
    return {
        "scored": t.scored,
        "model": {
            "accuracy": _round(t.accuracy("ffbpn")),
            "log_loss": _round(t.log_loss("ffbpn")),
        },
        "baselines": _baselines(t),
    }


def _baselines(t: Tally) -> dict[str, Any]:
    """Accuracy and log loss of each baseline (`log_loss` None for the rules)."""
    return {
        m: {"accuracy": _round(t.accuracy(m)), "log_loss": _round(t.log_loss(m))}
        for m in BASELINES
    }


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(v, digits)


# ------------------------------------------------------------- reading CSV
def run_rows(bt: Backtest, rows: Iterable[CsvRow], progress: Progress | None = None) -> Backtest:
    """Feed CSV rows (`service.tools.ticks_csv.read_ticks`) to the backtest, timing the whole loop
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
        accs = []
        for h, tally in bt.total.items():
            acc = tally.accuracy("ffbpn")
            accs.append(f"{h}: {acc:.3f}" if acc is not None else f"{h}: -")
        first = next(iter(bt.total.values()))
        self.stream.write(
            f"\r{bt.rows:>12,} rows  {bt.ticks:>12,} ticks  {rate:>9,.0f} ticks/s  "
            f"{first.scored:>10,} scored  accuracy by horizon {'  '.join(accs)}"
        )
        self.stream.flush()

    def done(self, bt: Backtest) -> None:
        self.update(bt, final=True)
        self.stream.write("\n")
        self.stream.flush()


# -------------------------------------------------------------- summary
def summary(report: dict[str, Any], source: str) -> str:
    """A few human lines: counts, then per horizon each model's accuracy and log loss."""
    skipped = report["skipped"]
    lines = [
        f"tickprop backtest over {source}",
        f"  {report['ticks']:,} ticks, {report['symbols']} symbol(s); skipped "
        f"{skipped['invalid']:,} invalid and {skipped['late']:,} late rows",
        f"  {report['ticks_per_second'] or 0:,.0f} ticks/s; settings "
        + ", ".join(f"{k}={v}" for k, v in report["settings"].items()),
    ]
    for h, section in report["horizons"].items():
        lines += [
            "",
            f"  horizon {h} tick(s): {section['scored']:,} scored predictions",
            f"  {'model':<12} {'accuracy':>9} {'log loss':>9}",
        ]
        for name, m in [("ffbpn", section["model"]), *section["baselines"].items()]:
            acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.4f}"
            ll = "-" if m["log_loss"] is None else f"{m['log_loss']:.4f}"
            lines.append(f"  {name:<12} {acc:>9} {ll:>9}")
        lines += _against_baselines(section)
    if report["symbols"] > 1:
        heads = "".join(f" {'acc h=' + h:>9}" for h in report["horizons"])
        lines += ["", f"  {'symbol':<12} {'ticks':>9}{heads}"]
        for sym, s in report["per_symbol"].items():
            accs = "".join(
                f" {'-' if v['accuracy'] is None else format(v['accuracy'], '.4f'):>9}"
                for v in s["horizons"].values()
            )
            lines.append(f"  {sym:<12} {s['ticks']:>9,}{accs}")
    return "\n".join(lines)


def _against_baselines(section: dict[str, Any]) -> list[str]:
    """The two figures a horizon is judged by: the published p_up's accuracy minus the best
    baseline's (points), and its log loss minus the base rate's (nats per prediction)."""
    model, baselines = section["model"], section["baselines"]
    if model["accuracy"] is None:
        return []
    best = max(baselines, key=lambda name: baselines[name]["accuracy"])
    lead = 100 * (model["accuracy"] - baselines[best]["accuracy"])
    excess = model["log_loss"] - baselines["base_rate"]["log_loss"]
    return [
        f"  ffbpn: {lead:+.2f} points of accuracy against the best baseline ({best}), "
        f"log loss {excess:+.4f} against the base rate's"
    ]


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
    if bt.bad.count:  # as `tickprop produce` does: which rows, and why
        print(bt.bad.summary(), file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\n  report written to {args.json}")
    if not bt.ticks:  # a report of nothing is not a result
        what = f"all {bt.bad.count:,} rows are invalid" if bt.bad.count else "it has no data rows"
        print(f"tickprop backtest: no valid tick in {args.csv}: {what}", file=sys.stderr)
        return 1
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
    first = bt.config.horizons[0]
    return max(
        bt.per_symbol, key=lambda s: (bt.per_symbol[s][first].scored, bt.ticks_per_symbol[s])
    )


# ------------------------------------------------------------------ plot
def _rolling_mean(values: Any, size: int) -> Any:
    """Mean over the last `size` values at each point (fewer at the start)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    n = np.arange(1, len(v) + 1)
    lo = np.maximum(n - size, 0)
    return (c[n] - c[lo]) / (n - lo)


HORIZON_COLORS = (
    "#1f5fbf",
    "#d98c1f",
    "#2a9d5c",
    "#c0392b",
    "#7d3c98",
    "#17a2b8",
    "#8c564b",
    "#555555",
)


def _horizon_series(trace: Trace, h: int) -> dict[str, Any]:
    """Per scored prediction of horizon h: hits of every model and log loss of the two
    probabilistic ones (numpy arrays)."""
    import numpy as np

    label = np.asarray(trace.label[h])
    p_up, p_base = np.asarray(trace.p_up[h]), np.asarray(trace.p_base[h])
    persist = np.asarray(trace.persist[h])
    hits = {
        "ffbpn": (p_up >= 0.5).astype(int) == label,
        "base_rate": (p_base >= 0.5).astype(int) == label,
        "persistence": persist == label,
        "reversal": (1 - persist) == label,
    }
    loss = {
        name: -np.log(np.maximum(np.where(label == 1, p, 1 - p), P_CLIP))
        for name, p in (("ffbpn", p_up), ("base_rate", p_base))
    }
    best = max(BASELINES, key=lambda m: float(hits[m].mean()) if len(label) else 0.0)
    return {"label": label, "hits": hits, "loss": loss, "best": best, "pred": p_up >= 0.5}


def plot(trace: Trace, symbol: str, report: dict[str, Any], path: str, zoom: int = 400) -> None:
    """A PNG: price with the first horizon's predicted directions (whole run + its last
    `zoom` scored predictions), then for every horizon the rolling accuracy of the model
    against its best baseline, and the rolling log loss of the model minus the base rate's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    horizons = [h for h in (int(k) for k in report["horizons"]) if trace.label.get(h)]
    series = {h: _horizon_series(trace, h) for h in horizons}
    prices = np.asarray(trace.prices)
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    fig = plt.figure(figsize=(12, 11), dpi=110, constrained_layout=True)
    grid = fig.add_gridspec(4, 1, height_ratios=[1.0, 1.3, 1.1, 1.0])
    ax_all, ax_zoom, ax_acc, ax_ll = (fig.add_subplot(grid[i]) for i in range(4))
    s = report["settings"]
    scores = ", ".join(
        f"h={h} {float(series[h]['hits']['ffbpn'].mean()):.3f} "
        f"({float(series[h]['hits'][series[h]['best']].mean()):.3f})"
        for h in horizons
    )
    fig.suptitle(
        f"tickprop backtest — {symbol}: {len(prices):,} ticks; model accuracy (best rule's) "
        f"by horizon: {scores}\n"
        f"window {s['window']}, horizons {s['horizons']}, hidden {s['hidden']}, "
        f"learning rate {s['learning_rate']} (h^-{s.get('lr_power', 0)}), seed {s['seed']}",
        fontsize=10,
    )
    ax_all.plot(np.arange(len(prices)), prices, color="#333333", lw=0.6)
    ax_all.set_ylabel("price")
    ax_all.set_title("whole run (shaded: zoomed below)", loc="left", fontsize=9, color="#555555")
    if horizons:
        _plot_zoom(ax_all, ax_zoom, prices, trace, horizons[0], series[horizons[0]], zoom)
    ax_zoom.set_ylabel("price")
    ax_zoom.set_xlabel("tick")
    for i, h in enumerate(horizons):
        color = HORIZON_COLORS[i % len(HORIZON_COLORS)]
        data = series[h]
        n = len(data["label"])
        size = max(20, min(500, n // 20 or 20))
        skip = min(size, 50)  # a rolling mean over a handful of points is noise
        if n <= skip:
            continue
        x = np.asarray(trace.tick[h])[skip:]  # the tick each prediction was made at
        best = data["best"]
        ax_acc.plot(
            x,
            _rolling_mean(data["hits"]["ffbpn"], size)[skip:],
            color=color,
            lw=1.6,
            label=f"h={h} model",
        )
        ax_acc.plot(
            x,
            _rolling_mean(data["hits"][best], size)[skip:],
            color=color,
            lw=0.9,
            ls="--",
            label=f"h={h} {best}",
        )
        excess = data["loss"]["ffbpn"] - data["loss"]["base_rate"]
        ax_ll.plot(x, _rolling_mean(excess, size)[skip:], color=color, lw=1.2, label=f"h={h}")
    ax_acc.set_ylabel("accuracy (rolling)")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.axhline(0.5, color="#bbbbbb", lw=0.6, ls=":")
    ax_acc.set_title(
        "rolling prequential accuracy: model (solid), its best rule (dashed)",
        loc="right",
        fontsize=9,
        color="#555555",
    )
    ax_ll.axhline(0, color="#777777", lw=0.6)
    ax_ll.set_ylabel("log loss − base rate's")
    ax_ll.set_xlabel("tick")
    ax_ll.set_title(
        "rolling log loss of the model minus the base rate's (below 0: better)",
        loc="right",
        fontsize=9,
        color="#555555",
    )
    for ax in (ax_acc, ax_ll):
        if ax.lines[1:]:
            ax.legend(
                loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False
            )
    fig.savefig(path)
    plt.close(fig)


def _plot_zoom(
    ax_all: Any, ax_zoom: Any, prices: Any, trace: Trace, h: int, data: dict[str, Any], zoom: int
) -> None:
    """The last `zoom` scored predictions of horizon h as up/down markers, right or wrong."""
    import numpy as np

    tick = np.asarray(trace.tick[h], dtype=np.int64)
    start = max(0, len(tick) - zoom)
    lo, hi = int(tick[start]), len(prices)
    ax_all.axvspan(lo, hi - 1, color=HORIZON_COLORS[0], alpha=0.12, lw=0)
    ax_zoom.step(np.arange(lo, hi), prices[lo:hi], where="post", color="#777777", lw=0.8)
    sel = slice(start, len(tick))
    t, pr = tick[sel], prices[tick[sel]]
    ok, up = data["hits"]["ffbpn"][sel], data["pred"][sel]
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
        alignment="left",
        title_fontsize=8,
        title=f"predicted direction {h} tick(s) ahead:",
    )
    ax_zoom.set_title(
        f"the last {len(t)} scored predictions of horizon {h}",
        loc="right",
        fontsize=9,
        color="#555555",
    )
