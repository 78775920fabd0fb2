"""A record batch the worker's consumer cannot read stops that partition alone, says so, and
can be skipped by an operator with a trace in the DLQ.

The batch is a real one: librdkafka compresses it with snappy. The missing codec library
is simulated by making kafka-python's codec check report snappy unavailable (the test
venv has the library; the product depends on it), which is exactly what kafka-python
sees in an image without python-snappy. Without the guard (service/fetch_guard.py),
poll() raised once and then spun for ever, and every partition stopped.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kafka.codec
import pytest
from kafka import TopicPartition
from rdkafka_kit import rdkafka_produce
from worker_kit import (
    Names,
    Produced,
    in_process_worker,
    read_ticks,
    read_topic,
    reference_symbols,
    step_until,
    stored_offsets,
    stored_symbols,
    tick_records,
    wait_until,
)

from service import unreadable as unreadable_module
from service.ownership import Status

ES = read_ticks("es_ticks_2013-09-01_03.csv.gz", 50)
AAPL = read_ticks("stocks_daily_2000-2013.csv.gz", 40, symbols=["AAPL"])
FIRST, LAST = 20, 29  # ES offsets in the snappy batch


def produce_es_with_a_snappy_batch(broker: str, names: Names, partitions: int) -> Produced:
    """ES ticks into partition 0 of a topic of `partitions`: FIRST plain ones, offsets
    FIRST..LAST in one snappy batch, the rest plain."""
    produced = Produced()
    es = tick_records(ES)
    for records, codec in (
        (es[:FIRST], "none"),
        (es[FIRST : LAST + 1], "snappy"),
        (es[LAST + 1 :], "none"),
    ):
        rdkafka_produce(broker, names.ticks, records, codec, partitions, partition=0, into=produced)
    return produced


@pytest.fixture(scope="module")
def stream(broker: str) -> tuple[Names, Produced]:
    """Partition 0: 20 plain ES ticks, 10 in one snappy batch, 20 plain; partition 1: AAPL."""
    names = Names.fresh()
    produced = produce_es_with_a_snappy_batch(broker, names, partitions=2)
    rdkafka_produce(broker, names.ticks, tick_records(AAPL), "none", 2, partition=1, into=produced)
    assert [p for p, _ in produced.positions[:50]] == [0] * 50
    assert [o for _, o in produced.positions[:50]] == list(range(50))
    return names, produced


@pytest.fixture
def no_snappy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)


def prediction_ids(broker: str, names: Names) -> list[str]:
    import json

    return sorted(json.loads(r.value)["id"] for r in read_topic(broker, names.predictions))


def ids(names: Names, partition: int, offsets: range) -> list[str]:
    return [f"{names.ticks}/{partition}/{o}" for o in offsets]


def test_the_unreadable_partition_stops_alone_and_says_so(
    broker: str,
    redis_url: str,
    stream: tuple[Names, Produced],
    no_snappy: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    names, produced = stream
    monkeypatch.setattr(unreadable_module, "LOG_EVERY_SECONDS", 0.5)
    caplog.set_level(logging.INFO, logger="tickprop")
    worker = in_process_worker(broker, redis_url, names)
    tp0 = TopicPartition(names.ticks, 0)

    def stopped() -> bool:
        part = worker.partitions.get(tp0)
        return part is not None and part.status is Status.UNREADABLE

    try:
        step_until(
            worker,
            lambda: stopped() and stored_offsets(redis_url, names.group).get(1) == len(AAPL),
            60,
            "partition 0 to stop at the snappy batch while partition 1 is read to its end",
        )
        exc = worker.partitions[tp0].unreadable
        assert (exc.first_offset, exc.last_offset, exc.cause) == (FIRST, LAST, "unsupported_codec")
        assert "snappy" in exc.error
        assert not worker.ready  # /readyz says 503
        gauge = worker.metrics.registry.get_sample_value(
            "tickprop_unreadable_partition", {"partition": "0"}
        )
        assert gauge == 1
        # the ticks before the batch are processed and checkpointed
        assert stored_offsets(redis_url, names.group) == {0: FIRST, 1: len(AAPL)}
        # and the partition is named, with its offset, again and again
        step_until(
            worker,
            lambda: len(unreadable_lines(caplog)) >= 2,
            10,
            "the unreadable partition to be logged twice",
        )
        for line in unreadable_lines(caplog):
            assert (line.partition, line.offset, line.last_offset) == (0, FIRST, LAST)
    finally:
        assert worker.shutdown() == 0
        worker.publisher.close(timeout=10)
    assert prediction_ids(broker, names) == sorted(
        ids(names, 0, range(FIRST)) + ids(names, 1, range(len(AAPL)))
    )
    assert read_topic(broker, names.dlq) == []


def unreadable_lines(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "event", None) == "partition_unreadable"]


def test_an_operator_skips_the_batch_and_the_dlq_keeps_a_marker(
    broker: str, redis_url: str, stream: tuple[Names, Produced], no_snappy: None
) -> None:
    """Runs after the test above, on its group: the next worker starts where it stopped."""
    names, produced = stream
    worker = in_process_worker(broker, redis_url, names, skip_unreadable_batches=True)
    try:
        step_until(
            worker,
            lambda: stored_offsets(redis_url, names.group) == {0: len(ES), 1: len(AAPL)},
            60,
            "every partition checkpointed at its end",
        )
        assert worker.ready
        skipped = worker.metrics.registry.get_sample_value("tickprop_skipped_records_total")
        assert skipped == LAST - FIRST + 1
    finally:
        assert worker.shutdown() == 0
        worker.publisher.close(timeout=10)
    (marker,) = read_topic(broker, names.dlq)
    headers = dict(marker.headers)
    assert headers["tickprop.reason"] == b"unreadable_batch"
    assert (headers["tickprop.source.partition"], headers["tickprop.source.offset"]) == (
        b"0",
        b"20",
    )
    assert headers["tickprop.source.last_offset"] == b"29"
    detail = headers["tickprop.detail"].decode()
    assert "offsets 20..29" in detail and "snappy" in detail
    assert marker.key is None and marker.value == b""
    assert prediction_ids(broker, names) == sorted(
        ids(names, 0, range(FIRST)) + ids(names, 0, range(LAST + 1, len(ES)))
        + ids(names, 1, range(len(AAPL)))
    )  # fmt: skip
    # the state is that of the stream without the skipped ticks
    kept = Produced(
        records=[r for i, r in enumerate(produced.records) if not FIRST <= i <= LAST],
        positions=[p for i, p in enumerate(produced.positions) if not FIRST <= i <= LAST],
    )
    assert stored_symbols(redis_url, names.group) == reference_symbols(kept)


def test_a_second_worker_neither_freezes_nor_unsticks_the_partition(
    broker: str, redis_url: str, no_snappy: None
) -> None:
    """The issue's group stall: the stuck partition moved to the survivor, which froze too.
    Here a worker joins while another holds an unreadable partition; after the rebalance
    both go on, every readable partition is read to its end, and the unreadable one is
    stopped again wherever it landed (its pause does not survive a rebalance unseen)."""
    names = Names.fresh()
    produced = produce_es_with_a_snappy_batch(broker, names, partitions=4)
    for partition in (1, 2, 3):
        rdkafka_produce(
            broker, names.ticks, tick_records(AAPL), "none", 4, partition=partition, into=produced
        )
    ends = {0: FIRST, 1: len(AAPL), 2: len(AAPL), 3: len(AAPL)}
    tp0 = TopicPartition(names.ticks, 0)
    workers = [in_process_worker(broker, redis_url, names)]
    done = threading.Event()

    def loop(worker: Any) -> None:  # each worker steps on its own, as in its own process
        while not done.is_set():
            worker.step()

    def statuses() -> list[dict[int, Status]]:
        out = []
        for worker in workers:
            with worker._lock:
                out.append({tp.partition: p.status for tp, p in worker.partitions.items()})
        return out

    threads = [threading.Thread(target=loop, args=(workers[0],), daemon=True)]
    threads[0].start()
    try:
        wait_until(lambda: statuses()[0].get(0) is Status.UNREADABLE, 60, "partition 0 stopped")
        workers.append(in_process_worker(broker, redis_url, names))
        threads.append(threading.Thread(target=loop, args=(workers[1],), daemon=True))
        threads[1].start()

        def settled() -> bool:
            held = statuses()
            stuck = [s[0] for s in held if 0 in s]
            return (
                all(held)  # the rebalance gave both a share
                and stuck == [Status.UNREADABLE]
                and stored_offsets(redis_url, names.group) == ends
            )

        wait_until(settled, 60, "both workers reading, partition 0 stopped again")
        owner, other = sorted(workers, key=lambda w: tp0 not in w.partitions)
        assert other.ready and not owner.ready
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
        for worker in workers:
            assert worker.shutdown() == 0
            worker.publisher.close(timeout=10)
