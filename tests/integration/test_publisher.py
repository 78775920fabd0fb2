"""The publisher process against the real broker: delivery, reports, a killed child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
from harness import check_predictions
from kafka.errors import KafkaError
from worker_kit import (
    Names,
    in_process_worker,
    mixed_ticks,
    produce,
    read_topic,
    reference_symbols,
    step_until,
    step_until_checkpointed,
    stored_symbols,
    tick_records,
    wait_until,
)

from model.learner import Forecast
from service.codec import encode_prediction, pack_prediction
from service.main import PRODUCER_OPTIONS
from service.publisher import ProcessPublisher


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def publisher(broker: str):
    p = ProcessPublisher({"bootstrap_servers": broker}, PRODUCER_OPTIONS)
    yield p
    p.close()


def test_records_arrive_in_order_with_keys_values_and_headers(broker, publisher) -> None:
    topic = Names.fresh().predictions
    produce(broker, topic, [], partitions=3)
    sent = []
    for i in range(3000):
        partition = i % 3
        key = None if i % 7 == 0 else f"k{i % 11}".encode()
        value = None if i % 13 == 0 and key is not None else os.urandom(i % 300)
        headers = [("n", str(i).encode()), ("é", b"")] if i % 5 == 0 else None
        publisher.send(topic, key, value, headers, partition, tag=partition)
        sent.append((partition, key, value, headers or []))
    publisher.flush(timeout=10)
    assert publisher.take_failures() == {}

    got = [(r.partition, r.key, r.value, list(r.headers)) for r in read_topic(broker, topic)]
    by_partition = defaultdict(list)
    for record in got:
        by_partition[record[0]].append(record)
    expected = defaultdict(list)
    for record in sent:
        expected[record[0]].append(record)
    assert by_partition == expected  # every record once, in send order per partition


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="a Linux scheduling policy")
def test_the_child_runs_as_a_batch_process_that_does_not_preempt_the_worker(publisher) -> None:
    publisher.flush(timeout=10)  # answered: the child is past its start-up
    assert publisher.pid is not None
    assert os.sched_getscheduler(publisher.pid) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the worker keeps its own policy


def test_a_record_the_producer_refuses_is_a_failure_of_its_tag_only(broker, publisher) -> None:
    topic = Names.fresh().predictions
    produce(broker, topic, [], partitions=1)
    publisher.send(topic, b"k", b"before", [("null", None)], 0, tag=1)
    publisher.send(topic, None, None, None, 0, tag=2)  # kafka-python: key or value needed
    not_utf8 = b"\xffname".decode("utf-8", "surrogateescape")
    publisher.send(topic, b"k", b"raw name", [(not_utf8, b"v")], 0, tag=4)  # it refuses too
    # A packed prediction is sent as its JSON; bytes that are none fail their tag alone.
    forecasts = [Forecast(1, 0.25, "down", 7), Forecast(5, 0.75, "up", 9)]
    packed = pack_prediction("t/0/12", "k", 1_700_000_000_000, forecasts, True)
    publisher.send(topic, b"k", packed, None, 0, tag=5, packed_prediction=True)
    publisher.send(topic, b"k", packed[:20], None, 0, tag=6, packed_prediction=True)
    publisher.send(topic, b"k", b"after", None, 0, tag=3)
    publisher.flush(timeout=10)
    failures = publisher.take_failures()
    assert sorted(failures) == [2, 4, 6] and "ValueError" in failures[2]
    assert "UnicodeEncodeError" in failures[4] and "not a packed prediction" in failures[6]
    got = read_topic(broker, topic)
    prediction = encode_prediction("t/0/12", "k", 1_700_000_000_000, forecasts, True)
    assert [r.value for r in got] == [b"before", prediction, b"after"]
    assert got[0].headers == [("null", b"")]  # the pipe carried the null; sent empty


def test_offsets_of_want_offset_records_are_reported_per_tag(broker, publisher) -> None:
    topic = Names.fresh().dlq
    produce(broker, topic, [], partitions=2)
    for i in range(40):  # even i: tag 5, partition 0; odd i: tag 6, partition 1
        publisher.send(topic, None, b"x", None, i % 2, tag=5 + i % 2, want_offset=i % 4 < 2)
    publisher.flush(timeout=10)
    # record i lands at offset i // 2; the last reported ones are i = 36 and i = 37
    assert publisher.take_offsets() == {5: 18, 6: 18}
    assert publisher.take_offsets() == {}  # taken once


def test_a_killed_child_fails_exactly_the_unconfirmed_records_and_is_replaced(
    broker, publisher
) -> None:
    topic = Names.fresh().predictions
    produce(broker, topic, [], partitions=1)
    publisher.send(topic, b"a", b"confirmed", None, 0, tag=0)
    publisher.flush(timeout=10)
    first = publisher.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # holds the records it is handed from now on
    publisher.send(topic, b"b", b"lost-1", None, 0, tag=1)
    publisher.send(topic, b"c", b"lost-2", None, 0, tag=2)
    publisher.ship()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not alive(first), 10, "the child to die")

    with pytest.raises(KafkaError):
        publisher.flush(timeout=5)
    assert set(publisher.take_failures()) == {1, 2}  # not 0: its flush had succeeded

    deadline = time.monotonic() + 10  # the restart waits out a short back-off
    while True:
        try:
            publisher.send(topic, b"d", b"after", None, 0, tag=3)
            publisher.flush(timeout=10)
            break
        except KafkaError:
            assert time.monotonic() < deadline, "the publisher never came back"
            publisher.take_failures()
            time.sleep(0.2)
    assert publisher.pid not in (None, first)
    assert publisher.take_failures() == {}
    values = [r.value for r in read_topic(broker, topic)]
    assert values[0] == b"confirmed" and values[-1] == b"after"
    assert b"lost-1" not in values and b"lost-2" not in values


def test_the_child_exits_at_once_when_its_parent_is_killed(broker) -> None:
    """A SIGKILLed worker leaves no publisher behind to send outputs late."""
    topic = Names.fresh().predictions
    produce(broker, topic, [], partitions=1)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from service.main import PRODUCER_OPTIONS
        from service.publisher import ProcessPublisher
        p = ProcessPublisher({{"bootstrap_servers": {broker!r}}}, PRODUCER_OPTIONS)
        p.send({topic!r}, None, b"x", None, 0)
        p.ship()
        print(p.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    parent = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child = int(parent.stdout.strip())
    wait_until(lambda: not alive(child), 5, "the orphaned publisher to exit")


def test_worker_output_and_state_survive_a_hung_publisher(broker: str, redis_url: str) -> None:
    """SIGSTOP the publisher mid-stream: the worker's next flush gets no answer, the child
    is killed and replaced, the outputs it held are re-made from the last checkpoint;
    every valid tick has its prediction and the state equals the backtest."""
    names = Names.fresh()
    produced = produce(broker, names.ticks, tick_records(mixed_ticks(n_stocks=1500, n_es=1500)))
    worker = in_process_worker(
        broker, redis_url, names, checkpoint_every_ticks=200, checkpoint_every_seconds=3600
    )
    try:
        total = sum(produced.end_offsets().values())
        processed = lambda: sum(p.next_offset or 0 for p in worker.partitions.values())  # noqa: E731
        step_until(worker, lambda: processed() > total // 3, 60, "a third processed")
        victim = worker.publisher.pid
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)  # takes the next records into its pipe, sends nothing
        step_until_checkpointed(worker, redis_url, names.group, produced, 90, "all checkpointed")
        assert not alive(victim), "the hung publisher was killed"
        assert worker.publisher.pid not in (None, victim)
        assert stored_symbols(redis_url, names.group) == reference_symbols(produced)
    finally:
        worker.shutdown()
        worker.publisher.close()
    check_predictions(broker, names.predictions, names.ticks, produced)


HUGE = 1_040_000  # under Kafka's 1 MiB record limit, over it with the dead-letter headers


@pytest.mark.parametrize(
    ("key", "value", "headers", "reason", "kept"),
    [
        # kafka-python refuses to publish a record with neither key nor value, which other
        # clients may write: its dead letter carries an empty value (the reason says null).
        (None, None, [], "not_json", b""),
        # Kafka would refuse this one with our headers added: the value is not kept, and a
        # header name longer than 64 KiB travels to the publisher intact.
        (b"ES", b"x" * HUGE, [("h" * 70_000, b"v")], "too_large", b""),
    ],
    ids=["neither-key-nor-value", "too-large-to-dead-letter"],
)
def test_a_record_kafka_would_refuse_as_a_dead_letter_is_dead_lettered_anyway(
    broker: str, redis_url: str, key, value, headers, reason, kept
) -> None:
    """Not a publish that fails and rewinds the partition forever."""
    names = Names.fresh()
    produced = produce(
        broker, names.ticks, tick_records(mixed_ticks(n_stocks=50, n_es=0)), partitions=1
    )
    worker = in_process_worker(broker, redis_url, names)
    try:
        step_until_checkpointed(worker, redis_url, names.group, produced, 30, "the ticks")
        (part,) = worker.partitions.values()
        offset = part.next_offset  # as if the next record on the partition were this one
        record = SimpleNamespace(
            topic=names.ticks, partition=0, offset=offset, key=key, value=value, headers=headers
        )
        with worker._lock:  # what step() does with a polled batch
            worker._process_records(part.tp, [record], time.perf_counter())
            worker._ship(time.perf_counter())
        assert worker.ownership.checkpoint(part) and not part.send_failed
    finally:
        worker.shutdown()
        worker.publisher.close()
    (letter,) = read_topic(broker, names.dlq)
    got = dict(letter.headers)
    assert (letter.key, letter.value) == (key, kept)
    assert got["tickprop.reason"] == reason.encode()
    assert got["tickprop.source.offset"] == str(offset).encode()
    for name, header_value in headers:
        assert got[name] == header_value
    if value is not None and kept != value:
        assert f"value of {len(value)} bytes not kept".encode() in got["tickprop.detail"]
