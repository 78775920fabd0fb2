"""Replay a tick CSV (ts,symbol,price[,volume]; gzip allowed; header row) or a synthetic
series into the ticks topic, keyed by symbol, in file order, at --rate ticks per second
or as fast as the broker takes them. Invalid rows are reported and skipped. Kafka
address, security and topic come from the TICKPROP_* settings unless given here.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from service.codec import Tick

SYNTHETIC_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SYNTHETIC_STEP_MS = 250


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", metavar="FILE", help="tick CSV to replay (may be .gz)")
    source.add_argument(
        "--synthetic", type=int, metavar="N", help="send N synthetic ticks instead of a CSV"
    )
    parser.add_argument(
        "--symbols", type=int, default=3, metavar="K", help="synthetic: symbols (default 3)"
    )
    parser.add_argument(
        "--seed", type=int, default=7, metavar="S", help="synthetic: seed (default 7)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, metavar="N",
        help="ticks per second (default 0: as fast as possible)",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, metavar="N", help="stop after N ticks")
    parser.add_argument("--topic", help="topic to write (default: TICKPROP_TICKS_TOPIC or 'ticks')")
    parser.add_argument(
        "--bootstrap", metavar="HOST:PORT[,...]",
        help="Kafka brokers (default: TICKPROP_KAFKA_BOOTSTRAP_SERVERS)",
    )  # fmt: skip
    parser.add_argument(
        "--no-create", action="store_true",
        help="do not create the topic when missing (default: create it with "
        "TICKPROP_TOPIC_PARTITIONS partitions)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from service.settings import load_settings
    from service.tools.ticks_csv import BadRows, CsvFormatError, valid_ticks

    overrides: dict[str, Any] = {}
    if args.bootstrap:
        overrides["kafka_bootstrap_servers"] = args.bootstrap
    if args.topic:
        overrides["ticks_topic"] = args.topic
    settings = load_settings(
        flags={"kafka_bootstrap_servers": "--bootstrap", "ticks_topic": "--topic"}, **overrides
    )
    if args.rate < 0 or not math.isfinite(args.rate):
        print("tickprop produce: --rate must be >= 0", file=sys.stderr)
        return 2

    bad = BadRows()
    ticks: Iterator[Tick]
    if args.csv:
        ticks = valid_ticks(args.csv, bad)
    else:
        if args.synthetic < 0 or args.symbols < 1:
            print("tickprop produce: --synthetic >= 0 and --symbols >= 1", file=sys.stderr)
            return 2
        ticks = synthetic_ticks(args.synthetic, args.symbols, args.seed)
    if args.limit is not None:
        ticks = _limited(ticks, args.limit)

    from kafka.errors import KafkaError

    try:
        if not args.no_create:
            from service.topics import create_topics

            create_topics(
                settings.bootstrap_servers(),
                [settings.ticks_topic],
                partitions=settings.topic_partitions,
                replication_factor=settings.replication_factor,
                **settings.kafka_client_kwargs(),
            )
        stats = replay(ticks, settings.ticks_topic, settings.kafka_client_kwargs(), args.rate)
    except (CsvFormatError, OSError) as exc:
        print(f"tickprop produce: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(
            f"tickprop produce: Kafka at {settings.kafka_bootstrap_servers} failed: {exc!r}",
            file=sys.stderr,
        )
        return 1
    if bad.count:
        print(bad.summary(), file=sys.stderr)
    print(stats.summary(settings.ticks_topic, bad.count))
    return 0 if stats.failed == 0 else 1


@dataclass
class ReplayStats:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    symbols: set[str] = field(default_factory=set)
    interrupted: bool = False
    first_error: str = ""

    def summary(self, topic: str, bad_rows: int) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"produced {self.sent} ticks of {len(self.symbols)} symbols to {topic!r} "
            f"in {self.seconds:.2f} s ({rate:,.0f} ticks/s); skipped {bad_rows} bad rows"
        )
        if self.failed:
            text += f"; {self.failed} sends FAILED (first: {self.first_error})"
        if self.interrupted:
            text += "; interrupted"
        return text


def replay(
    ticks: Iterator[Tick], topic: str, client_kwargs: dict[str, Any], rate: float = 0.0
) -> ReplayStats:
    """Send `ticks` in order to `topic`, keyed by symbol; pace at `rate` ticks/s if > 0.

    One request in flight per connection, so a retried batch can never overtake a
    later one: each symbol's ticks land in its partition in file order.
    """
    from kafka import KafkaProducer

    from service.codec import encode_tick

    producer = KafkaProducer(
        **client_kwargs,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=1,
    )
    stats = ReplayStats()

    def failed(exc: BaseException) -> None:
        stats.failed += 1
        stats.first_error = stats.first_error or repr(exc)

    stop = _StopFlag()
    interval = 1.0 / rate if rate > 0 else 0.0
    start = time.perf_counter()
    try:
        for tick in ticks:
            if stop.raised:
                stats.interrupted = True
                break
            if interval:
                _pace(start + stats.sent * interval)
            future = producer.send(topic, key=tick.symbol.encode(), value=encode_tick(tick))
            future.add_errback(failed)
            stats.sent += 1
            stats.symbols.add(tick.symbol)
        producer.flush()
    finally:
        stop.restore()
        producer.close()
    stats.seconds = time.perf_counter() - start
    stats.sent -= stats.failed
    return stats


def _pace(due: float) -> None:
    """Sleep until `due` (perf_counter time); a late sender catches up without sleeping."""
    delay = due - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag, so the loop stops, flushes what it sent and reports."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _limited(ticks: Iterator[Tick], limit: int) -> Iterator[Tick]:
    for n, tick in enumerate(ticks):
        if n >= limit:
            return
        yield tick


def synthetic_ticks(n: int, symbols: int = 3, seed: int = 7) -> Iterator[Tick]:
    """`n` ticks over `symbols` symbols (SYN0, SYN1, ...), round-robin, deterministic in `seed`.

    Each symbol's log price follows returns with momentum (AR(1), phi = 0.3), so the
    trend is partly predictable; prices are rounded to 4 decimals, timestamps advance
    by 250 ms per tick from 2024-01-01T00:00:00Z.
    """
    rng = random.Random(seed)
    names = [f"SYN{i}" for i in range(symbols)]
    price = [100.0 + 10.0 * i for i in range(symbols)]
    last_return = [0.0] * symbols
    for i in range(n):
        s = i % symbols
        r = 0.3 * last_return[s] + rng.gauss(0.0, 0.001)
        last_return[s] = r
        price[s] *= math.exp(r)
        quoted = max(round(price[s], 4), 0.0001)
        yield Tick(names[s], SYNTHETIC_START_MS + i * SYNTHETIC_STEP_MS, quoted, 1.0)
