"""The sign that Kafka went silent: no group heartbeat, told apart from a slow rebalance.

kafka-python sends no heartbeat while it rejoins the group, and a rebalance after a
member was SIGKILLed waits up to the session timeout for the coordinator to expire it:
the surviving workers logged "kafka silent" (and went unready) on each such rebalance,
with the broker answering all along. A broker that stops answering must still be caught,
in a rebalance or not.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from fakes import FakeClock, FakeConsumer, FakePublisher
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.gauges import Gauges
from service.memory_store import MemoryStore
from service.metrics import Metrics
from service.settings import Settings
from service.worker import Worker, _Listener

SESSION = 6.0  # seconds, the default TICKPROP_SESSION_TIMEOUT_MS


class HeartbeatConsumer(FakeConsumer):
    """Reports kafka-python's coordinator metric: seconds since the last heartbeat went out."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.sent_at = -math.inf

    def heartbeat(self) -> None:
        self.sent_at = self.clock.now

    def metrics(self) -> Any:
        age = self.clock.now - self.sent_at
        return {"consumer-coordinator-metrics": {"last-heartbeat-seconds-ago": age}}


def gauges() -> tuple[Gauges, HeartbeatConsumer, FakeClock]:
    clock = FakeClock()
    consumer = HeartbeatConsumer(clock)
    return Gauges({}, consumer, Metrics(CollectorRegistry()), clock, SESSION), consumer, clock


def test_no_heartbeat_within_the_session_timeout_is_silence() -> None:
    g, consumer, clock = gauges()
    assert g.kafka_answering(), "before the first heartbeat: starting, not silent"
    consumer.heartbeat()
    clock.advance(SESSION - 0.5)
    assert g.kafka_answering()
    clock.advance(1.0)
    assert not g.kafka_answering(), "a frozen broker: no heartbeat for the session timeout"


def test_a_rejoin_waiting_for_a_dead_member_is_not_silence() -> None:
    g, consumer, clock = gauges()
    consumer.heartbeat()
    clock.advance(0.5)
    g.rejoining()  # revoked: kafka-python rejoins and sends no heartbeat meanwhile
    clock.advance(SESSION + 1.0)  # the coordinator waits for a SIGKILLed member to expire
    assert g.kafka_answering()
    g.joined()  # the assignment ends the rebalance: the coordinator answered
    clock.advance(0.5)
    assert g.kafka_answering(), "the first heartbeat after the join is not due yet"
    consumer.heartbeat()
    clock.advance(SESSION - 0.5)
    assert g.kafka_answering()


def test_a_broker_silent_through_a_rejoin_or_after_it_is_still_caught() -> None:
    g, consumer, clock = gauges()
    consumer.heartbeat()
    g.rejoining()
    clock.advance(2 * SESSION + 0.1)
    assert not g.kafka_answering(), "a rejoin gets twice the session timeout, no more"
    g.joined()
    assert g.kafka_answering()
    clock.advance(SESSION + 0.1)  # assigned, then no heartbeat ever again
    assert not g.kafka_answering()


def test_the_worker_tells_its_gauges_about_each_rebalance() -> None:
    clock = FakeClock()
    consumer = HeartbeatConsumer(clock)
    worker = Worker(
        Settings(), consumer, FakePublisher(), MemoryStore("g"), Metrics(CollectorRegistry()), clock
    )
    listener = _Listener(worker)  # what kafka-python calls on its rebalance
    consumer.heartbeat()
    listener.on_partitions_revoked([])  # eager rebalancing revokes everything, even nothing
    clock.advance(SESSION + 1.0)
    assert worker.gauges.kafka_answering()
    listener.on_partitions_assigned([TopicPartition("ticks", 0)])
    clock.advance(SESSION - 0.5)
    assert worker.gauges.kafka_answering()
    clock.advance(1.0)
    assert not worker.gauges.kafka_answering()


def test_silence_in_a_rejoin_is_a_warning_that_says_so_and_an_error_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g, consumer, clock = gauges()
    consumer.heartbeat()
    g.rejoining()
    clock.advance(2 * SESSION + 0.1)  # rebalances chained by members killed one after another
    with caplog.at_level(logging.INFO, logger="tickprop.gauges"):
        g.update(lambda: 0, lambda: g.kafka_answering(), {}, force=True)
        g.joined()
        g.update(lambda: 0, lambda: g.kafka_answering(), {}, force=True)
        clock.advance(SESSION + 0.1)
        g.update(lambda: 0, lambda: g.kafka_answering(), {}, force=True)
    logged = [(r.levelname, getattr(r, "rejoining", None)) for r in caplog.records]
    assert logged == [("WARNING", True), ("INFO", None), ("ERROR", False)]
