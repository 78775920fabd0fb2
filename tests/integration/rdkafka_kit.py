"""librdkafka clients (confluent-kafka) for the tests: producers and consumers nobody here wrote.

librdkafka differs from kafka-python where it matters to us: its default partitioner is
CRC32-based ("consistent_random", kafka-python's is murmur2), it compresses with any
codec Kafka has, and it sends headers kafka-python's producer refuses (null values).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from worker_kit import Produced

from service.tools.embedded import create_topics

CODECS = ("gzip", "snappy", "lz4", "zstd")
# Group joins on the embedded broker: short timeouts, or the first join takes ~24 s.
FAST_GROUP = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "topic.metadata.refresh.interval.ms": 1000,
}

Header = tuple[str, bytes | None]
RdRecord = tuple[bytes | None, bytes | None, list[Header] | None]


def rdkafka_produce(
    bootstrap: str,
    topic: str,
    records: Iterable[RdRecord],
    compression: str = "none",
    partitions: int = 6,
    partition: int | None = None,
    into: Produced | None = None,
    **conf: Any,
) -> Produced:
    """Send (key, value, headers) with a librdkafka producer in its default settings (plus
    `compression` and `conf`); wait for every delivery report. Records go to `partition`
    when given, else where librdkafka's partitioner puts them."""
    create_topics(bootstrap, [topic], partitions=partitions)
    out = into if into is not None else Produced()
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": compression, **conf})
    positions: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def report(index: int) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                positions[index] = (msg.partition(), msg.offset())

        return on_delivery

    start = len(out.records)
    for i, (key, value, headers) in enumerate(records, start):
        out.records.append((key, value, [(k, v or b"") for k, v in headers or []]))
        extra = {} if partition is None else {"partition": partition}
        producer.produce(
            topic, value=value, key=key, headers=headers or None, on_delivery=report(i), **extra
        )
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not errors, f"{left} records undelivered, errors: {errors[:3]}"
    out.positions.extend(positions[i] for i in range(start, len(out.records)))
    return out


def rdkafka_read(
    bootstrap: str, topic: str, group: str, expected: int, timeout: float = 60
) -> list[Any]:
    """Records of `topic` read by a librdkafka consumer in `group` with read_committed,
    from the beginning, until `expected` arrived (or `timeout`)."""
    import time

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            **FAST_GROUP,
        }
    )
    out: list[Any] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                raise KafkaException(msg.error())
            out.append(msg)
    finally:
        consumer.close()
    return out
