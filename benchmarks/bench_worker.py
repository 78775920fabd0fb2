"""Worker throughput beside a bare kafka-python relay, and poll-to-publish latency at 1,000 ticks/s.

Run: .venv/bin/python benchmarks/bench_worker.py [--ticks N] [--seconds S]

One process starts a local broker and Redis (the wheels), writes the same N real ticks
(E-mini trades and daily stock closes, 6 partitions) to two topics and measures:

1. relay: a kafka-python consumer in a group that produces, for each record, one record
   of the same size to another topic — the I/O floor of this design;
2. worker: the real `Worker` (decode, learn, publish a prediction, checkpoint to Redis
   every TICKPROP_CHECKPOINT_EVERY_TICKS/SECONDS, default settings) over the same records,
   with its publisher process (service/publisher.py) as `tickprop worker` runs it;

both timed from their first record to the last one handled and flushed (the group join
is left out of both), and the CPU time each used per record (the relay's process; the
worker's process plus its publisher process). Then (3) `tickprop produce --rate 1000`
feeds a fresh topic from a subprocess while the worker runs, and every tick's
poll-to-publish time (the worker's `tickprop_process_seconds`: from poll() returning to
the prediction handed to the publisher process) is recorded; also produce-to-publish
(the tick record's broker timestamp to the prediction record's), which adds the fetch
wait and the producer's linger.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from kafka import KafkaConsumer, KafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from worker_kit import (  # noqa: E402
    Names,
    in_process_worker,
    mixed_ticks,
    produce,
    read_topic,
    tick_records,
)

from service.main import CONSUMER_OPTIONS, PRODUCER_OPTIONS  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.tools.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402
from service.worker import Worker  # noqa: E402


class Run(NamedTuple):
    rate: float  # records (ticks) per second, wall clock
    cpu_us: float  # CPU time per record, all processes of the run (µs)
    own_cpu_us: float  # of which this process's (the worker's, without its publisher)


def child_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a live child process, from /proc (0 when unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay(settings: Settings, n: int) -> Run:
    """Records/s of consume-each + produce-one-of-the-same-size, group join excluded."""
    consumer = KafkaConsumer(
        settings.ticks_topic, **settings.kafka_consumer_kwargs(), **CONSUMER_OPTIONS
    )
    producer = KafkaProducer(**settings.kafka_client_kwargs(), **PRODUCER_OPTIONS)
    seen = 0
    started = None
    try:
        while seen < n:
            batch = consumer.poll(timeout_ms=200)
            if batch and started is None:
                started, cpu = time.perf_counter(), time.process_time()
            for records in batch.values():
                for record in records:
                    producer.send(
                        settings.predictions_topic,
                        key=record.key,
                        value=bytes(len(record.value)),
                    )
                    seen += 1
        producer.flush()
        assert started is not None
        cpu_us = (time.process_time() - cpu) / n * 1e6
        return Run(n / (time.perf_counter() - started), cpu_us, cpu_us)
    finally:
        producer.close()
        consumer.close()


class Recorder:
    """Stands in for a histogram: keeps every observation."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)

    def observe_many(self, value: float, count: int) -> None:
        self.values += [value] * count


def make_worker(bootstrap: str, redis_url: str, names: Names) -> tuple[Worker, Recorder]:
    """The worker as the tests build it, its process_seconds kept per observation."""
    worker = in_process_worker(bootstrap, redis_url, names)
    recorder = Recorder()
    worker.metrics.process_seconds = recorder
    return worker, recorder


def processed(worker: Worker) -> int:
    return sum(p.next_offset or 0 for p in worker.partitions.values())


def worker_rate(bootstrap: str, redis_url: str, names: Names, n: int) -> Run:
    """Ticks/s through the whole worker, group join excluded, final checkpoint included.

    CPU time counts the worker's process and its publisher process.
    """
    worker, _ = make_worker(bootstrap, redis_url, names)
    child = worker.publisher.pid
    started = None
    while processed(worker) < n:
        worker.step()
        if started is None and processed(worker) > 0:
            started = time.perf_counter()
            own, cpu = time.process_time(), child_cpu_seconds(child)
    assert worker.shutdown() == 0
    elapsed = time.perf_counter() - started if started is not None else math.nan
    own = time.process_time() - own
    cpu = own + child_cpu_seconds(child) - cpu
    assert worker.publisher.pid == child, "the publisher process was restarted"
    worker.publisher.close()
    return Run(n / elapsed, cpu / n * 1e6, own / n * 1e6)


