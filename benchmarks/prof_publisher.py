"""The publisher process's CPU per record, by part, against the real embedded broker.

Run: .venv/bin/python benchmarks/prof_publisher.py [--records N] [--rounds R] [--profile]

What the worker's publisher child (service/publisher.py, `_Child`) does with the worker's
predictions, in this process: the frames the worker ships (64 packed predictions with the
default horizons 1,5,20, keyed by symbol, partition and tag chosen as the worker does)
go through `_Child.send_all` into a KafkaProducer with the worker's options
(service.main.PRODUCER_OPTIONS), flushed every 1,000 records as checkpoints do.

Per record it prints the CPU time (µs) of the thread calling send_all (frame parsing,
the JSON, KafkaProducer.send) and of the producer's sender thread (batches, requests,
the futures' callbacks), and the same calls with the producer's send replaced by a stub:
what parsing and the JSON alone cost. `--profile` then runs both threads under cProfile
and prints the functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from kafka.producer import sender as kafka_sender

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from worker_kit import mixed_ticks  # noqa: E402

from model.learner import Forecast  # noqa: E402
from service import codec  # noqa: E402
from service.main import PRODUCER_OPTIONS  # noqa: E402
from service.publisher import ProcessPublisher, _Child  # noqa: E402
from service.tools.embedded import EmbeddedBroker, create_topics  # noqa: E402

PARTITIONS = 6
FRAME_RECORDS = 64  # service.worker.SHIP_EVERY_TICKS
FLUSH_EVERY = 1000  # records between flushes (the checkpoints' default cadence)


class _Framer:
    """Builds the frames `ProcessPublisher.send` ships, without a child process."""

    def __init__(self) -> None:
        self._topics: dict[str, bytes] = {}
        self._buffer = bytearray()
        self._unconfirmed: set[int] = set()
        self.frames: list[bytes] = []

    def ship(self) -> None:
        self.frames.append(bytes(self._buffer))
        self._buffer = bytearray()

    send = ProcessPublisher.send


def frames(topic: str, n: int) -> list[bytes]:
    """The worker's frames for `n` predictions of the mixed real stream."""
    rng = random.Random(1)
    framer = _Framer()
    offsets = [0] * PARTITIONS
    for i, tick in enumerate(mixed_ticks(n_stocks=min(n // 2, 12_000), n_es=n)[:n]):
        key = tick.symbol.encode()
        part = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        forecasts = [
            Forecast(h, p, "up" if p >= 0.5 else "down", i // 7)
            for h, p in ((1, rng.random()), (5, rng.random()), (20, rng.random()))
        ]
        packed = codec.pack_prediction(
            f"ticks-0123456789/{part}/{offsets[part]}", tick.symbol, tick.ts, forecasts, True
        )
        offsets[part] += 1
        framer.send(topic, key, packed, None, part, tag=part, packed_prediction=True)
        if (i + 1) % FRAME_RECORDS == 0:
            framer.ship()
    if framer._buffer:
        framer.ship()
    return framer.frames


class _StubFuture:
    def add_errback(self, *args: Any) -> _StubFuture:
        return self

    def add_callback(self, *args: Any) -> _StubFuture:
        return self


_STUB = _StubFuture()


def _stub_send(*args: Any, **kwargs: Any) -> _StubFuture:
    return _STUB


class Requests:
    """Counts the producer's produce responses and the batches they carried."""

    requests = 0
    batches = 0

    @classmethod
    def count(cls) -> None:
        handle = kafka_sender.Sender._handle_produce_response

        def counted(self: Any, node_id: Any, send_time: Any, batches: Any, response: Any) -> Any:
            cls.requests += 1
            cls.batches += len(batches)
            return handle(self, node_id, send_time, batches, response)

        kafka_sender.Sender._handle_produce_response = counted  # type: ignore[method-assign]


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def run(child: _Child, data: list[bytes], n: int, rate: float) -> tuple[float, float]:
    """(µs per record in this thread, µs per record in the sender thread), the frames
    handed over at `rate` records/s (0: as fast as they go)."""
    sender = child.producer._sender
    own, theirs = time.thread_time(), thread_cpu(sender)
    sent = 0
    start = time.perf_counter()
    for frame in data:
        if rate:
            wait = start + sent / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        child.send_all(frame)
        sent += FRAME_RECORDS
        if sent % FLUSH_EVERY < FRAME_RECORDS:
            child.producer.flush(timeout=30)
    child.producer.flush(timeout=30)
    return (time.thread_time() - own) / n * 1e6, (thread_cpu(sender) - theirs) / n * 1e6


def stub_run(child: _Child, data: list[bytes], n: int) -> float:
    """µs per record of send_all with the producer's send a stub."""
    producer = child.producer
    child.producer = type("Stub", (), {"send": staticmethod(_stub_send)})()
    try:
        own = time.thread_time()
        for frame in data:
            child.send_all(frame)
        return (time.thread_time() - own) / n * 1e6
    finally:
        child.producer = producer


def profile(child: _Child, data: list[bytes], n: int, rate: float) -> None:
    sender_profile = cProfile.Profile(time.thread_time)
    original = kafka_sender.Sender.run_once

    def profiled_run_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        sender_profile.enable()
        try:
            return original(self, *args, **kwargs)
        finally:
            sender_profile.disable()

    kafka_sender.Sender.run_once = profiled_run_once  # type: ignore[method-assign]
    try:
        main_profile = cProfile.Profile(time.thread_time)
        main_profile.enable()
        run(child, data, n, rate)
        main_profile.disable()
    finally:
        kafka_sender.Sender.run_once = original  # type: ignore[method-assign]
    for name, prof in (("send_all's thread", main_profile), ("the sender thread", sender_profile)):
        print(f"\n--- {name}: most own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--rate", type=float, default=20_000, help="records/s handed over (0: no pacing)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a producer option over PRODUCER_OPTIONS (VALUE read as JSON), e.g. batch_size=65536",
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    n = args.records
    topic = f"predictions-{os.urandom(4).hex()}"
    data = frames(topic, n)
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, [topic], partitions=PARTITIONS)
        child = _Child(-1, -1)
        options = dict(PRODUCER_OPTIONS)
        for option in args.option:
            name, value = option.split("=", 1)
            options[name] = json.loads(value)
        child.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, **options)
        try:
            child.producer.partitions_for(topic)
            run(child, data[:20], 20 * FRAME_RECORDS, args.rate)  # warm: connections, first batches
            stubs, mains, senders = [], [], []
            requests = Requests()
            Requests.count()
            for _ in range(args.rounds):
                stubs.append(stub_run(child, data, n))
                main_us, sender_us = run(child, data, n, args.rate)
                mains.append(main_us)
                senders.append(sender_us)
            assert not child.failures, child.failures
            print(f"records                    {n:,} predictions (3 forecasts), "
                  f"{args.rounds} rounds, {args.rate:,.0f} records/s")  # fmt: skip
            print(f"send_all, send stubbed     {fmt(stubs)} us/record  (parsing + the JSON)")
            print(f"send_all                   {fmt(mains)} us/record")
            print(f"sender thread              {fmt(senders)} us/record")
            total = [m + s for m, s in zip(mains, senders, strict=True)]
            print(f"both threads               {fmt(total)} us/record")
            records = args.rounds * n
            print(f"produce requests           {records / requests.requests:.0f} records each, "
                  f"{records / requests.batches:.0f} per batch")  # fmt: skip
            if args.profile:
                profile(child, data, n, args.rate)
        finally:
            child.producer.close(timeout=10)


def fmt(values: list[float]) -> str:
    return f"median {float(np.median(values)):5.1f}  ({', '.join(f'{v:.1f}' for v in values)})"


if __name__ == "__main__":
    main()
