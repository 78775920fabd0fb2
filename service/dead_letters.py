"""Dead letters: records that cannot be learned from go to the DLQ topic, once each.

A dead letter keeps the record's key, value and headers, and adds the codec's headers
(`service.codec.dlq_headers`: reason, detail, source topic, partition and offset). It goes
to the DLQ partition numbered like its input partition (modulo the DLQ's partition count),
so the records of one input partition are read back from one DLQ partition.

Read-back de-duplication: a record dead-lettered after the last checkpoint, before a
crash, is read again by the next owner. After each claim the owner reads its DLQ partition
from the stored mark (`Partition.dlq_mark`, written with each checkpoint) to its end, and
skips the source offsets it finds there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from service import codec
from service.metrics import Metrics
from service.protocols import Clock, Publisher

if TYPE_CHECKING:
    from service.checkpoints import Checkpoints
    from service.ownership import Partition

log = logging.getLogger("tickprop.dead_letters")

# A dead letter larger than this (key, value and the record's own headers) keeps no value:
# the producer's max_request_size is 1 MiB, and our headers come on top.
MAX_DEAD_LETTER_BYTES = 1_000_000
READ_BACK_TIMEOUT_SECONDS = 30.0


class DeadLetters:
    """Sends dead letters and finds those an earlier owner already sent."""

    def __init__(
        self,
        dlq_topic: str,
        publisher: Publisher,
        checkpoints: Checkpoints,
        metrics: Metrics,
        clock: Clock,
        reader: Any | None = None,
    ) -> None:
        self.dlq_topic = dlq_topic
        self.publisher = publisher
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.clock = clock
        # A group-less consumer to read the DLQ after a claim (None: no de-duplication).
        self.reader = reader
        self._partition_count: int | None = None

    def send(
        self,
        part: Partition,
        record: Any,
        reason: str,
        detail: str,
        last_offset: int | None = None,
    ) -> None:
        """Send `record` to the DLQ with `reason`, unless an earlier owner already did.

        `record` needs key, value, headers and offset (for a skipped batch: a marker, and
        `last_offset` ends the skipped range)."""
        self.metrics.dlq.labels(reason=reason).inc()
        if part.dlq_sent and record.offset in part.dlq_sent:
            return
        tp = part.tp
        key, value = record.key, record.value
        own = codec.keepable_headers(record.headers)  # null values, non-UTF-8 names
        size = len(key or b"") + len(value or b"") + codec.headers_size(own)
        if size > MAX_DEAD_LETTER_BYTES:
            # Kafka would refuse it (and the partition would rewind forever): keep the why
            # and the where, drop the value, and the record's own headers if still too big.
            detail = f"{detail}; value of {len(value or b'')} bytes not kept: too large"
            value = b""
            if len(key or b"") + codec.headers_size(own) > MAX_DEAD_LETTER_BYTES:
                detail = f"{detail}; its {len(record.headers)} headers not kept: too large"
                own = []
        elif value is None and key is None:
            value = b""  # a record needs a key or a value; the reason header says "null"
        headers = own + codec.dlq_headers(
            reason, detail, tp.topic, tp.partition, record.offset, last_offset
        )
        try:
            self.publisher.send(
                self.dlq_topic,
                key,
                value,
                headers,
                self.partition_for(tp),
                tag=tp.partition,
                want_offset=True,  # dlq_last, for the mark the checkpoint stores
            )
        except KafkaError as exc:
            part.mark_send_failed(repr(exc))
            self.checkpoints.take_publish_reports()  # other partitions' records may be lost too

    def partition_for(self, tp: TopicPartition) -> int:
        """The DLQ partition of input partition `tp`: its number modulo the DLQ's count."""
        if self._partition_count is None:
            partitions = self.publisher.partitions_for(self.dlq_topic)
            self._partition_count = max(1, len(partitions or ()))
        return tp.partition % self._partition_count

    def already_sent(self, part: Partition) -> set[int]:
        """The source offsets of `part` from its next offset on that are in the DLQ already.

        Reads the partition's DLQ partition from the stored mark to its end. Raises
        KafkaError when Kafka does not answer in time (the caller pauses the partition).
        """
        reader, tp = self.reader, part.tp
        if reader is None:
            return set()
        start = part.next_offset or 0
        sent: set[int] = set()
        dlq_tp = TopicPartition(self.dlq_topic, self.partition_for(tp))
        reader.assign([dlq_tp])
        reader.seek(dlq_tp, part.dlq_mark or 0)
        deadline = self.clock.monotonic() + READ_BACK_TIMEOUT_SECONDS
        source = (tp.topic.encode(), str(tp.partition).encode())
        while True:
            for records in reader.poll(timeout_ms=100).values():
                for record in records:
                    headers = dict(record.headers or [])  # ours come last, so they win
                    if (
                        headers.get(codec.SOURCE_TOPIC_HEADER),
                        headers.get(codec.SOURCE_PARTITION_HEADER),
                    ) == source:
                        offset = int(headers.get(codec.SOURCE_OFFSET_HEADER, b"-1"))
                        if offset >= start:
                            sent.add(offset)
            highwater = reader.highwater(dlq_tp)
            if highwater is not None and reader.position(dlq_tp) >= highwater:
                break
            if self.clock.monotonic() > deadline:
                raise KafkaTimeoutError(f"reading {dlq_tp} took over {READ_BACK_TIMEOUT_SECONDS} s")
        if sent:
            log.info(
                "records dead-lettered before a restart will not be sent again",
                extra={"event": "dlq_known", "partition": tp.partition, "records": len(sent)},
            )
        return sent
