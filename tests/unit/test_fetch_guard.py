"""fetch_guard on record batches built in memory: what kafka-python refuses, what it spins on.

tests/integration/test_fetch_guard.py does the same through a real broker and librdkafka.
"""

from __future__ import annotations

from typing import Any

import kafka.codec
import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.record import MemoryRecords
from kafka.record.memory_records import MemoryRecordsBuilder
from record_tools import RawName

from service.fetch_guard import (
    CORRUPT_RECORD,
    UNSUPPORTED_CODEC,
    GuardedRecords,
    UnreadableBatch,
)

TP = TopicPartition("ticks", 3)
NONE, GZIP, SNAPPY = 0, 1, 2
# Values long and repetitive enough that every codec shrinks them.
A, B, C, D = (letter * 300 for letter in (b"a", b"b", b"c", b"d"))


def batch(offset: int, values: list[bytes], codec: int = NONE, headers: Any = None) -> bytes:
    """One v2 record batch of `values` starting at `offset` (headers on each record)."""
    return build(offset, [(1_700_000_000_000, value, headers or []) for value in values], codec)


def build(offset: int, records: list[tuple[int, bytes, Any]], codec: int) -> bytes:
    """A v2 batch of (timestamp, value, headers), key b"K", compressed with `codec`."""
    builder = MemoryRecordsBuilder(
        magic=2, compression_type=codec, batch_size=1 << 20, offset=offset
    )
    for timestamp, value, headers in records:
        builder.append(timestamp, b"K", value, headers)
    builder.close()
    out = bytes(builder.buffer())
    assert out[22] & 0x07 == codec  # compressed indeed (kafka-python may keep it plain)
    return out


def read_all(records: Any, fetch_offset: int = 0) -> list[Any]:
    """What the fetcher would hand out: take() while the reader is in line (truthy)."""
    part = GuardedRecords(fetch_offset, TP, MemoryRecords(records))
    out: list[Any] = []
    for _ in range(100):  # kafka-python's own reader would need for ever on a dead batch
        if not part:
            return out
        out.extend(part.take(2))
    raise AssertionError("the reader stays in line without yielding")


def test_kafka_pythons_own_reader_spins_on_a_dead_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the guard exists: after the error, kafka-python's reader stays "in line" (truthy)
    but yields nothing, so the fetcher's drain loop never ends."""
    records = batch(0, [A], SNAPPY)
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    plain = Fetcher.PartitionRecords(0, TP, MemoryRecords(records))
    with pytest.raises(kafka.errors.UnsupportedCodecError):
        plain.take(10)
    assert plain and plain.take(10) == []  # the fetcher loops on exactly this


def test_a_batch_without_its_codec_is_named_and_then_done(monkeypatch: pytest.MonkeyPatch) -> None:
    records = batch(0, [A, B]) + batch(2, [C, D, C], SNAPPY) + batch(5, [D])
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    part = GuardedRecords(0, TP, MemoryRecords(records))
    assert [r.value for r in part.take(100)] == [A, B]
    with pytest.raises(UnreadableBatch) as caught:
        part.take(100)
    exc = caught.value
    assert (exc.tp, exc.first_offset, exc.last_offset, exc.cause) == (TP, 2, 4, UNSUPPORTED_CODEC)
    assert "snappy" in exc.error
    assert not part  # drained: the fetcher moves on to the next fetch
    assert part.next_fetch_offset == 2  # the position stays at the unreadable batch


def test_a_fetch_from_inside_the_batch_names_the_rest_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = batch(10, [A, B, C, D], SNAPPY)
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    with pytest.raises(UnreadableBatch) as caught:
        read_all(records, fetch_offset=12)
    assert (caught.value.first_offset, caught.value.last_offset) == (12, 13)


@pytest.mark.parametrize("codec", [NONE, GZIP, SNAPPY])
def test_a_header_name_that_is_not_utf8_is_read_with_the_rest(codec: int) -> None:
    bad = [(RawName(b"\xff\xfename"), b"v"), ("null", None), ("empty", b"")]
    records = batch(0, [A]) + batch(1, [B], codec)
    records += build(
        2,
        [
            (1_700_000_000_001, C, []),
            (1_700_000_000_002, b"bad", bad),
            (1_700_000_000_003, D, [("h", b"1")]),
        ],
        codec,
    )
    records += batch(5, [b"e"])
    got = read_all(records)
    assert [(r.offset, r.value) for r in got] == [
        (0, A), (1, B), (2, C), (3, b"bad"), (4, D), (5, b"e")
    ]  # fmt: skip
    name = b"\xff\xfename".decode("utf-8", "surrogateescape")
    assert got[3].headers == [(name, b"v"), ("null", None), ("empty", b"")]
    assert got[3].timestamp == 1_700_000_000_002 and got[3].key == b"K"
    assert got[4].headers == [("h", b"1")]


def test_a_batch_failing_its_crc_is_unreadable() -> None:
    good = bytearray(batch(0, [b"a"]))
    bad = bytearray(batch(1, [b"bbbb", b"cccc"]))
    bad[-3] ^= 0xFF  # a value byte: the batch CRC no longer matches
    with pytest.raises(UnreadableBatch) as caught:
        read_all(bytes(good + bad))
    exc = caught.value
    assert (exc.first_offset, exc.last_offset, exc.cause) == (1, 2, CORRUPT_RECORD)
    assert "crc" in exc.error.lower()


def test_crc_errors_are_not_swallowed_by_the_name_reader() -> None:
    bad = [(RawName(b"\xff"), b"v")]
    raw = bytearray(batch(0, [b"a"], headers=bad))
    raw[-1] ^= 0xFF
    with pytest.raises(UnreadableBatch) as caught:
        read_all(bytes(raw))
    assert caught.value.cause == CORRUPT_RECORD
    assert "crc" in caught.value.error.lower()


def test_every_codec_kafka_has_is_installed() -> None:
    """The product depends on python-snappy, lz4 and zstandard: without them such a batch
    is an unreadable one (the tests above), so the worker's install must have them."""
    assert kafka.codec.has_gzip() and kafka.codec.has_snappy()
    assert kafka.codec.has_lz4() and kafka.codec.has_zstd()


def test_an_old_message_set_without_its_codec_is_named_by_its_own_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Message format v1 (before Kafka 0.11): a compressed entry carries its last offset."""
    builder = MemoryRecordsBuilder(magic=1, compression_type=SNAPPY, batch_size=1 << 20, offset=4)
    for value in (A, B, C):
        builder.append(1_700_000_000_000, b"K", value)
    builder.close()
    # A broker gives the wrapper the absolute offset of its last inner message (the
    # builder leaves 0); the message CRC does not cover the offset.
    records = (6).to_bytes(8, "big") + bytes(builder.buffer())[8:]
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    with pytest.raises(UnreadableBatch) as caught:
        read_all(records, fetch_offset=4)
    assert (caught.value.first_offset, caught.value.last_offset) == (4, 6)


def test_bytes_that_are_no_batch_at_all_are_unreadable_with_an_unknown_end() -> None:
    junk = (7).to_bytes(8, "big") + (30).to_bytes(4, "big") + bytes([0xFF] * 30)
    part = GuardedRecords(7, TP, MemoryRecords(junk))
    with pytest.raises(UnreadableBatch) as caught:
        part.take(5)
    exc = caught.value
    assert (exc.first_offset, exc.last_offset, exc.cause) == (7, None, CORRUPT_RECORD)
    assert not part  # drained: nothing spins
