"""Partition ownership: which input partitions this worker holds, and their life cycle.

A partition assigned by the group is *claimed* in Redis (`StateStore.claim` bumps its
fencing epoch and returns its state), its learners are restored and the consumer seeks to
its stored offset. While anything it needs fails, the partition is *paused*: its polled
records are dropped and a retry is scheduled with `service.backoff.backoff`; the retry
claims it again (re-reading state from the last checkpoint) or, if only the checkpoint
failed, writes it again and seeks on. A partition the group takes away is checkpointed
(if it can be) and *released*.

    NEEDS_CLAIM --claim ok--> ACTIVE --checkpoint fails--> CHECKPOINT_FAILING --ok--> ACTIVE
         ^                      |--output lost, read-back fails, state went back--> NEEDS_CLAIM
         |                      \\--fenced (another claim)--> FENCED --still ours later--> claim

KafkaConsumer.pause() is deliberately not used: in kafka-python 3.0.12 a resumed
partition whose prefetched records were parked while paused is never fetched again (the
fetcher restores parked records only while no other partition's exhausted records are in
line), which stalled the partition for good after a Redis outage (test_worker_faults).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from model.learner import LearnerConfig, OnlineLearner
from service.backoff import backoff
from service.checkpoints import Checkpoints, Outcome
from service.fetch_guard import UnreadableBatch
from service.metrics import Metrics
from service.protocols import Clock, Consumer, StateStore
from service.store import StoreError

log = logging.getLogger("tickprop.ownership")


class Status(enum.Enum):
    """What the worker does with a partition's records (all but ACTIVE: drops them)."""

    ACTIVE = "active"  # state loaded, records processed
    NEEDS_CLAIM = "needs_claim"  # no state in memory; paused until a claim succeeds
    CHECKPOINT_FAILING = "checkpoint_failing"  # state good but not persisted; paused
    FENCED = "fenced"  # another worker claimed it; paused, state dropped
    UNREADABLE = "unreadable"  # a batch the consumer cannot read; waits (service.unreadable)


# Statuses whose in-memory state is good, so it is checkpointed on release and shutdown.
PERSISTING = (Status.ACTIVE, Status.CHECKPOINT_FAILING, Status.UNREADABLE)


@dataclass
class Partition:
    """What this worker holds for one assigned input partition."""

    tp: TopicPartition
    status: Status = Status.NEEDS_CLAIM
    epoch: str = ""  # the fence of our claim
    learners: dict[str, OnlineLearner] = field(default_factory=dict)
    next_offset: int | None = None  # None: nothing read yet and no checkpoint
    stored_offset: int | None = None  # the offset in Redis, as we last stored or claimed it
    dirty: set[str] = field(default_factory=set)
    ticks_since_checkpoint: int = 0
    last_checkpoint_at: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    send_failed: bool = False
    # Dead letters: `dlq_mark` (stored) is where this partition's dead letters sent after
    # the checkpoint can start in its DLQ partition; `dlq_last` the last offset our own
    # dead letters got since the claim; `dlq_sent` the source offsets (>= the checkpoint)
    # already dead-lettered by an earlier owner, None until the DLQ has been read.
    dlq_mark: int | None = None
    dlq_last: int | None = None
    dlq_sent: set[int] | None = None
    unreadable: UnreadableBatch | None = None  # why it is UNREADABLE
    unreadable_logged_at: float = 0.0

    def reset(self, status: Status) -> None:
        """Drop the in-memory state; it will be re-read from Redis."""
        self.status = status
        self.learners.clear()
        self.dirty.clear()
        self.next_offset = None
        self.ticks_since_checkpoint = 0
        self.send_failed = False
        self.dlq_last = None
        self.dlq_sent = None

    def mark_send_failed(self, error: str) -> None:
        """An output of this partition may be lost: its next checkpoint rewinds instead."""
        if not self.send_failed:
            log.error(
                "publish failed; partition will be re-read from its last checkpoint",
                extra={"event": "send_failed", "partition": self.tp.partition, "error": error},
            )
        self.send_failed = True


