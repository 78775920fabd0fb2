"""The partition state machine (claim, fence, rewind, pause, retry) in fake time.

The worker is built with an in-memory store (the Redis store's contract, tested by one
suite against both), a fake consumer and publisher, and a clock that moves only when told.
Integration tests show the same transitions against the real broker and Redis.
"""

from __future__ import annotations

import pytest
from fakes import FakeClock, FakeConsumer, FakePublisher
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from model.learner import OnlineLearner
from service.memory_store import MemoryStore
from service.metrics import Metrics
from service.ownership import Partition, Status
from service.settings import Settings
from service.worker import Worker

TP = TopicPartition("ticks", 0)


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.consumer = FakeConsumer()
        self.publisher = FakePublisher()
        self.store = MemoryStore("g")
        self.metrics = Metrics(CollectorRegistry())
        settings = Settings(checkpoint_every_ticks=10, checkpoint_every_seconds=5.0)
        self.worker = Worker(
            settings, self.consumer, self.publisher, self.store, self.metrics, clock=self.clock
        )
        self.ownership = self.worker.ownership

    def assign(self) -> Partition:
        self.consumer.assigned.add(TP)
        self.worker.assign([TP])
        return self.worker.partitions[TP]

    def learn(self, part: Partition, ticks: int) -> None:
        """What the loop does with `ticks` records of symbol ES (without Kafka)."""
        learner = part.learners.setdefault("ES", OnlineLearner("ES", self.worker.config))
        start = part.next_offset or 0
        for i in range(ticks):
            learner.on_tick(1_700_000_000_000 + start + i, 100.0 + (start + i) % 7)
        part.dirty.add("ES")
        part.next_offset = start + ticks
        part.ticks_since_checkpoint += ticks

    def retry_after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.ownership.retry_paused()


def test_first_claim_seeks_to_zero_and_a_later_claim_to_the_stored_offset() -> None:
    rig = Rig()
    part = rig.assign()
    assert part.status is Status.ACTIVE and part.epoch.startswith("1-")
    assert rig.consumer.seeks == [(TP, 0)]
    rig.learn(part, 12)
    assert rig.ownership.checkpoint(part)
    blob = part.learners["ES"].to_bytes()
    rig.worker.release([TP], commit=True)
    assert rig.consumer.commits[-1][TP].offset == 12  # Kafka's commit follows Redis
    part = rig.assign()
    assert part.epoch.startswith("2-") and part.next_offset == 12
    assert rig.consumer.seeks[-1] == (TP, 12)
    assert part.learners["ES"].to_bytes() == blob


def test_a_failed_claim_pauses_with_growing_backoff_then_claims() -> None:
    rig = Rig()
    rig.store.available = False
    part = rig.assign()
    assert part.status is Status.NEEDS_CLAIM and part.retry_at == rig.clock.now + 0.25
    rig.retry_after(0.1)  # too early: nothing happens
    assert part.failures == 1
    rig.retry_after(0.15)
    assert part.status is Status.NEEDS_CLAIM and part.retry_at == rig.clock.now + 0.5
    rig.store.available = True
    rig.retry_after(0.5)
    assert part.status is Status.ACTIVE and part.failures == 0
    assert rig.consumer.seeks == [(TP, 0)]


def test_a_failed_checkpoint_keeps_the_state_and_resumes_where_it_was() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 20)
    blob = part.learners["ES"].to_bytes()
    rig.store.available = False
    rig.ownership.checkpoint_due()
    assert part.status is Status.CHECKPOINT_FAILING
    assert part.learners["ES"].to_bytes() == blob and part.next_offset == 20
    assert rig.metrics.registry.get_sample_value("tickprop_checkpoint_failures_total") == 1
    rig.retry_after(0.25)  # still down: the back-off doubles
    assert part.status is Status.CHECKPOINT_FAILING and part.retry_at == rig.clock.now + 0.5
    rig.store.available = True
    rig.retry_after(0.5)
    assert part.status is Status.ACTIVE
    assert rig.consumer.seeks[-1] == (TP, 20)  # records polled while paused are read again
    assert rig.store.load_all()[("ticks", 0)].blobs == {"ES": blob}


def test_a_flush_that_fails_is_a_failed_checkpoint_not_a_rewind() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 3)
    rig.publisher.fail_flush = True
    assert not rig.ownership.checkpoint(part)
    assert part.status is Status.CHECKPOINT_FAILING and part.learners
    rig.publisher.fail_flush = False
    rig.retry_after(0.25)
    assert part.status is Status.ACTIVE and rig.store.load_all()[("ticks", 0)].offset == 3


