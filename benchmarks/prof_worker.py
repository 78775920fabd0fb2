"""The worker's own work per record, without a broker: µs per record, 1 horizon against 3.

Run: .venv/bin/python benchmarks/prof_worker.py [--ticks N] [--rounds R] [--profile]

The real `Worker` (decode, learn, score, gauges, metrics, prediction encoding, the hand-off
to its publisher, checkpoints to an in-memory store every 1,000 ticks) over the mixed
stream of benchmarks/bench_worker.py (E-mini trades and daily stock closes, keyed by
symbol over 6 partitions as kafka-python's partitioner places them), fed by a fake
consumer that returns poll batches of TICKPROP_POLL_MAX_RECORDS records, into a fake
publisher that keeps nothing. What bench_worker.py adds to this is kafka-python's consumer
in this process and the producer in the publisher process.

Rounds alternate `TICKPROP_HORIZONS=1` and the default horizons and print the medians of
the CPU time per record (CPU time: other jobs on a shared machine do not count), and of
the same run with the learner's results replayed (recorded in a first run, handed back
in order without learning): the worker's own part, the rest being the learner's.
`--profile` then runs the default horizons once under cProfile and prints the functions
with the most own time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import pstats
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from fakes import FakeConsumer  # noqa: E402
from worker_kit import mixed_ticks  # noqa: E402

from model.learner import OnlineLearner  # noqa: E402
from service.memory_store import MemoryStore  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker import Worker  # noqa: E402

TOPIC = "ticks"
PARTITIONS = 6


class StreamConsumer(FakeConsumer):
    """Serves prepared records: each poll, up to `max_records` of one partition, in turn."""

    def __init__(self, records: dict[TopicPartition, list[Any]], max_records: int) -> None:
        super().__init__()
        self.assigned = set(records)
        self.queues = {tp: list(rs) for tp, rs in records.items()}
        self.max_records = max_records
        self.listener: Any = None

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self.listener = listener

    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(partition, offset)
        self.queues[partition] = [r for r in self.queues[partition] if r.offset >= offset]

    def poll(self, timeout_ms: int = 0) -> Mapping[TopicPartition, Sequence[Any]]:
        for tp, queue in self.queues.items():
            if queue:
                batch, self.queues[tp] = queue[: self.max_records], queue[self.max_records :]
                return {tp: batch}
        return {}


class NullPublisher:
    """Takes every record and keeps none of them (the pipe to the child is not timed)."""

    sent = 0

    def send(self, topic: str, key: Any, value: Any, *args: Any, **kwargs: Any) -> None:
        self.sent += 1

    def ship(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        pass

    def take_failures(self) -> dict[int, str]:
        return {}

    def take_offsets(self) -> dict[int, int]:
        return {}

    def partitions_for(self, topic: str) -> set[int] | None:
        return set(range(PARTITIONS))


def stream(n: int) -> dict[TopicPartition, list[Any]]:
    """The benchmark's n ticks as consumer records, per partition as the producer puts them."""
    ticks = mixed_ticks(n_stocks=min(n // 2, 12_000), n_es=n)[:n]
    out: dict[TopicPartition, list[Any]] = {TopicPartition(TOPIC, p): [] for p in range(PARTITIONS)}
    for t in ticks:
        key, value = t.symbol.encode(), t.value()
        tp = TopicPartition(TOPIC, (murmur2(key) & 0x7FFFFFFF) % PARTITIONS)
        records = out[tp]
        records.append(
            ConsumerRecord(
                TOPIC,
                tp.partition,
                -1,
                len(records),
                t.ts,
                0,
                key,
                value,
                [],
                None,
                len(key),
                len(value),
                -1,
            )  # fmt: skip
        )
    return out


class Replay:
    """Inside `with`, OnlineLearner.on_tick records its results (`record=True`) or, without
    learning, hands back the recorded ones in the same order: the worker around it then
    does exactly the same work (the same scores, forecasts and encodings) minus the learner.
    """

    def __init__(self, record: bool, results: list[Any] | None = None) -> None:
        self.record = record
        self.results: list[Any] = results if results is not None else []
        self.original = OnlineLearner.on_tick

    def __enter__(self) -> Replay:
        original, results = self.original, self.results
        if self.record:

            def on_tick(learner: OnlineLearner, ts_ms: int, price: float) -> Any:
                result = original(learner, ts_ms, price)
                results.append(result)
                return result

        else:
            replay = iter(results)

            def on_tick(learner: OnlineLearner, ts_ms: int, price: float) -> Any:
                learner.last_ts = ts_ms  # what is_late reads
                return next(replay)

        OnlineLearner.on_tick = on_tick  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        OnlineLearner.on_tick = self.original  # type: ignore[method-assign]


def run(records: dict[TopicPartition, list[Any]], horizons: str, replay: Replay | None) -> float:
    """CPU µs per record of the worker over the stream (inside `replay` when given).

    CPU time: on the shared machine, another job's share of the cores does not count."""
    settings = Settings(ticks_topic=TOPIC, horizons=horizons)
    consumer = StreamConsumer(records, settings.poll_max_records)
    worker = Worker(
        settings, consumer, NullPublisher(), MemoryStore("g"),  # type: ignore[arg-type]
        Metrics(CollectorRegistry(), horizons=settings.horizons),
    )  # fmt: skip
    worker.start()
    worker.assign(sorted(records, key=lambda tp: tp.partition))
    n = sum(len(rs) for rs in records.values())
    with replay or contextlib.nullcontext():
        cpu = time.process_time()
        while any(consumer.queues.values()):
            worker.step()
        assert worker.shutdown() == 0
        cpu = time.process_time() - cpu
    done = worker.metrics.registry.get_sample_value("tickprop_predictions_total")
    assert done == n, f"{done} predictions for {n} records"
    return cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=40_000, help="records per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--profile", action="store_true", help="then cProfile one default run")
    parser.add_argument("--top", type=int, default=40, help="functions the profile lists")
    args = parser.parse_args()
    logging.getLogger("tickprop.fetch_guard").setLevel(logging.ERROR)  # fakes: nothing to guard
    records = stream(args.ticks)
    default = ",".join(str(h) for h in Settings().horizons)
    recorded = {}
    for horizons in ("1", default):  # also the warm-up: imports, first allocations
        recorded[horizons] = Replay(record=True)
        run(records, horizons, recorded[horizons])
    whole: dict[str, list[float]] = {"1": [], default: []}
    rest: dict[str, list[float]] = {"1": [], default: []}
    for _ in range(args.rounds):
        for horizons in whole:
            whole[horizons].append(run(records, horizons, None))
            rest[horizons].append(run(records, horizons, Replay(False, recorded[horizons].results)))
    print(f"records      {args.ticks:,} (mixed stream, {PARTITIONS} partitions, fakes, "
          f"{args.rounds} rounds, medians)")  # fmt: skip
    for horizons in whole:
        total, own = float(np.median(whole[horizons])), float(np.median(rest[horizons]))
        print(
            f"horizons {horizons:<8} {total:5.1f} CPU us/record (rounds: "
            f"{', '.join(f'{r:.1f}' for r in whole[horizons])}): the learner {total - own:.1f}, "
            f"the rest {own:.1f} (its results replayed; rounds: "
            f"{', '.join(f'{r:.1f}' for r in rest[horizons])})"
        )
    one, three = float(np.median(whole["1"])), float(np.median(whole[default]))
    print(f"{default} / 1       {three / one:.2f}x")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(records, default, None)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