class Ownership:
    """The assigned partitions: claim, release, pause and retry them; route checkpoints."""

    def __init__(
        self,
        partitions: dict[TopicPartition, Partition],
        store: StateStore,
        consumer: Consumer,
        checkpoints: Checkpoints,
        metrics: Metrics,
        clock: Clock,
        config: LearnerConfig,
        fenced_wait_seconds: float,
        reads_back_dead_letters: bool,
    ) -> None:
        self.partitions = partitions
        self.store = store
        self.consumer = consumer
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.clock = clock
        self.config = config
        self.fenced_wait_seconds = fenced_wait_seconds
        self.reads_back_dead_letters = reads_back_dead_letters

    # ------------------------------------------------------------------ rebalances
    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Claim each newly assigned partition in Redis, restore its learners and seek."""
        for tp in tps:
            self.metrics.rebalances.labels(event="assigned").inc()
            self.claim(self.partitions.setdefault(tp, Partition(tp)))

    def release(
        self, tps: Iterable[TopicPartition], commit: bool, forget_lag: Callable[[int], None]
    ) -> None:
        """Checkpoint partitions we are giving up (fenced if already lost), then forget them."""
        for tp in tps:
            part = self.partitions.pop(tp, None)
            if part is None:
                continue
            self.metrics.rebalances.labels(event="revoked").inc()
            forget_lag(tp.partition)
            if part.status in PERSISTING:
                self.checkpoint(part, commit=commit)
            log.info(
                "partition released",
                extra={"event": "released", "partition": tp.partition, "status": part.status.value},
            )

    def claim(self, part: Partition) -> None:
        tp = part.tp
        try:
            state = self.store.claim(tp.topic, tp.partition)
            learners = self._restore(state.blobs)
        except (StoreError, ValueError) as exc:
            part.reset(Status.NEEDS_CLAIM)
            self.pause(part, exc, "claim_failed")
            return
        part.reset(Status.ACTIVE)
        part.epoch = state.epoch
        part.learners = learners
        part.next_offset = part.stored_offset = state.offset
        part.dlq_mark = state.dlq_mark
        part.dlq_sent = None if self.reads_back_dead_letters else set()
        part.failures = 0
        part.last_checkpoint_at = self.clock.monotonic()
        # No stored offset: from 0 (out of range after retention resets to earliest).
        self.consumer.seek(tp, 0 if state.offset is None else state.offset)
        if tp in self.consumer.paused():  # it was UNREADABLE, and is still assigned
            self.consumer.resume(tp)
        log.info(
            "partition claimed",
            extra={
                "event": "claimed",
                "partition": tp.partition,
                "epoch": state.epoch,
                "offset": state.offset,
                "symbols": len(learners),
            },
        )

    def _restore(self, blobs: Mapping[str, bytes]) -> dict[str, OnlineLearner]:
        learners = {}
        for symbol, blob in blobs.items():
            try:
                learners[symbol] = OnlineLearner.from_bytes(blob, self.config)
            except ValueError as exc:
                raise ValueError(f"stored state of symbol {symbol!r} is unreadable: {exc}") from exc
        return learners

    def dead_letters_known(
        self, part: Partition, read_back: Callable[[Partition], set[int]]
    ) -> bool:
        """What an earlier owner dead-lettered after the checkpoint, read back once per
        claim (`DeadLetters.already_sent`); False, and the partition paused for a new
        claim, when the DLQ cannot be read."""
        if part.dlq_sent is not None:
            return True
        try:
            part.dlq_sent = read_back(part)
        except (KafkaError, ValueError) as exc:
            part.reset(Status.NEEDS_CLAIM)
            self.pause(part, exc, "dlq_read_failed")
            return False
        return True

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_all(self) -> tuple[bool, dict[TopicPartition, OffsetAndMetadata]]:
        """Checkpoint every partition whose state is good (shutdown), without committing:
        whether all persisted, and the offsets to commit for those that did."""
        ok, offsets = True, {}
        for tp, part in list(self.partitions.items()):
            if part.status in PERSISTING:
                persisted = self.checkpoint(part, commit=False)
                ok = ok and persisted
                if persisted and part.next_offset is not None:
                    offsets[tp] = OffsetAndMetadata(part.next_offset, "", -1)
        return ok, offsets

    def checkpoint_due(self) -> None:
        """Checkpoint every active partition whose cadence is due or whose output failed."""
        for part in list(self.partitions.values()):
            if part.status is Status.ACTIVE and (self.checkpoints.is_due(part) or part.send_failed):
                self.checkpoint(part)

    def checkpoint(self, part: Partition, commit: bool = True) -> bool:
        """Checkpoint `part` and apply the outcome to its status; whether it is persisted."""
        outcome, exc = self.checkpoints.write(part, commit)
        if outcome is Outcome.PERSISTED:
            if part.failures:
                log.info(
                    "checkpoint recovered",
                    extra={"event": "checkpoint_recovered", "partition": part.tp.partition},
                )
                part.failures = 0
            return True
        if outcome is Outcome.OUTPUT_LOST:
            # Outputs after the last checkpoint may be lost: re-read them from there.
            part.reset(Status.NEEDS_CLAIM)
            self.pause(part, RuntimeError("a publish failed"), "rewind")
        elif outcome is Outcome.STATE_WENT_BACK:
            # A Redis failover lost checkpoints: re-read the (older, consistent) hash.
            part.reset(Status.NEEDS_CLAIM)
            self.pause(part, exc or RuntimeError("stored state went back"), "state_went_back")
        elif outcome is Outcome.FENCED:
            log.warning(
                "fenced: another worker owns this partition now; dropping its state",
                extra={"event": "fenced", "partition": part.tp.partition, "error": str(exc)},
            )
            part.reset(Status.FENCED)
            part.retry_at = self.clock.monotonic() + self.fenced_wait_seconds
        else:  # FAILED: state kept, written again on retry
            if part.status is Status.ACTIVE:
                part.status = Status.CHECKPOINT_FAILING
            self.pause(part, exc or RuntimeError("checkpoint failed"), "checkpoint_failed")
        return False

    # ------------------------------------------------------------------ pause and retry
    def pause(self, part: Partition, exc: BaseException, event: str) -> None:
        """Stop processing `part` until `retry_at`; it resumes with a seek to its offset.

        Records polled for a paused partition are dropped (they are read again after the
        seek that resumes it).
        """
        dependency = "redis" if isinstance(exc, StoreError) else "kafka"
        self.metrics.dependency_errors.labels(dependency=dependency).inc()
        self.metrics.dependency_up.labels(dependency=dependency).set(0)
        part.failures += 1
        delay = backoff(part.failures)
        part.retry_at = self.clock.monotonic() + delay
        log.error(
            f"{event.replace('_', ' ')}; partition paused, retrying",
            extra={
                "event": event,
                "partition": part.tp.partition,
                "error": str(exc),
                "retry_in": round(delay, 3),
                "attempt": part.failures,
            },
        )

    def retry_paused(self) -> None:
        """Retry every paused partition whose back-off has passed."""
        now = self.clock.monotonic()
        for part in list(self.partitions.values()):
            if part.status is Status.ACTIVE or now < part.retry_at:
                continue
            if part.status is Status.CHECKPOINT_FAILING:
                if self.checkpoint(part):
                    part.status = Status.ACTIVE
                    if part.next_offset is not None:
                        self.consumer.seek(part.tp, part.next_offset)
            elif part.status is Status.NEEDS_CLAIM:
                self.claim(part)
            elif part.status is Status.FENCED and part.tp in self.consumer.assignment():
                # Still ours per the group long after the fence: the other claimer was a
                # stale worker. Take the partition back from Redis.
                self.claim(part)

    # ------------------------------------------------------------------ views
    def all_active(self) -> bool:
        return all(p.status is Status.ACTIVE for p in self.partitions.values())

    def symbol_count(self) -> int:
        return sum(len(p.learners) for p in self.partitions.values())

    def held_learners(self) -> dict[int, dict[str, OnlineLearner]]:
        """Input partition -> {symbol: learner} of the state in memory (for the query API);
        call under the worker's lock."""
        return {
            tp.partition: part.learners for tp, part in self.partitions.items() if part.learners
        }
