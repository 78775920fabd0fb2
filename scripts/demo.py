"""The demo behind scripts/demo: real ticks through Kafka, the worker, Redis, and a check.

1. start a local Kafka-compatible broker (Tansu) and redis-server from the PyPI wheels;
2. start `tickprop worker` and replay data/ through `tickprop produce` while it runs;
3. print the worker's live prequential accuracy against the baselines from /metrics;
4. when the topic is drained (the worker exits by itself), compare `tickprop inspect`
   with `tickprop backtest` over the same files: every symbol's weights hash must match;
5. stop everything it started. Exit 0 only if every hash matched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from model.learner import MODELS

ROOT = Path(__file__).resolve().parents[1]
DATA = [
    ROOT / "data" / "es_ticks_2013-09-01_03.csv.gz",
    ROOT / "data" / "stocks_daily_2000-2013.csv.gz",
]


def tickprop(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def scrape(url: str) -> dict[str, float]:
    """The tickprop_* samples of a /metrics page, keyed by name{labels}."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own URL)
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("tickprop_"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def accuracies(samples: dict[str, float]) -> dict[tuple[str, str], float]:
    """{(model, horizon): rolling accuracy} from the tickprop_prequential_accuracy samples."""
    out = {}
    for key, value in samples.items():
        if key.startswith("tickprop_prequential_accuracy{"):
            labels = dict(
                part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(",") if part
            )
            out[labels["model"].strip('"'), labels["horizon"].strip('"')] = value
    return out


def live_line(samples: dict[str, float]) -> str:
    """Processed, lag, and per horizon the network's rolling accuracy beside the best
    baseline's (named in brackets)."""
    processed = samples.get('tickprop_ticks_total{outcome="processed"}', 0)
    lag = sum(v for k, v in samples.items() if k.startswith("tickprop_consumer_lag{"))
    acc = accuracies(samples)
    parts = []
    for h in sorted({h for _, h in acc}, key=int):
        known = {m: acc.get((m, h), math.nan) for m in MODELS}
        best = max(MODELS[1:], key=lambda m: -1.0 if math.isnan(known[m]) else known[m])
        model, baseline = known["ffbpn"], known[best]
        parts.append(f"h={h}: {model:.3f} vs {baseline:.3f} ({best})")
    return f"processed {processed:>9,.0f}  lag {lag:>8,.0f}  rolling accuracy " + "   ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, help="replay only the first N ticks of each file")
    parser.add_argument("--rate", type=float, default=0.0, help="ticks/s per file (0: max)")
    args = parser.parse_args()

    from service.tools.embedded import EmbeddedBroker, EmbeddedRedis, free_port

    workdir = Path(tempfile.mkdtemp(prefix="tickprop-demo-"))
    print("starting a local Kafka-compatible broker and Redis from the PyPI wheels ...")
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        port = free_port()
        env = dict(
            os.environ,
            TICKPROP_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            TICKPROP_REDIS_URL=redis_server.url,
            TICKPROP_METRICS_HOST="127.0.0.1",
            TICKPROP_METRICS_PORT=str(port),
        )
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        print(f"  broker {broker.bootstrap}   redis {redis_server.url}")
        print(f"  worker metrics: {metrics_url}  (also /healthz, /readyz)")
        print(f"  worker log (JSON lines): {workdir / 'worker.log'}")
        return run_demo(args, env, metrics_url, workdir)


def run_demo(args: argparse.Namespace, env: dict[str, str], metrics_url: str, workdir: Path) -> int:
    limit = ["--limit", str(args.limit)] if args.limit else []
    rate = ["--rate", str(args.rate)] if args.rate else []
    with open(workdir / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            tickprop("worker", "--max-idle-seconds", "3"), env=env, stderr=log, cwd=ROOT
        )
        try:
            producers = [
                subprocess.Popen(
                    tickprop("produce", "--csv", str(f), *limit, *rate), env=env, cwd=ROOT
                )
                for f in DATA
            ]
            print(f"replaying {', '.join(f.name for f in DATA)} through Kafka ...")
            started = time.monotonic()
            while worker.poll() is None:
                time.sleep(2)
                samples = scrape(metrics_url)
                if samples:
                    print(
                        f"  [{time.monotonic() - started:5.0f} s] {live_line(samples)}", flush=True
                    )
            for producer in producers:
                producer.wait(timeout=60)
        finally:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=60)
    elapsed = time.monotonic() - started
    if worker.returncode != 0:
        print(f"worker exited with {worker.returncode}; see {workdir / 'worker.log'}")
        return 1
    print(f"worker drained the topic and stopped after {elapsed:.0f} s")
    return compare(args, env, workdir)


def compare(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> int:
    inspected = json.loads(subprocess.check_output(tickprop("inspect"), env=env, cwd=ROOT))
    symbols: dict[str, dict] = {}
    reports = []
    for f in DATA:
        out = workdir / f"backtest-{f.name}.json"
        csv = f
        if args.limit:  # the same first N rows the producer sent
            csv = workdir / f"head-{f.name}".replace(".gz", "")
            head(f, csv, args.limit)
        subprocess.run(
            tickprop("backtest", "--csv", str(csv), "--json", str(out)),
            env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        report = json.loads(out.read_text())
        reports.append(report)
        symbols.update(report["per_symbol"])
    print("\nbacktest over the same files (whole run, all scored predictions):")
    for f, report in zip(DATA, reports, strict=True):
        print(f"  {f.name}:")
        for h, section in report["horizons"].items():
            accuracy = {"ffbpn": section["model"]["accuracy"]}
            accuracy.update({m: v["accuracy"] for m, v in section["baselines"].items()})
            line = "  ".join(f"{m} {accuracy[m]:.3f}" for m in MODELS if m in accuracy)
            print(f"    horizon {h:>3}: scored {section['scored']:>8,}  accuracy {line}")
    print("\nstate in Redis (tickprop inspect) vs tickprop backtest:")
    print(f"  {'symbol':8} {'model_version':>13}  {'inspect sha256':16}  {'backtest sha256':16}")
    ok = set(inspected["symbols"]) == set(symbols)
    for symbol in sorted(set(inspected["symbols"]) | set(symbols)):
        mine = inspected["symbols"].get(symbol, {})
        theirs = symbols.get(symbol, {})
        same = mine.get("weights_sha256") == theirs.get("weights_sha256") and mine.get(
            "model_version"
        ) == theirs.get("model_version")
        ok = ok and same
        print(
            f"  {symbol:8} {mine.get('model_version', '-'):>13}  "
            f"{str(mine.get('weights_sha256', '-'))[:16]:16}  "
            f"{str(theirs.get('weights_sha256', '-'))[:16]:16}  "
            f"{'identical' if same else 'DIFFERENT'}"
        )
    print("\nevery symbol's state is bit-identical to the backtest" if ok else "\nMISMATCH")
    return 0 if ok else 1


def head(source: Path, target: Path, rows: int) -> None:
    import gzip

    with gzip.open(source, "rt") as f, open(target, "w") as out:
        for i, line in enumerate(f):
            if i > rows:  # the header plus `rows` rows
                break
            out.write(line)


if __name__ == "__main__":
    sys.exit(main())
