"""Record batches kafka-python cannot read stall their own partition, never the consumer.

kafka-python 3.0.12 unpacks a fetched partition's batches lazily, in a generator. When
that generator fails on a batch — a codec whose library is missing (`UnsupportedCodecError`),
a bad CRC or record structure, a header name that is not UTF-8 (`CorruptRecordError`) —
poll() raises once, and every later poll() spins for ever: the fetcher keeps the dead
generator as the partition's "records in line", takes nothing from it, and loops. Every
partition stops, and so does a SIGTERM handler waiting for the loop.

`guard(consumer)` gives the consumer's fetcher our subclass of its per-fetch record reader
(`Fetcher.PartitionRecords`, looked up on the fetcher instance, so only this consumer
changes). It

- re-reads a batch kafka-python refused because of a header name that is not UTF-8 (names
  are then `str` with the bad bytes kept as surrogates, `"utf-8", "surrogateescape"`), so
  such a record reaches the worker like any other, to be dead-lettered;
- turns any other failure into `UnreadableBatch`, naming the partition and the offsets it
  cannot read (the rest of the batch), and drops the dead generator, so the next poll()
  goes on with the other partitions.

The offsets stay where they were: until someone seeks past the batch, fetching the
partition fails the same way again.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from typing import Any

from kafka import TopicPartition
from kafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import decode_varint

log = logging.getLogger("tickprop.fetch_guard")

UNSUPPORTED_CODEC = "unsupported_codec"
CORRUPT_RECORD = "corrupt_record"

_BATCH_START = struct.Struct(">qi")  # base offset, batch length (bytes after this field)
_DECODERS = {
    DefaultRecordBatch.CODEC_GZIP: gzip_decode,
    DefaultRecordBatch.CODEC_SNAPPY: snappy_decode,
    DefaultRecordBatch.CODEC_LZ4: lz4_decode,
    DefaultRecordBatch.CODEC_ZSTD: zstd_decode,
}


class UnreadableBatch(KafkaError):
    """Records `first_offset`..`last_offset` of `tp` cannot be read; reading again won't help.

    `last_offset` is None when the batch's extent is unknown (its header is unreadable).
    `cause` is UNSUPPORTED_CODEC or CORRUPT_RECORD.
    """

    retriable = False

    def __init__(
        self, tp: TopicPartition, first_offset: int, last_offset: int | None, cause: str, error: str
    ) -> None:
        end = "?" if last_offset is None else str(last_offset)
        super().__init__(f"{tp.topic}[{tp.partition}] offsets {first_offset}..{end}: {error}")
        self.tp = tp
        self.first_offset = first_offset
        self.last_offset = last_offset
        self.cause = cause
        self.error = error


def guard(consumer: Any) -> bool:
    """Make `consumer` (a kafka-python KafkaConsumer) raise UnreadableBatch instead of
    hanging; False (and a warning) when its fetcher is not the one this was written for."""
    fetcher = getattr(consumer, "_fetcher", None)
    if not isinstance(fetcher, Fetcher) or not isinstance(
        getattr(fetcher, "PartitionRecords", None), type
    ):
        log.warning(
            "cannot guard this consumer against unreadable batches",
            extra={"event": "fetch_guard_missing", "consumer": type(consumer).__name__},
        )
        return False
    fetcher.PartitionRecords = GuardedRecords  # this instance only
    return True


class GuardedRecords(Fetcher.PartitionRecords):
    """Fetcher.PartitionRecords that re-reads batches with non-UTF-8 header names and
    raises UnreadableBatch (then drains itself) for batches nobody can read."""

    def __init__(self, fetch_offset: int, tp: TopicPartition, records: Any, **kwargs: Any) -> None:
        # The fetch's raw bytes (MemoryRecords keeps them whole while it iterates): read
        # again only when a batch fails.
        self._raw = getattr(records, "_buffer", b"")
        super().__init__(fetch_offset, tp, records, **kwargs)

    def take(self, n: int | None = None) -> list[Any]:
        try:
            return list(super().take(n))
        except Exception:  # the record generator died (UnreadableBatch, as built below)
            self.drain()  # else the fetcher keeps the dead generator in line and spins
            raise

    def _unpack_records(
        self, tp: TopicPartition, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[Any]:
        # kafka-python's generator walks `records` (a cursor over the fetch's batches) and
        # dies on the first bad batch; a new one goes on from the batch after it.
        while True:
            try:
                yield from super()._unpack_records(
                    tp, records, key_deserializer, value_deserializer
                )
                return
            except Exception as exc:  # whatever the bytes did: name the batch
                error = repr(exc)
                codec_missing = isinstance(exc, UnsupportedCodecError)
                cause = UNSUPPORTED_CODEC if codec_missing else CORRUPT_RECORD
            first: int = max(self.fetch_offset, int(getattr(self, "next_fetch_offset", 0)))
            found = _batch_at(self._raw, first)
            if found is None:
                raise UnreadableBatch(tp, first, None, cause, error)
            raw, last, magic = found
            if magic != 2 or cause == UNSUPPORTED_CODEC:
                raise UnreadableBatch(tp, first, last, cause, error)
            try:
                batch = DefaultRecordBatch(raw)
                recovered = _read_batch(batch, raw)
            except Exception as exc:  # truly corrupt, not just a header name
                raise UnreadableBatch(tp, first, last, cause, repr(exc)) from None
            for offset, timestamp, key, value, headers, size in recovered:
                if offset < first:
                    continue
                self.records_read += 1
                self.bytes_read += size
                self.next_fetch_offset = offset + 1
                yield ConsumerRecord(
                    tp.topic, tp.partition, batch.leader_epoch, offset, timestamp,
                    batch.timestamp_type,
                    self._deserialize(key_deserializer, tp.topic, headers, key),
                    self._deserialize(value_deserializer, tp.topic, headers, value),
                    headers, None,
                    -1 if key is None else len(key), -1 if value is None else len(value),
                    sum(len(name.encode("utf-8", "surrogateescape")) + len(v or b"")
                        for name, v in headers) if headers else -1,
                )  # fmt: skip
            self.next_fetch_offset = batch.next_offset


def _batch_at(raw: bytes | bytearray | memoryview, offset: int) -> tuple[bytes, int, int] | None:
    """(bytes, last offset, magic) of the first whole batch in a fetch response that ends
    at or after `offset`; None when there is none or the bytes make no sense."""
    pos, end = 0, len(raw)
    while pos + _BATCH_START.size + 5 <= end:
        base, length = _BATCH_START.unpack_from(raw, pos)
        stop = pos + _BATCH_START.size + length
        if length <= 0 or stop > end:
            return None
        magic = raw[pos + 16]  # after base offset (8), length (4), epoch or crc (4)
        if magic >= 2:
            if stop < pos + DefaultRecordBatch.HEADER_STRUCT.size:
                return None
            # The last offset delta follows magic (1), crc (4) and attributes (2).
            (last_delta,) = struct.unpack_from(">i", raw, pos + 23)
            last = base + last_delta
        else:
            last = base  # message sets v0/v1: an entry's offset is its last (compressed: inner)
        if last >= offset:
            return bytes(raw[pos:stop]), last, magic
        pos = stop
    return None


def _read_batch(
    batch: DefaultRecordBatch, raw: bytes
) -> list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]], int]]:
    """Every record of a v2 batch as (offset, timestamp, key, value, headers, size), header
    names decoded with surrogateescape. KafkaError or ValueError if the batch is corrupt."""
    if not batch.validate_crc():
        raise CorruptRecordError(f"batch at offset {batch.base_offset} failed its CRC check")
    data: bytes = raw[DefaultRecordBatch.HEADER_STRUCT.size :]
    decode = _DECODERS.get(batch.compression_type)
    if decode is not None:
        data = decode(data)
    elif batch.compression_type != DefaultRecordBatch.CODEC_NONE:
        raise UnsupportedCodecError(f"unknown compression type {batch.compression_type}")
    log_append = batch.timestamp_type == DefaultRecordBatch.LOG_APPEND_TIME
    out = []
    pos = 0
    for _ in range(batch.records_count):
        length, pos = decode_varint(data, pos)
        start = pos
        _, pos = decode_varint(data, pos)  # record attributes: unused
        ts_delta, pos = decode_varint(data, pos)
        offset_delta, pos = decode_varint(data, pos)
        key, pos = _bytes_field(data, pos)
        value, pos = _bytes_field(data, pos)
        count, pos = decode_varint(data, pos)
        if count < 0:
            raise CorruptRecordError(f"negative header count {count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name, pos = _bytes_field(data, pos)
            if name is None:
                raise CorruptRecordError("null header name")
            header_value, pos = _bytes_field(data, pos)
            headers.append((name.decode("utf-8", "surrogateescape"), header_value))
        if pos - start != length:
            raise CorruptRecordError(f"record of {length} bytes read as {pos - start}")
        timestamp = batch.max_timestamp if log_append else batch.first_timestamp + ts_delta
        out.append((batch.base_offset + offset_delta, timestamp, key, value, headers, length))
    if pos != len(data):
        raise CorruptRecordError(f"{len(data) - pos} bytes after the last record")
    return out


def _bytes_field(data: bytes, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(data, pos)
    if size < 0:
        return None, pos
    if pos + size > len(data):
        raise CorruptRecordError("field runs past the end of its record")
    return data[pos : pos + size], pos + size
