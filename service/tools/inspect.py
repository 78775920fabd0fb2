"""Print each symbol's model_version and weights hash from the state in Redis, as JSON.

Output: {"symbols": {SYM: {"model_version": N, "weights_sha256": HEX}}}, HEX being the
sha256 of the symbol's Network.to_bytes() — the same value `tickprop backtest` reports in
per_symbol, so the two can be compared directly. Redis and the learning settings come
from the TICKPROP_* environment, as for the worker.

A symbol should live in one partition (ticks are keyed by symbol). One found in several
(state from key-less ticks stored before they were refused, say) is listed under
"split_symbols" with every copy, {SYM: {"topic/partition": {...}}}, and named on stderr;
"symbols" then shows the copy of the highest partition.

With --symbol SYM it prints that symbol's query object instead — partition, model_version,
the last tick's ts and forecasts, every horizon's scorecard and drift state — the object
GET /symbols/SYM answers on the worker that holds it, read here from Redis with no worker
running (exit status 1 when the group's state has no such symbol).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group", help="consumer group whose state to read (default: TICKPROP_GROUP_ID)"
    )
    parser.add_argument(
        "--partitions",
        action="store_true",
        help="also print each input partition's next offset, fencing epoch and symbols",
    )
    parser.add_argument(
        "--symbol",
        metavar="SYM",
        help="print only this symbol's query object (as GET /symbols/SYM on its worker)",
    )


def run(args: argparse.Namespace) -> int:
    from service.settings import load_settings
    from service.store import Store, StoreUnavailable

    settings = load_settings()
    try:
        client = settings.redis_client()
    except StoreUnavailable as exc:
        print(f"tickprop inspect: {exc}", file=sys.stderr)
        return 1
    store = Store(client, args.group or settings.group_id)
    try:
        if args.symbol is not None:
            config, topic = settings.learner_config(), settings.ticks_topic
            report = symbol_object(store, config, topic, args.symbol)
            if report is None:
                print(
                    f"tickprop inspect: no symbol {args.symbol!r} in the state of group "
                    f"{store.group!r}, topic {topic!r}",
                    file=sys.stderr,
                )
                return 1
        else:
            report = summarise(store, settings.learner_config(), args.partitions)
    except StoreUnavailable as exc:
        print(f"tickprop inspect: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a blob that does not load under these settings
        print(f"tickprop inspect: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    for symbol, copies in report.get("split_symbols", {}).items():
        print(
            f"tickprop inspect: symbol {symbol!r} has state in {len(copies)} partitions "
            f"({', '.join(copies)}): one model per partition, each trained on part of its ticks",
            file=sys.stderr,
        )
    json.dump(report, sys.stdout, indent=2, sort_keys=args.symbol is None)
    sys.stdout.write("\n")
    return 0


def symbol_object(store: Any, config: Any, topic: str, symbol: str) -> dict[str, Any] | None:
    """The query object of `symbol` from the stored state of `topic` (None: not stored)."""
    from model.learner import OnlineLearner
    from service.query_api import query_object

    # A symbol split over partitions (see above) answers with its highest partition's copy.
    for (stored_topic, partition), state in sorted(store.load_all().items(), reverse=True):
        blob = state.blobs.get(symbol) if stored_topic == topic else None
        if blob is None:
            continue
        try:
            learner = OnlineLearner.from_bytes(blob, config)
        except ValueError as exc:
            raise ValueError(f"{topic}[{partition}] symbol {symbol!r}: {exc}") from exc
        return query_object(learner, partition)
    return None


def summarise(store: Any, config: Any, partitions: bool = False) -> dict[str, Any]:
    """The inspect report of every symbol stored for `store`'s group."""
    from model.learner import OnlineLearner

    symbols: dict[str, dict[str, Any]] = {}
    copies: dict[str, dict[str, dict[str, Any]]] = {}
    by_partition: dict[str, dict[str, Any]] = {}
    for (topic, partition), state in sorted(store.load_all().items()):
        for symbol, blob in state.blobs.items():
            try:
                learner = OnlineLearner.from_bytes(blob, config)
            except ValueError as exc:
                raise ValueError(f"{topic}[{partition}] symbol {symbol!r}: {exc}") from exc
            symbols[symbol] = {
                "model_version": learner.model_version,
                "weights_sha256": learner.weights_sha256(),
            }
            copies.setdefault(symbol, {})[f"{topic}/{partition}"] = symbols[symbol]
        by_partition[f"{topic}/{partition}"] = {
            "offset": state.offset,
            "epoch": state.epoch,
            "symbols": sorted(state.blobs),
        }
    report: dict[str, Any] = {"symbols": symbols}
    split = {symbol: where for symbol, where in copies.items() if len(where) > 1}
    if split:
        report["split_symbols"] = split
    if partitions:
        report["partitions"] = by_partition
    return report