def latency(
    bootstrap: str, redis_url: str, names: Names, env: dict[str, str], n: int, rate: float
) -> Any:
    """Poll-to-publish and produce-to-publish times at a fixed offered rate."""
    worker, recorder = make_worker(bootstrap, redis_url, names)
    settings = worker.settings
    while not worker.partitions:
        worker.step()
    csv = ROOT / "data" / "es_ticks_2013-09-01_03.csv.gz"
    feeder = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "produce", "--csv", str(csv),
         "--rate", str(rate), "--limit", str(n), "--topic", settings.ticks_topic],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    while processed(worker) < n:
        worker.step()
    feeder.wait(timeout=60)
    assert worker.shutdown() == 0
    worker.publisher.close()
    ticks = {
        (r.partition, r.offset): r.timestamp
        for r in read_topic(settings.kafka_bootstrap_servers, settings.ticks_topic)
    }
    end_to_end = []
    for record in read_topic(settings.kafka_bootstrap_servers, settings.predictions_topic):
        _, partition, offset = json.loads(record.value)["id"].rsplit("/", 2)
        end_to_end.append((record.timestamp - ticks[(int(partition), int(offset))]) / 1000.0)
    return np.array(recorder.values), np.array(end_to_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=40_000, help="records for throughput")
    parser.add_argument("--rounds", type=int, default=3, help="relay/worker runs, interleaved")
    parser.add_argument("--seconds", type=float, default=15, help="latency run at 1,000/s")
    args = parser.parse_args()
    n = args.ticks
    records = tick_records(mixed_ticks(n_stocks=min(n // 2, 12_000), n_es=n))[:n]
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        source = Names.fresh()
        produce(broker.bootstrap, source.ticks, records)

        def run_names() -> Names:  # same input topic, a group and outputs of its own
            return replace(Names.fresh(), ticks=source.ticks)

        # Interleaved rounds, so a change in the shared machine's load hits both alike.
        relays, workers = [], []
        for _ in range(args.rounds):
            relays.append(relay(run_names().settings(broker.bootstrap, redis_server.url), n))
            workers.append(worker_rate(broker.bootstrap, redis_server.url, run_names(), n))
        ratios = [w.rate / r.rate for w, r in zip(workers, relays, strict=True)]
        print(f"records                 {n:,} real ticks, 6 partitions, {args.rounds} rounds")
        print(f"bare relay              {fmt([r.rate for r in relays])} records/s")
        print(f"worker                  {fmt([w.rate for w in workers])} ticks/s")
        print(f"worker / relay          median {float(np.median(ratios)):.2f}x (goal >= 0.6x)  "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
        relay_cpu = float(np.median([r.cpu_us for r in relays]))
        worker_cpu = float(np.median([w.cpu_us for w in workers]))
        worker_own = float(np.median([w.own_cpu_us for w in workers]))
        print(f"CPU per record          relay {relay_cpu:.0f} us, worker {worker_cpu:.0f} us "
              f"(its process {worker_own:.0f} us + the publisher process; median)")  # fmt: skip

        latency_names = Names.fresh()
        env = dict(os.environ, TICKPROP_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
        produce(broker.bootstrap, latency_names.ticks, [])  # the topic exists before the join
        m = int(args.seconds * 1000)
        poll_to_publish, end_to_end = latency(
            broker.bootstrap, redis_server.url, latency_names, env, m, 1000.0
        )
        p50, p99 = np.percentile(poll_to_publish, [50, 99]) * 1000
        e50, e99 = np.percentile(end_to_end, [50, 99]) * 1000
        print(f"at 1,000 ticks/s ({m:,} ticks): poll-to-publish p50 {p50:.2f} ms  p99 {p99:.2f} ms")
        print(f"                  produce-to-publish p50 {e50:.1f} ms  p99 {e99:.1f} ms")


def fmt(rates: list[float]) -> str:
    return (
        f"median {float(np.median(rates)):8,.0f}  (rounds: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