def test_a_lost_output_rewinds_the_partition_to_its_last_checkpoint() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 10)
    assert rig.ownership.checkpoint(part)
    checkpointed = part.learners["ES"].to_bytes()
    rig.learn(part, 5)
    rig.publisher.failures[0] = "broker refused the record"
    assert not rig.ownership.checkpoint(part)
    assert part.status is Status.NEEDS_CLAIM and not part.learners  # state dropped
    assert rig.store.load_all()[("ticks", 0)].offset == 10  # nothing after the loss saved
    rig.retry_after(0.25)
    assert part.status is Status.ACTIVE and part.next_offset == 10
    assert rig.consumer.seeks[-1] == (TP, 10)
    assert part.learners["ES"].to_bytes() == checkpointed


def test_a_fenced_partition_drops_its_state_and_reclaims_only_while_still_assigned() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 4)
    rig.store.claim("ticks", 0)  # another worker claimed it (epoch 2)
    assert not rig.ownership.checkpoint(part)
    assert part.status is Status.FENCED and not part.learners
    assert rig.metrics.registry.get_sample_value("tickprop_fenced_checkpoints_total") == 1
    wait = 2 * rig.worker.settings.session_timeout_ms / 1000
    rig.consumer.assigned.clear()  # the group moved it away: no claim
    rig.retry_after(wait)
    assert part.status is Status.FENCED
    rig.consumer.assigned.add(TP)  # still ours long after: the other was a stale worker
    rig.retry_after(0.0)
    assert part.status is Status.ACTIVE and part.epoch.startswith("3-")


def test_a_checkpoint_lost_by_a_failover_makes_the_owner_reread_the_older_state() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 10)
    assert rig.ownership.checkpoint(part)
    older = rig.store.load_all()[("ticks", 0)]
    rig.learn(part, 10)
    assert rig.ownership.checkpoint(part)
    rig.store._hashes[("ticks", 0)].offset = older.offset  # what a failover may leave
    rig.store._hashes[("ticks", 0)].blobs = dict(older.blobs)
    rig.learn(part, 3)
    assert not rig.ownership.checkpoint(part)
    assert part.status is Status.NEEDS_CLAIM and not part.learners
    rig.retry_after(0.25)
    assert part.status is Status.ACTIVE and part.next_offset == 10
    assert part.learners["ES"].to_bytes() == older.blobs["ES"]


def test_an_idle_partition_whose_last_checkpoint_a_failover_lost_is_read_again() -> None:
    """No tick follows the lost checkpoint: the periodic check of an idle partition finds it."""
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 10)
    assert rig.ownership.checkpoint(part)
    older = rig.store.load_all()[("ticks", 0)]
    rig.learn(part, 4)
    assert rig.ownership.checkpoint(part)  # the last ticks of the stream, then silence
    rig.store._hashes[("ticks", 0)].offset = older.offset  # what a failover may leave
    rig.store._hashes[("ticks", 0)].blobs = dict(older.blobs)
    rig.clock.advance(4.9)
    rig.ownership.checkpoint_due()
    assert part.status is Status.ACTIVE  # not due yet: one check per checkpoint interval
    rig.clock.advance(0.1)
    rig.ownership.checkpoint_due()
    assert part.status is Status.NEEDS_CLAIM and not part.learners
    rig.retry_after(0.25)
    assert part.status is Status.ACTIVE and part.next_offset == 10  # ticks 10-13 read again
    assert rig.consumer.seeks[-1] == (TP, 10)


def test_an_idle_partition_is_checked_without_writing_and_an_outage_does_not_pause_it() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 10)
    assert rig.ownership.checkpoint(part)
    checkpoints = rig.metrics.checkpoints._value.get()
    rig.clock.advance(5.0)
    rig.ownership.checkpoint_due()
    assert part.status is Status.ACTIVE and rig.metrics.checkpoints._value.get() == checkpoints
    rig.store.available = False
    rig.clock.advance(5.0)
    rig.ownership.checkpoint_due()
    assert part.status is Status.ACTIVE  # nothing new to write: it waits for ticks
    assert rig.metrics.checkpoint_failures._value.get() == 1
    rig.ownership.checkpoint_due()  # checked once per interval, not on every loop
    assert rig.metrics.checkpoint_failures._value.get() == 1


def test_releasing_a_lost_partition_checkpoints_without_committing() -> None:
    rig = Rig()
    part = rig.assign()
    rig.learn(part, 7)
    rig.worker.release([TP], commit=False)
    assert TP not in rig.worker.partitions
    assert rig.consumer.commits == []
    assert rig.store.load_all()[("ticks", 0)].offset == 7


@pytest.mark.parametrize(
    "ticks, seconds, due", [(0, 99.0, False), (10, 0.0, True), (1, 5.0, True), (9, 4.9, False)]
)
def test_a_checkpoint_is_due_after_enough_ticks_or_seconds(
    ticks: int, seconds: float, due: bool
) -> None:
    rig = Rig()
    part = rig.assign()
    if ticks:
        rig.learn(part, ticks)
    rig.clock.advance(seconds)
    assert rig.worker.checkpoints.is_due(part) is due
