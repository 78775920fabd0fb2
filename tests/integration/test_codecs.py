"""Every compression codec Kafka has, produced by librdkafka, read by the worker's consumer.

One partition holds, per codec, a plain batch, a batch compressed with that codec and
another plain batch. With the codec's library present (a product dependency) every record
comes back with its key, value and headers; with it reported missing the compressed batch
is an UnreadableBatch naming its offsets — which also proves librdkafka compressed it.
"""

from __future__ import annotations

from typing import Any

import kafka.codec
import pytest
from kafka import KafkaConsumer, TopicPartition
from rdkafka_kit import CODECS, rdkafka_produce
from worker_kit import Names, Produced

from service.fetch_guard import UNSUPPORTED_CODEC, UnreadableBatch, guard

CHECKS = {"gzip": "has_gzip", "snappy": "has_snappy", "lz4": "has_lz4", "zstd": "has_zstd"}
BATCH = 8  # records per batch


@pytest.fixture(scope="module")
def topics(broker: str) -> dict[str, tuple[str, Produced]]:
    out = {}
    for codec in CODECS:
        topic = Names.fresh().ticks
        produced = Produced()
        for n, compression in enumerate(("none", codec, "none")):
            records = [
                (b"ES", b'{"n": %d, "pad": "%s"}' % (n * BATCH + i, b"x" * 200),
                 [("null", None), ("empty", b""), ("i", str(i).encode())])
                for i in range(BATCH)
            ]  # fmt: skip
            rdkafka_produce(broker, topic, records, compression, 1, partition=0, into=produced)
        out[codec] = (topic, produced)
    return out


def consume(broker: str, topic: str, expected: int) -> tuple[list[Any], list[UnreadableBatch]]:
    consumer = KafkaConsumer(
        bootstrap_servers=broker, auto_offset_reset="earliest", enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )  # fmt: skip
    guard(consumer)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    records: list[Any] = []
    errors: list[UnreadableBatch] = []
    try:
        for _ in range(100):
            try:
                records.extend(consumer.poll(timeout_ms=100).get(tp, []))
            except UnreadableBatch as exc:
                errors.append(exc)
                consumer.seek(tp, exc.last_offset + 1)  # what the skip setting does
            if len(records) + sum(e.last_offset - e.first_offset + 1 for e in errors) >= expected:
                break
    finally:
        consumer.close()
    return records, errors


@pytest.mark.parametrize("codec", CODECS)
def test_a_librdkafka_batch_of_each_codec_is_read_between_plain_ones(
    broker: str, topics: dict[str, tuple[str, Produced]], codec: str
) -> None:
    topic, produced = topics[codec]
    records, errors = consume(broker, topic, 3 * BATCH)
    assert errors == []
    assert [r.offset for r in records] == list(range(3 * BATCH))
    assert [(r.key, r.value) for r in records] == [(k, v) for k, v, _ in produced.records]
    for record in records:
        assert record.headers[:2] == [("null", None), ("empty", b"")]


@pytest.mark.parametrize("codec", CODECS)
def test_without_its_library_the_compressed_batch_is_named_and_skippable(
    broker: str,
    topics: dict[str, tuple[str, Produced]],
    codec: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka.codec, CHECKS[codec], lambda: False)
    topic, _ = topics[codec]
    records, errors = consume(broker, topic, 3 * BATCH)
    assert [(e.first_offset, e.last_offset, e.cause) for e in errors] == [
        (BATCH, 2 * BATCH - 1, UNSUPPORTED_CODEC)
    ]
    assert codec in errors[0].error
    assert [r.offset for r in records] == [*range(BATCH), *range(2 * BATCH, 3 * BATCH)]


def test_read_committed_reads_committed_transactions_and_this_broker_filters_no_aborted_ones(
    broker: str,
) -> None:
    """The worker's consumer setting against the embedded broker, as docs/reliability.md
    says: records of committed transactions arrive (control batches are not records), and
    Tansu hands out aborted ones too — Apache Kafka would not. If this test fails on a
    later broker, that broker filters aborted records: update the docs."""
    from confluent_kafka import Producer

    topic = Names.fresh().ticks
    rdkafka_produce(broker, topic, [], partitions=1)  # creates the topic
    producer = Producer({"bootstrap.servers": broker, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(10)
    for outcome in ("committed", "aborted", "committed"):
        producer.begin_transaction()
        producer.produce(topic, key=b"ES", value=outcome.encode(), partition=0)
        producer.flush(10)
        if outcome == "committed":
            producer.commit_transaction(10)
        else:
            producer.abort_transaction(10)
    consumer = KafkaConsumer(
        bootstrap_servers=broker, auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level="read_committed", consumer_timeout_ms=2000,
    )  # fmt: skip
    guard(consumer)
    consumer.assign([TopicPartition(topic, 0)])
    try:
        values = [r.value for r in consumer]
    finally:
        consumer.close()
    assert values == [b"committed", b"aborted", b"committed"]
