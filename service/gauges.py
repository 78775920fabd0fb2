"""The worker's live gauges, and the sign that Kafka has gone silent.

Set at most twice a second from the worker's loop (and on every rebalance): partitions
held, symbols held, readiness, each partition's lag, and the rolling prequential scores
of the learner and its baselines per horizon (`service.scoring.RollingScores`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from kafka import TopicPartition
from kafka.errors import KafkaError

from model.learner import MODELS, PROB_MODELS
from service.metrics import Metrics
from service.ownership import Status
from service.protocols import Clock, Consumer
from service.scoring import RollingScores

if TYPE_CHECKING:
    from service.ownership import Partition

log = logging.getLogger("tickprop.gauges")

EVERY_SECONDS = 0.5


class Gauges:
    """Sets the worker's gauges; tells whether the group coordinator still answers."""

    def __init__(
        self,
        partitions: dict[TopicPartition, Partition],
        consumer: Consumer,
        metrics: Metrics,
        clock: Clock,
        session_timeout_seconds: float,
    ) -> None:
        self.partitions = partitions
        self.consumer = consumer
        self.metrics = metrics
        self.clock = clock
        self.session_timeout_seconds = session_timeout_seconds
        self._set_at = -math.inf
        self._answering = True  # as last logged
        self._joined_at = -math.inf  # when the group last assigned us partitions
        self._rejoining = False  # between losing our partitions and the next assignment

    def rejoining(self) -> None:
        """The group took our partitions back: a rebalance has begun."""
        self._rejoining = True

    def joined(self) -> None:
        """The group assigned us partitions (possibly none): its coordinator answered."""
        self._rejoining = False
        self._joined_at = self.clock.monotonic()

    def kafka_answering(self) -> bool:
        """The group coordinator answered within the session timeout: a heartbeat went out,
        or the group assigned us partitions; while we rejoin, within twice that.

        A frozen or cut-off broker makes poll() return nothing instead of failing, so this
        is the sign: kafka-python sends the next heartbeat only once the last one is
        answered. It sends none while it rejoins, and a rebalance after a member died
        (SIGKILL, a lost node) waits up to the session timeout for the coordinator to
        expire that member; so a rejoin gets twice the session timeout, and the assignment
        that ends it counts as an answer (else every such rebalance read as silence).
        Before the first heartbeat (start-up, the first assignment) the age is infinite:
        not a sign of silence. Clients without the metric (fakes) count as answering.
        """
        try:
            group = self.consumer.metrics()["consumer-coordinator-metrics"]
            age = float(group["last-heartbeat-seconds-ago"])
        except (AttributeError, KeyError, TypeError, ValueError, KafkaError):
            return True
        if math.isinf(age):
            return True
        age = min(age, self.clock.monotonic() - self._joined_at)
        return age < self.session_timeout_seconds * (2 if self._rejoining else 1)

    def forget(self, partition: int) -> None:
        """Drop a released partition's own series (none reported yet: nothing to drop)."""
        for gauge in (self.metrics.consumer_lag, self.metrics.unreadable_partition):
            with contextlib.suppress(KeyError):
                gauge.remove(str(partition))

    def lag(self, part: Partition) -> int | None:
        """Records on the broker not yet processed (highwater from fetches − next offset)."""
        try:
            highwater = self.consumer.highwater(part.tp)
        except KafkaError:
            return None
        if highwater is None:
            return None
        return max(0, highwater - (part.next_offset or 0))

    def update(
        self,
        symbols: Callable[[], int],
        ready: Callable[[], bool],
        rolling: dict[int, RollingScores],
        force: bool = False,
    ) -> None:
        """Set every gauge, unless they were set less than EVERY_SECONDS ago (and not `force`).

        `symbols` and `ready` are asked only then: the loop calls this after every poll,
        and readiness reads kafka-python's metrics, which it computes all at once."""
        now = self.clock.monotonic()
        if not force and now - self._set_at < EVERY_SECONDS:
            return
        self._set_at = now
        m = self.metrics
        m.assigned_partitions.set(len(self.partitions))
        m.symbols.set(symbols())
        m.ready.set(1 if ready() else 0)
        self._log_silence()
        for part in self.partitions.values():
            partition = str(part.tp.partition)
            unreadable = part.status is Status.UNREADABLE
            m.unreadable_partition.labels(partition=partition).set(1 if unreadable else 0)
            lag = self.lag(part)
            if lag is not None:
                m.consumer_lag.labels(partition=partition).set(lag)
        for h, scores in rolling.items():
            horizon = str(h)
            for model in MODELS:
                accuracy = scores.accuracy(model)
                if accuracy is not None:
                    m.prequential_accuracy.labels(model=model, horizon=horizon).set(accuracy)
            for model in PROB_MODELS:
                loss = scores.log_loss(model)
                if loss is not None:
                    m.prequential_log_loss.labels(model=model, horizon=horizon).set(loss)

    def _log_silence(self) -> None:
        """Log (and count) when the group coordinator goes silent, and when it answers again."""
        answering = self.kafka_answering()
        if answering == self._answering:
            return
        self._answering = answering
        if answering:
            log.info("kafka answering again", extra={"event": "kafka_answering"})
            return
        self.metrics.dependency_errors.labels(dependency="kafka").inc()
        if self._rejoining:  # a join is a long poll: a slow rebalance looks the same
            log.warning(
                "kafka silent while rejoining the group for twice the session timeout: "
                "the rebalance waits on other members, or the broker stopped answering",
                extra={"event": "kafka_silent", "rejoining": True},
            )
        else:
            log.error(
                "kafka silent: no group heartbeat answered within the session timeout",
                extra={"event": "kafka_silent", "rejoining": False},
            )
