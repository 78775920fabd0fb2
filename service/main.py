"""Run the streaming worker: consume ticks, learn online, publish predictions, keep state in Redis.

Configured by TICKPROP_* environment variables (see README). At start-up it checks Redis,
creates missing topics, serves /metrics, /healthz and /readyz on TICKPROP_METRICS_PORT and
joins the consumer group TICKPROP_GROUP_ID. SIGTERM or SIGINT: finish the batch, checkpoint,
commit, leave the group and exit 0 -- within TICKPROP_SHUTDOWN_GRACE_SECONDS, or exit 3
without that last checkpoint (a watchdog thread ends the process whatever the loop is
doing). Exit 2 on a bad setting, 1 when Redis or Kafka stay unreachable at start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("tickprop.main")

T = TypeVar("T")

EXIT_FORCED = 3  # the orderly stop overran TICKPROP_SHUTDOWN_GRACE_SECONDS

# Client options beyond the settings, measured with benchmarks/bench_worker.py on the local
# broker. linger_ms batches predictions for up to 20 ms: kafka-python's sender thread then
# wakes far less often and competes less for the GIL with the thread calling send() (~1.5x
# throughput when the producer shared the worker's process; it now runs in the publisher
# process, service/publisher.py); it delays delivery, not the hand-over to the producer.
# batch_size 256 KiB (kafka-python's default is 16 KiB): a 3-horizon prediction is ~420
# bytes, so at 20k ticks/s the busiest partition of the benchmark stream (E-mini, half the
# ticks) filled a 16 KiB batch every ~4 ms, and each full batch sent a request: ~73 records
# per request. 256 KiB is more than one partition gathers in 20 ms at a worker's 20-30k
# ticks/s, so requests go out at the linger, ~350 records each, and the producer's sender
# thread uses ~4.5 instead of ~11.5 us per record (benchmarks/prof_publisher.py). The cost:
# at such rates a record waits out the linger where a full 16 KiB batch left sooner; the
# bound stays linger_ms. kafka-python grows a batch's buffer as records come.
# fetch_max_wait_ms: the broker answers a fetch after at most 20 ms, so a slow stream is not
# held back for 500 ms.
# enable_idempotence=False: kafka-python 3 turns it on by default, and after a broker that
# lost its state (a restart of an in-memory Tansu) InitProducerId fails and the producer
# stays fatally broken: every publish failed and the worker rewound forever
# (test_outages). Outputs are at-least-once and idempotent by `id` anyway.
PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 20,
    "batch_size": 256 * 1024,
    "max_block_ms": 10_000,
    "enable_idempotence": False,
}
CONSUMER_OPTIONS: dict[str, Any] = {"fetch_max_wait_ms": 20}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-idle-seconds",
        type=float,
        default=None,
        metavar="S",
        help="exit 0 once every assigned partition is drained and nothing arrived for S "
        "seconds (for demos and tests; default: run until SIGTERM)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="keep retrying Redis and Kafka at start-up for S seconds before exiting 1 "
        "(default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from service import logs
    from service.settings import load_settings

    settings = load_settings()
    logs.configure(settings.log_level)
    log.info("starting", extra={"event": "starting", "settings": settings.redacted_dump()})
    try:
        return _serve(settings, args.max_idle_seconds, args.startup_timeout)
    except StartupError as exc:
        log.error(str(exc), extra={"event": "startup_failed"})
        return 1
    except Exception:  # a bug: one JSON line with the traceback, not raw text on stderr
        log.exception("worker crashed", extra={"event": "crashed"})
        return 1


class StartupError(Exception):
    """A dependency stayed unreachable for the whole start-up timeout."""


def _serve(settings: Any, max_idle_seconds: float | None, startup_timeout: float) -> int:
    from kafka import KafkaConsumer

    from service.metrics import Metrics, serve
    from service.publisher import ProcessPublisher
    from service.query_api import LockedDirectory
    from service.store import Store
    from service.topics import create_topics
    from service.worker import Worker

    deadline = time.monotonic() + startup_timeout
    # A cluster client asks for the slot map as it is built: that is retried too.
    client = _retry("redis", settings.redis_client, deadline)
    store = Store(client, settings.group_id)
    _retry("redis", store.ping, deadline)
    topics = [settings.ticks_topic, settings.predictions_topic, settings.dlq_topic]
    kafka_kwargs = settings.kafka_client_kwargs()
    _retry(
        "kafka",
        lambda: create_topics(
            kafka_kwargs["bootstrap_servers"],
            topics,
            partitions=settings.topic_partitions,
            replication_factor=settings.replication_factor,
            **kafka_kwargs,
        ),
        deadline,
    )
    consumer = KafkaConsumer(**settings.kafka_consumer_kwargs(), **CONSUMER_OPTIONS)
    publisher = ProcessPublisher(kafka_kwargs, PRODUCER_OPTIONS, log_level=settings.log_level)
    dlq_reader = KafkaConsumer(
        **kafka_kwargs, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        **CONSUMER_OPTIONS,
    )  # fmt: skip
    metrics = Metrics(horizons=settings.horizons)
    worker = Worker(settings, consumer, publisher, store, metrics, dlq_reader=dlq_reader)
    directory = LockedDirectory(worker.lock, worker.ownership.held_learners)
    metrics.watch_spread(directory.spread)
    server = serve(
        metrics,
        settings.metrics_host,
        settings.metrics_port,
        ready=lambda: worker.ready,
        alive=worker.alive,
        directory=directory,
    )
    log.info(
        "metrics at http://%s:%d/metrics",
        settings.metrics_host,
        server.port,
        extra={"event": "metrics_server", "port": server.port},
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received, stopping", extra={"event": "signal", "signal": signum})
        worker.stop()
        if not deadline_armed.is_set():
            deadline_armed.set()
            arm_exit_deadline(settings.shutdown_grace_seconds)

    deadline_armed = threading.Event()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return worker.run(max_idle_seconds=max_idle_seconds)
    finally:
        publisher.close(timeout=10)
        dlq_reader.close()
        server.stop()
        client.close()


def arm_exit_deadline(seconds: float, exit: Callable[[int], Any] = os._exit) -> threading.Timer:
    """End the process with EXIT_FORCED in `seconds` unless it has exited by then.

    A daemon timer thread: it runs while the main thread is blocked in a call or spinning
    in Python code (the interpreter switches threads), and dies with a process that
    stopped in time. State in Redis is that of the last checkpoint, so nothing is lost.
    """

    def overrun() -> None:
        log.error(
            "orderly stop overran the grace time; exiting without a final checkpoint",
            extra={"event": "forced_exit", "grace_seconds": seconds, "exit_code": EXIT_FORCED},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        exit(EXIT_FORCED)

    timer = threading.Timer(seconds, overrun)
    timer.daemon = True
    timer.start()
    return timer


def _retry(name: str, call: Callable[[], T], deadline: float) -> T:
    """`call()` until it succeeds, backing off and logging, or StartupError after `deadline`."""
    from kafka.errors import KafkaError

    from service.backoff import backoff
    from service.store import StoreError

    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except (KafkaError, StoreError, OSError) as exc:  # unreachable or not ready yet
            delay = backoff(attempt + 1)
            if time.monotonic() + delay > deadline:
                raise StartupError(f"{name} unreachable at start-up: {exc}") from exc
            log.warning(
                f"{name} not reachable yet, retrying",
                extra={"event": "startup_retry", "dependency": name, "err": str(exc)},
            )
            time.sleep(delay)


if __name__ == "__main__":  # `python -m service.main`, the same as `tickprop worker`
    from service.cli import main

    sys.exit(main(["worker", *sys.argv[1:]]))
