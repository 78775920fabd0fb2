"""Unreadable batches: a record batch the consumer cannot read stops its partition only.

`service.fetch_guard` turns a batch kafka-python cannot read (a codec library missing, a
corrupt record) into `UnreadableBatch` from poll(), naming the partition and the offsets.
Reading again would fail the same way, so it is not a poll failure to retry. Instead the
partition's state is checkpointed up to the batch, the partition is paused in the consumer
(`Status.UNREADABLE`: /readyz fails, `tickprop_unreadable_partition` is 1) while the others
go on, and a JSON log line names the partition and offset at least once a minute, until:

- an operator sets TICKPROP_SKIP_UNREADABLE_BATCHES=true: the batch is skipped, and a
  marker dead letter (reason `unreadable_batch`) names the skipped offset range and why,
  so nothing is lost without a trace; or
- the cause is fixed (the codec library installed) and the worker restarted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from kafka import TopicPartition

from service import codec
from service.dead_letters import DeadLetters
from service.fetch_guard import UnreadableBatch
from service.metrics import Metrics
from service.ownership import Ownership, Partition, Status
from service.protocols import Clock, Consumer

log = logging.getLogger("tickprop.unreadable")

# A partition that cannot be read is logged again this often (well within a minute).
LOG_EVERY_SECONDS = 50.0


@dataclass(frozen=True)
class Marker:
    """The record a skipped batch is dead-lettered as: no key, no value, no headers."""

    offset: int
    key: None = None
    value: None = None
    headers: tuple[()] = ()


class UnreadableBatches:
    """Pauses a partition whose batch cannot be read, or skips the batch when allowed."""

    def __init__(
        self,
        partitions: dict[TopicPartition, Partition],
        skip: bool,
        consumer: Consumer,
        ownership: Ownership,
        dead_letters: DeadLetters,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.partitions = partitions
        self.skip = skip
        self.consumer = consumer
        self.ownership = ownership
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.clock = clock

    def handle(self, exc: UnreadableBatch, read_back: Callable[[Partition], set[int]]) -> None:
        """Skip the batch if the operator allows, else stop reading that partition (only)."""
        part = self.partitions.get(exc.tp)
        if part is None or part.status is not Status.ACTIVE:
            return  # not ours, or its records are dropped until a seek resumes it
        if not self.ownership.dead_letters_known(part, read_back):
            return
        if self.skip and exc.last_offset is not None:
            self._skip(part, exc, exc.last_offset)
            return
        if not self.ownership.checkpoint(part):  # keep what was read before the batch
            return
        # KafkaConsumer.pause() is safe here, unlike for the other pauses (service.ownership):
        # fetch_guard drained the partition's records in line, so the fetcher parks no parsed
        # records for it.
        self.consumer.pause(exc.tp)
        part.status = Status.UNREADABLE
        part.unreadable = exc
        self.metrics.unreadable_partition.labels(partition=str(exc.tp.partition)).set(1)
        self._log(part)

    def log_due(self) -> None:
        """Say again which partitions wait, once LOG_EVERY_SECONDS has passed for each."""
        now = self.clock.monotonic()
        for part in self.partitions.values():
            waited = now - part.unreadable_logged_at
            if part.status is Status.UNREADABLE and waited >= LOG_EVERY_SECONDS:
                self._log(part)

    def _log(self, part: Partition) -> None:
        exc = part.unreadable
        if exc is None:
            return
        part.unreadable_logged_at = self.clock.monotonic()
        log.error(
            "partition cannot be read at this offset; it waits (set "
            "TICKPROP_SKIP_UNREADABLE_BATCHES=true to skip the batch, or fix the cause)",
            extra={
                "event": "partition_unreadable",
                "partition": exc.tp.partition,
                "offset": exc.first_offset,
                "last_offset": exc.last_offset,
                "cause": exc.cause,
                "error": exc.error,
            },
        )

    def _skip(self, part: Partition, exc: UnreadableBatch, last: int) -> None:
        """Dead-letter a marker naming the unreadable offsets, then read on after them."""
        first = max(exc.first_offset, part.next_offset or 0)
        if last >= first:
            detail = (
                f"offsets {first}..{last} of {exc.tp.topic}[{exc.tp.partition}] skipped "
                f"unread ({exc.cause}): {exc.error}"
            )
            self.dead_letters.send(part, Marker(first), codec.UNREADABLE_BATCH, detail, last)
            self.metrics.skipped_records.inc(last - first + 1)
            log.warning(
                "unreadable batch skipped",
                extra={
                    "event": "batch_skipped",
                    "partition": exc.tp.partition,
                    "offset": first,
                    "last_offset": last,
                    "cause": exc.cause,
                    "error": exc.error,
                },
            )
            part.ticks_since_checkpoint += 1  # the checkpoint keeps the skip
        part.next_offset = max(last + 1, part.next_offset or 0)
        self.consumer.seek(exc.tp, part.next_offset)
