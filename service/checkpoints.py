"""Checkpoints: when one is due, and writing it as flush -> persist -> commit.

A checkpoint makes one input partition's progress durable, in three numbered steps whose
order is what makes state exactly-once and output at-least-once:

1. **flush** the publisher, so every prediction and dead letter computed from the records
   before `next_offset` is confirmed by Kafka (a failed output rewinds the partition to its
   last checkpoint instead: it is re-read and re-sent from there);
2. **persist** the changed symbols' learners and `next_offset` to Redis in one fenced,
   atomic write (`StateStore.checkpoint`), with the DLQ mark;
3. **commit** `next_offset` to Kafka, informationally (Redis is the truth; Kafka's
   committed offsets follow it, never lead it).

What a failure means for the partition (pause, rewind, fenced) is decided by its owner,
`service.ownership.Ownership`; this module only reports the outcome.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from service.metrics import Metrics
from service.protocols import Clock, Consumer, Publisher, StateStore
from service.store import Fenced, OffsetWentBackwards, StateWentBack, StoreUnavailable

if TYPE_CHECKING:
    from service.ownership import Partition

log = logging.getLogger("tickprop.checkpoints")

FLUSH_TIMEOUT_SECONDS = 10.0


class Outcome(enum.Enum):
    PERSISTED = "persisted"  # state and offset written (or nothing to write)
    FAILED = "failed"  # the flush or Redis failed: state kept, to be written again
    OUTPUT_LOST = "output_lost"  # an output may be lost: re-read from the last checkpoint
    FENCED = "fenced"  # another worker claimed the partition since our claim
    STATE_WENT_BACK = "state_went_back"  # Redis holds an older state (a failover lost some)


class Checkpoints:
    """Writes checkpoints of input partitions and routes the publisher's reports to them."""

    def __init__(
        self,
        partitions: dict[TopicPartition, Partition],
        ticks_topic: str,
        every_ticks: int,
        every_seconds: float,
        publisher: Publisher,
        store: StateStore,
        consumer: Consumer,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.partitions = partitions
        self.ticks_topic = ticks_topic
        self.every_ticks = every_ticks
        self.every_seconds = every_seconds
        self.publisher = publisher
        self.store = store
        self.consumer = consumer
        self.metrics = metrics
        self.clock = clock

    def is_due(self, part: Partition) -> bool:
        """New ticks since the last checkpoint, and `every_ticks` of them or `every_seconds`;
        or, for an idle partition, `every_seconds` since Redis was last checked (`verify`)."""
        elapsed = self.clock.monotonic() - part.last_checkpoint_at
        if part.ticks_since_checkpoint == 0:
            return part.stored_offset is not None and elapsed >= self.every_seconds
        return part.ticks_since_checkpoint >= self.every_ticks or elapsed >= self.every_seconds

    def write(self, part: Partition, commit: bool = True) -> tuple[Outcome, Exception | None]:
        """Flush, persist, commit `part`; the outcome and the error behind a failure.

        A partition with nothing new is only verified, when due (`verify`).
        """
        if part.next_offset is None:
            return Outcome.PERSISTED, None
        if part.ticks_since_checkpoint == 0 and not part.send_failed:
            return self.verify(part) if self.is_due(part) else (Outcome.PERSISTED, None)
        started = self.clock.perf_counter()
        # 1. flush: every output before next_offset confirmed, or the partition rewinds.
        try:
            self.publisher.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except KafkaError as exc:
            self.take_publish_reports(part)
            self.metrics.checkpoint_failures.inc()
            return Outcome.FAILED, exc
        self.take_publish_reports(part)
        if part.send_failed:
            return Outcome.OUTPUT_LOST, None
        # 2. persist: changed learners and the offset, atomically, if our epoch still holds.
        blobs = {symbol: part.learners[symbol].to_bytes() for symbol in part.dirty}
        mark = None if part.dlq_last is None else part.dlq_last + 1
        outcome, error = self._persist(part, part.next_offset, blobs, mark)
        if outcome is not Outcome.PERSISTED:
            return outcome, error
        part.stored_offset = part.next_offset
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.observe(self.clock.perf_counter() - started)
        self.metrics.last_checkpoint_timestamp_seconds.set(self.clock.time())
        self.metrics.dependency_up.labels(dependency="redis").set(1)
        part.dirty.clear()
        part.ticks_since_checkpoint = 0
        part.last_checkpoint_at = self.clock.monotonic()
        # 3. commit: Kafka's committed offset follows Redis.
        if commit:
            self.commit(part.tp, part.next_offset)
        return Outcome.PERSISTED, None

    def verify(self, part: Partition) -> tuple[Outcome, Exception | None]:
        """Check that Redis still holds our fence and the offset we stored last.

        A Redis failover can lose the last checkpoint of a partition that then gets no
        more ticks: nothing would notice, and Redis would keep the older state while we
        believe ours is stored. An empty checkpoint at the stored offset (the same fence
        and offset checks, nothing new written) finds it, so the partition is re-read.
        Redis being unreachable does not pause an idle partition (it has nothing to
        write); its next tick's checkpoint would.
        """
        if part.stored_offset is None:  # never stored: nothing to check
            return Outcome.PERSISTED, None
        outcome, exc = self._persist(part, part.stored_offset, {}, None)
        part.last_checkpoint_at = self.clock.monotonic()  # one check per interval at most
        if outcome is Outcome.FAILED:
            # Redis unreachable (counted): nothing new waits to be written, so the
            # partition goes on; the next interval checks again.
            return Outcome.PERSISTED, None
        return outcome, exc

    def _persist(
        self, part: Partition, offset: int, blobs: dict[str, bytes], mark: int | None
    ) -> tuple[Outcome, Exception | None]:
        """One fenced write of `blobs` and `offset`; the outcome and the error behind it."""
        tp = part.tp
        try:
            self.store.checkpoint(
                tp.topic, tp.partition, part.epoch, offset, blobs, dlq_mark=mark,
                stored_offset=part.stored_offset,
            )  # fmt: skip
        except StateWentBack as exc:
            self.metrics.checkpoint_failures.inc()
            return Outcome.STATE_WENT_BACK, exc
        except Fenced as exc:
            self.metrics.checkpoint_failures.inc()
            self.metrics.fenced_checkpoints.inc()
            return Outcome.FENCED, exc
        except (StoreUnavailable, OffsetWentBackwards) as exc:
            self.metrics.checkpoint_failures.inc()
            return Outcome.FAILED, exc
        return Outcome.PERSISTED, None

    def commit(self, tp: TopicPartition, offset: int) -> None:
        """Let Kafka's committed offset follow Redis (informational: Redis is the truth).

        Asynchronous, because the rebalance listener runs on kafka-python's IO thread, where
        blocking consumer calls are forbidden.
        """
        try:
            self.consumer.commit_async({tp: OffsetAndMetadata(offset, "", -1)})
        except KafkaError as exc:
            log.warning("kafka commit failed", extra={"event": "commit_failed", "error": repr(exc)})

    def take_publish_reports(self, part: Partition | None = None) -> None:
        """Hand the publisher's reports since the last flush to the partitions they concern.

        Records are tagged with their input partition; `part` is the one being checkpointed,
        which a release has already taken out of `self.partitions`. A failure marks the
        partition's outputs lost; a dead letter's offset moves its DLQ mark on.
        """

        def owner(tag: int) -> Partition | None:
            if part is not None and part.tp.partition == tag:
                return part
            return self.partitions.get(TopicPartition(self.ticks_topic, tag))

        for tag, error in self.publisher.take_failures().items():
            target = owner(tag)
            if target is not None:
                target.mark_send_failed(error)
        for tag, offset in self.publisher.take_offsets().items():
            target = owner(tag)
            if target is not None and (target.dlq_last is None or offset > target.dlq_last):
                target.dlq_last = offset
