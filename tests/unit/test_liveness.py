"""/healthz tells a loop that stopped iterating: the worker's poll really blocks here."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from fakes import FakeConsumer, FakePublisher
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.memory_store import MemoryStore
from service.metrics import Metrics, serve
from service.settings import Settings
from service.worker import Worker


class BlockingConsumer(FakeConsumer):
    """poll() returns at once until `block` is set, then waits until `release` is."""

    def __init__(self) -> None:
        super().__init__()
        self.block = threading.Event()
        self.release = threading.Event()

    def poll(self, timeout_ms: int = 0) -> Mapping[TopicPartition, Sequence[Any]]:
        time.sleep(0.01)
        if self.block.is_set():
            self.release.wait(timeout=30)
        return {}


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_for(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_healthz_fails_while_the_loop_is_blocked_and_recovers_after() -> None:
    consumer = BlockingConsumer()
    metrics = Metrics(CollectorRegistry())
    settings = Settings(liveness_timeout_seconds=0.5)
    worker = Worker(settings, consumer, FakePublisher(), MemoryStore("g"), metrics)
    server = serve(metrics, "127.0.0.1", 0, ready=lambda: worker.ready, alive=worker.alive)
    loop = threading.Thread(target=worker.run, daemon=True)
    healthz = f"http://127.0.0.1:{server.port}/healthz"
    try:
        loop.start()
        time.sleep(0.8)  # longer than the bound: a loop that iterates stays alive
        assert status(healthz) == 200
        consumer.block.set()
        noticed = wait_for(lambda: status(healthz) == 503, timeout=5)
        assert noticed >= 0.3  # not before the bound (0.5 s after the last iteration)
        consumer.release.set()
        wait_for(lambda: status(healthz) == 200, timeout=5)
    finally:
        consumer.release.set()
        worker.stop()
        loop.join(timeout=5)
        server.stop()
    assert not loop.is_alive()
