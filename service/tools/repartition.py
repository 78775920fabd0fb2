"""Grow the ticks topic to N partitions and move each symbol's state to its new partition.

A symbol's ticks go to the partition its key picks: murmur2 of the UTF-8 symbol, made
positive, modulo the partition count (the default partitioner of kafka-python and of the
Java client; librdkafka-based producers must set partitioner=murmur2_random). Growing the
topic changes that choice for most symbols, so their state must follow, or they would
start again from a fresh network while their old state lies in the old partition's hash.

Run it with the workers stopped and the producers stopped after the workers drained the
topic: it refuses while any member is in the consumer group or any partition has ticks
the state in Redis has not seen, and names them. Without --apply it only prints the plan.
With --apply it moves state still under the first releases' key layout, grows the topic
(Kafka's CreatePartitions), renews the fence of every partition involved (a stale worker
is fenced), then moves each symbol: copy into the target hash, delete from the source
only what was copied. An interrupted run, started again, finishes the job. The Redis and
Kafka settings come from the TICKPROP_* environment, as for the worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka.partitioner.default import murmur2

HIGHWATER_TIMEOUT_SECONDS = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions", type=_count, required=True, metavar="N", help="the new partition count"
    )
    parser.add_argument(
        "--apply", action="store_true", help="do it (default: print the plan, change nothing)"
    )
    parser.add_argument(
        "--group", help="consumer group whose state to move (default: TICKPROP_GROUP_ID)"
    )


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


@dataclass(frozen=True, order=True)
class Move:
    """One symbol's state going from one partition's hash to another's."""

    symbol: str
    source: int
    target: int


def partition_for(symbol: str, partitions: int) -> int:
    """The partition the default Kafka partitioner (Java, kafka-python) picks for `symbol`."""
    return (murmur2(symbol.encode("utf-8")) & 0x7FFFFFFF) % partitions


def plan(symbols_by_partition: Mapping[int, Iterable[str]], partitions: int) -> list[Move]:
    """Every symbol whose stored partition is not the one its key maps to among `partitions`."""
    return sorted(
        Move(symbol, source, partition_for(symbol, partitions))
        for source, symbols in symbols_by_partition.items()
        for symbol in symbols
        if partition_for(symbol, partitions) != source
    )


def run(args: argparse.Namespace) -> int:
    from service.settings import load_settings
    from service.store import Store, StoreError

    settings = load_settings()  # a bad setting: ConfigError, exit 2 (service.cli)
    try:
        store = Store(settings.redis_client(), args.group or settings.group_id)
    except StoreError as exc:
        return _fail(str(exc))
    try:
        return _repartition(settings, store, args.partitions, args.apply)
    except StoreError as exc:
        return _fail(str(exc))
    finally:
        store.client.close()


def _repartition(settings: Any, store: Any, wanted: int, apply: bool) -> int:
    topic = settings.ticks_topic
    admin = _Admin(**settings.kafka_client_kwargs())
    try:
        current = _partition_count(admin, topic)
        if current is None:
            return _fail(f"topic {topic!r} does not exist")
        if wanted < current:
            return _fail(f"{topic!r} has {current} partitions; Kafka cannot shrink a topic")
        states = {p: s for (t, p), s in store.load_all().items() if t == topic}
        moves = plan({p: s.blobs for p, s in states.items()}, wanted)
        _print_plan(topic, current, wanted, states, moves)
        blockers = _members(admin, store.group) + _unread(settings, topic, current, states)
        if blockers:
            print(f"refusing to repartition {topic!r}:", *blockers, sep="\n  ", file=sys.stderr)
            return 1
        if not apply:
            print("dry run: nothing changed; run again with --apply to do it")
            return 0
        for legacy_topic, partition in store.legacy_partitions():
            if legacy_topic == topic:
                store.move_legacy(topic, partition)
        if wanted > current:
            error = _grow(admin, topic, wanted)
            if error:
                return _fail(error)
    finally:
        admin.close()
    for partition in sorted({m.source for m in moves} | {m.target for m in moves}):
        store.claim(topic, partition)  # renews the fence: a stale worker can no longer write
    for move in moves:
        store.move_symbol(topic, move.symbol, move.source, move.target)
    print(f"done: {topic!r} has {wanted} partitions; {len(moves)} symbols moved")
    return 0


