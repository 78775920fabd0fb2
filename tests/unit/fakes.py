"""Fakes for unit tests of the worker's parts: a clock that moves only when told, a
consumer and a publisher that record what they were asked. Their behaviour against the
real broker is tested in tests/integration/; the store's fake is service.memory_store,
which passes the same suite as the Redis store."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from service.codec import encode_packed_prediction
from service.protocols import Headers


class FakeClock:
    """Time that only `advance` (and `sleep`) moves."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float, /) -> None:
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConsumer:
    """Records seeks and commits; `assigned` is what the group says we own."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[Mapping[TopicPartition, Any]] = []
        self.assigned: set[TopicPartition] = set()
        self.paused_partitions: set[TopicPartition] = set()

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        pass

    def poll(self, timeout_ms: int = 0) -> Mapping[TopicPartition, Sequence[Any]]:
        return {}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))

    def assignment(self) -> Collection[TopicPartition]:
        return self.assigned

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_partitions.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_partitions.difference_update(partitions)

    def paused(self) -> Collection[TopicPartition]:
        return self.paused_partitions

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    def commit(self, offsets: Any = None) -> Any:
        self.commits.append(offsets)

    def commit_async(self, offsets: Any = None) -> Any:
        self.commits.append(offsets)

    def metrics(self) -> Any:
        return {}

    def close(self) -> None:
        pass


class FakePublisher:
    """Accepts every record; `fail_flush` makes flush time out, `failures` are reported
    (per input partition tag) by the next `take_failures`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.fail_flush = False
        self.failures: dict[int, str] = {}
        self.offsets: dict[int, int] = {}
        self.flushes = 0

    # fmt: off
    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = None,
             partition: int | None = None, tag: int = 0, want_offset: bool = False,
             packed_prediction: bool = False) -> None:
        # fmt: on
        if packed_prediction and value is not None:  # what the publisher process sends
            value = encode_packed_prediction(value)
        self.sent.append((topic, key, value, tag))

    def ship(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        self.flushes += 1
        if self.fail_flush:
            raise KafkaTimeoutError("flush timed out (fake)")

    def take_failures(self) -> dict[int, str]:
        failures, self.failures = self.failures, {}
        return failures

    def take_offsets(self) -> dict[int, int]:
        offsets, self.offsets = self.offsets, {}
        return offsets

    def partitions_for(self, topic: str) -> set[int] | None:
        return {0}
