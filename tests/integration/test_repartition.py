"""`tickprop repartition` against the real broker and a real Redis Cluster (3 masters + 3
replicas: source and target hashes sit in different slots): refusals, plan, an interrupted
move finished by a second run, and state equal to the backtest over every tick after it.

Tansu (the embedded broker) does not offer CreatePartitions, so the topic is created with
6 partitions and the first half of the stream is written as a 3-partition producer would
(murmur2 of the key modulo 3); after the move, the second half goes through kafka-python's
default partitioner over all 6. That is exactly the state of a topic grown from 3 to 6.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import backtest_symbols, check_predictions, inspect_symbols, on_broker
from kafka import KafkaProducer
from worker_kit import (
    ROOT,
    Names,
    WorkerProcess,
    mixed_ticks,
    produce,
    store_for,
    stored_offsets,
    tick_records,
    wait_until,
    worker_env,
)

from service.tools.embedded import EmbeddedRedisCluster, create_topics
from service.tools.repartition import partition_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with EmbeddedRedisCluster() as cluster:
        yield cluster.url


def repartition(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "repartition", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def produce_as_if_3_partitions(bootstrap: str, topic: str, records: list) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for key, value, _ in records:
            producer.send(topic, key=key, value=value, partition=partition_for(key.decode(), 3))
        producer.flush()
    finally:
        producer.close()


def drain(env: dict[str, str], redis_url: str, names: Names, tmp_path: Path, tag: str) -> None:
    """Run a worker until Redis holds every partition's end offset; stop it cleanly."""
    ends = on_broker(env["TICKPROP_KAFKA_BOOTSTRAP_SERVERS"], names.ticks).end_offsets()
    worker = WorkerProcess(env, tmp_path / f"worker-{tag}.log")
    try:
        wait_until(
            lambda: worker.owned() and stored_offsets(redis_url, names.group, True) == ends,
            timeout=90,
            what=f"the {tag} stream checkpointed",
        )
        assert worker.terminate() == 0, worker.tail()
    finally:
        if worker.process.poll() is None:
            worker.kill()


def test_repartition_3_to_6_moves_state_and_the_stream_goes_on_bit_identical(
    broker: str, cluster_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    redis_url = cluster_url
    env = worker_env(broker, redis_url, names, redis_cluster="true")
    ticks = tick_records(mixed_ticks(900, 1800))
    first, second = ticks[: len(ticks) // 2], ticks[len(ticks) // 2 :]
    create_topics(broker, [names.ticks], partitions=6)
    produce_as_if_3_partitions(broker, names.ticks, first)

    refused = repartition(env, "--partitions", "6")  # nothing read yet
    assert refused.returncode == 1
    for p in range(3):
        assert f"partition {p}: " in refused.stderr and "unread ticks" in refused.stderr

    worker = WorkerProcess(env, tmp_path / "member.log")
    try:
        wait_until(lambda: worker.owned(), timeout=60, what="the worker in the group")
        refused = repartition(env, "--partitions", "6")
        assert refused.returncode == 1 and "is a member of group" in refused.stderr
    finally:
        worker.kill()
    drain(env, redis_url, names, tmp_path, "first")

    store = store_for(redis_url, names.group, cluster=True)
    before = store.load_all()
    dry = repartition(env, "--partitions", "6")
    assert dry.returncode == 0, dry.stderr
    symbols = {symbol for state in before.values() for symbol in state.blobs}
    moving = {
        s: (partition_for(s, 3), partition_for(s, 6))
        for s in symbols
        if partition_for(s, 3) != partition_for(s, 6)
    }
    assert {"AAPL", "ES", "IBM"} <= set(moving)  # 0 -> 3, 1 -> 4, 2 -> 5: every partition
    for symbol, (source, target) in moving.items():
        assert f"{symbol}: partition {source} -> {target}" in dry.stdout
    assert f"{len(moving)} of {len(symbols)} symbols move" in dry.stdout
    assert store.load_all() == before  # a dry run changes nothing

    # An --apply interrupted after AAPL moved and after ES was copied but not deleted.
    assert store.move_symbol(names.ticks, "AAPL", 0, 3)
    es_blob = store.client.hget(store.key(names.ticks, 1), "ES")
    store._put(keys=[store.key(names.ticks, 4)], args=["ES", es_blob])
    applied = repartition(env, "--partitions", "6", "--apply")
    assert applied.returncode == 0, applied.stderr
    after = store.load_all()
    for symbol, (source, target) in moving.items():
        assert symbol not in after[(names.ticks, source)].blobs
        assert (
            after[(names.ticks, target)].blobs[symbol]
            == before[(names.ticks, source)].blobs[symbol]
        )
    assert f"0 of {len(symbols)} symbols move" in repartition(env, "--partitions", "6").stdout

    produce(broker, names.ticks, second)  # kafka-python's partitioner over 6 partitions
    drain(env, redis_url, names, tmp_path, "second")
    produced = on_broker(broker, names.ticks)
    # on_broker lists records by (partition, offset). From 3 to 6 partitions a symbol in
    # partition p moves to p or p + 3, so each symbol's first-half ticks come before its
    # second-half ones there too: the backtest sees every symbol's ticks in stream order.
    assert inspect_symbols(env) == backtest_symbols(produced, tmp_path, env)
    check_predictions(broker, names.predictions, names.ticks, produced)

    # Growing needs CreatePartitions, which Tansu does not offer: said so, nothing moved.
    final = store.load_all()
    grow = repartition(env, "--partitions", "7", "--apply")
    assert grow.returncode == 1 and "does not support CreatePartitions" in grow.stderr
    assert store.load_all() == final