def _print_plan(
    topic: str, current: int, wanted: int, states: Mapping[int, Any], moves: list[Move]
) -> None:
    growth = f"grow from {current} to {wanted} partitions" if wanted > current else "no growth"
    symbols = sum(len(s.blobs) for s in states.values())
    print(f"plan for {topic!r}: {growth}; {len(moves)} of {symbols} symbols move")
    for move in moves:
        print(f"  {move.symbol}: partition {move.source} -> {move.target}")


def _fail(message: str, code: int = 1) -> int:
    print(f"tickprop repartition: {message}", file=sys.stderr)
    return code


def _admin_class() -> type:
    from kafka import KafkaAdminClient

    class Admin(KafkaAdminClient):
        # Tansu answers DescribeGroups with operation bits kafka-python does not know
        # (ValueError: 15 is not a valid ACLOperation); we do not use them.
        def _process_acl_operations(self, obj: dict[str, Any]) -> dict[str, Any]:
            obj.pop("authorized_operations", None)
            return obj

    return Admin


def _Admin(**kwargs: Any) -> Any:  # noqa: N802 (reads as the class it builds)
    return _admin_class()(**kwargs)


def _partition_count(admin: Any, topic: str) -> int | None:
    for entry in admin.describe_topics([topic]):
        if not entry.get("error_code") and entry.get("partitions"):
            return len(entry["partitions"])
    return None


def _members(admin: Any, group: str) -> list[str]:
    """One line per member of the consumer group (a running worker)."""
    described = admin.describe_groups([group]).get(group) or {}
    return [
        f"worker {m['member_id']} ({m.get('client_host') or 'host unknown'}) is a member of "
        f"group {group!r}: stop every worker first"
        for m in described.get("members") or []
    ]


def _unread(settings: Any, topic: str, count: int, states: Mapping[int, Any]) -> list[str]:
    """One line per partition holding ticks past the offset stored in Redis."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in range(count)]
    stored = {p: (states[p].offset if p in states else None) or 0 for p in range(count)}
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, stored[tp.partition])
        # The end offset from fetch responses: ListOffsets' is wrong on some brokers.
        deadline = time.monotonic() + HIGHWATER_TIMEOUT_SECONDS
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        lines = []
        for tp in tps:
            end = consumer.highwater(tp)
            if end is None:
                lines.append(f"partition {tp.partition}: its end offset could not be read")
            elif end > stored[tp.partition]:
                lines.append(
                    f"partition {tp.partition}: {end - stored[tp.partition]} unread ticks "
                    f"(stored offset {stored[tp.partition]}, end {end}): let the workers drain it"
                )
        return lines
    finally:
        consumer.close()


def _grow(admin: Any, topic: str, partitions: int) -> str | None:
    """CreatePartitions; an error message, or None once the metadata shows the new count."""
    from kafka.admin import NewPartitions
    from kafka.errors import IncompatibleBrokerVersion, KafkaError

    try:
        admin.create_partitions({topic: NewPartitions(total_count=partitions)})
    except IncompatibleBrokerVersion as exc:
        return (
            f"the broker does not support CreatePartitions ({exc}). Grow {topic!r} to "
            f"{partitions} partitions with the broker's own tooling (kafka-topics.sh --alter "
            f"--topic {topic} --partitions {partitions}), then run this again: state moves "
            "once the topic has them"
        )
    except KafkaError as exc:
        return f"growing {topic!r} to {partitions} partitions failed: {exc!r}"
    deadline = time.monotonic() + 30
    while (_partition_count(admin, topic) or 0) < partitions:
        if time.monotonic() > deadline:
            return f"{topic!r} did not show {partitions} partitions within 30 s"
        time.sleep(0.2)
    return None
