"""A worker in-process against real servers: fencing and a Redis outage."""

from __future__ import annotations

import time

import pytest
from worker_kit import (
    Names,
    Produced,
    in_process_worker,
    mixed_ticks,
    produce,
    reference_symbols,
    step_until,
    step_until_checkpointed,
    store_for,
    stored_symbols,
    tick_records,
)

from service.ownership import Status
from service.tools.embedded import EmbeddedRedis


def metric(worker, name: str, **labels: str) -> float:
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


def test_fenced_worker_cannot_overwrite_the_new_owner_and_keeps_running(
    broker: str, redis_url: str
) -> None:
    names = Names.fresh()
    ticks = mixed_ticks(n_stocks=600, n_es=0)
    produced = produce(broker, names.ticks, tick_records(ticks[:400]), partitions=1)
    worker = in_process_worker(
        broker, redis_url, names, checkpoint_every_ticks=50, checkpoint_every_seconds=3600
    )
    try:
        step_until_checkpointed(
            worker, redis_url, names.group, produced, 30, "the first 400 ticks checkpointed"
        )
        store = store_for(redis_url, names.group)
        new_owner = store.claim(names.ticks, 0)  # another worker took the partition over
        produce(broker, names.ticks, tick_records(ticks[400:]), partitions=1, into=produced)
        part = next(iter(worker.partitions.values()))
        step_until(worker, lambda: part.status is Status.FENCED, 30, "the stale write refused")

        after = store.load_all()[(names.ticks, 0)]
        assert (after.offset, after.blobs) == (new_owner.offset, new_owner.blobs)
        assert after.epoch == new_owner.epoch
        assert metric(worker, "tickprop_fenced_checkpoints_total") == 1
        assert not part.learners and not worker.ready
        for _ in range(20):  # still polling, not crashing, not writing
            worker.step()
        assert store.load_all()[(names.ticks, 0)].offset == new_owner.offset
    finally:
        worker.shutdown()
        worker.publisher.close()


@pytest.mark.slow
def test_redis_outage_pauses_progress_and_the_worker_resumes_by_itself(
    broker: str, tmp_path
) -> None:
    names = Names.fresh()
    ticks = mixed_ticks(n_stocks=1200, n_es=1200)
    with EmbeddedRedis(persist=True) as redis_server:
        url = redis_server.url
        produced = produce(broker, names.ticks, tick_records(ticks[:1200]), into=Produced())
        worker = in_process_worker(
            broker, url, names, checkpoint_every_ticks=100, checkpoint_every_seconds=0.2,
            redis_socket_timeout_seconds=0.3,
        )  # fmt: skip
        try:
            step_until_checkpointed(
                worker, url, names.group, produced, 30, "the first half checkpointed"
            )
            redis_server.pause()  # SIGSTOP: connections hang, commands time out
            produce(broker, names.ticks, tick_records(ticks[1200:]), into=produced)
            fed = [p for p in worker.partitions.values() if p.next_offset is not None]
            step_until(
                worker,
                lambda: all(p.status is Status.CHECKPOINT_FAILING for p in fed),
                timeout=30,
                what="every partition with ticks paused by its failing checkpoint",
            )
            assert not worker.ready
            assert metric(worker, "tickprop_checkpoint_failures_total") >= len(fed)
            # No progress without persistence: paused partitions take no further ticks.
            frozen = [p.next_offset for p in fed]
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                worker.step()
            assert [p.next_offset for p in fed] == frozen
            assert max(frozen) < max(produced.end_offsets().values())  # work was left
            redis_server.resume()
            step_until_checkpointed(
                worker, url, names.group, produced, 60, "the worker to recover and checkpoint all"
            )
            # A checkpoint that timed out during the stall may have been applied when Redis
            # resumed: the offsets are all stored while the worker, not knowing it, retries
            # that checkpoint after its back-off (up to 5 s) and only then is ready.
            step_until(worker, lambda: worker.ready, timeout=30, what="the worker ready again")
            assert stored_symbols(url, names.group) == reference_symbols(produced)
        finally:
            redis_server.resume()
            worker.shutdown()
            worker.publisher.close()


def test_unreadable_stored_state_stops_the_partition_and_is_never_overwritten(
    broker: str, redis_url: str
) -> None:
    """Garbage in a symbol's field (a bad restore, a hand edit) is refused: the partition
    is not processed from a blank state and the bytes stay for an operator to see."""
    names = Names.fresh()
    produced = produce(
        broker, names.ticks, tick_records(mixed_ticks(n_stocks=300, n_es=0)), partitions=1
    )
    first = in_process_worker(broker, redis_url, names, checkpoint_every_ticks=50)
    try:
        step_until_checkpointed(
            first, redis_url, names.group, produced, 30, "the stream checkpointed"
        )
    finally:
        first.shutdown()
        first.publisher.close()
    store = store_for(redis_url, names.group)
    key = store.key(names.ticks, 0)
    store.client.hset(key, "AAPL", b"TPLS not a learner")
    before = store.client.hgetall(key)

    second = in_process_worker(broker, redis_url, names, checkpoint_every_ticks=50)
    try:
        step_until(second, lambda: bool(second.partitions), 30, "the partition assigned")
        for _ in range(30):
            second.step()
        part = next(iter(second.partitions.values()))
        assert part.status is Status.NEEDS_CLAIM and not part.learners
        assert not second.ready
        after = store.client.hgetall(key)
        after.pop(b"epoch"), before.pop(b"epoch")  # each claim attempt bumps it
        assert after == before
    finally:
        second.shutdown()
        second.publisher.close()
