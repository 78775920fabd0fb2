"""The streaming worker's loop: poll ticks, decode, learn, publish predictions.

Exactly-once state rests on three rules (docs/internals.md):

1. A partition's state (every symbol's learner) and the next offset to read are written to
   Redis together, in one fenced write (`service.checkpoints`), and on assignment the
   worker loads them and seeks to that offset (`service.ownership`). Records after the
   last checkpoint are simply processed again after a crash — from the same state, so
   with the same result.
2. Outputs are flushed before the checkpoint that moves past them (at-least-once output);
   a re-sent prediction is identical to the first because it is computed from the same state.
3. Nothing advances without persistence: a partition whose checkpoint fails is paused (and
   re-read from its last good checkpoint if an output was lost) until Redis and Kafka answer.

The loop itself only polls, decodes, learns and publishes; it delegates partition
ownership (claim, release, pause, retry) to `Ownership`, checkpoints to `Checkpoints`,
dead letters to `DeadLetters` and live scores to `service.scoring.RollingScores`.
Collaborators (consumer, publisher, store, metrics, clock) are passed in; `service.main`
builds the real ones.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from model.learner import LearnerConfig, OnlineLearner
from service import codec, fetch_guard
from service.backoff import backoff
from service.checkpoints import FLUSH_TIMEOUT_SECONDS, Checkpoints
from service.dead_letters import DeadLetters
from service.fetch_guard import UnreadableBatch
from service.gauges import Gauges
from service.ownership import Ownership, Partition, Status
from service.protocols import Clock, Consumer, Publisher, StateStore
from service.scoring import RollingScores
from service.tick_metrics import TickMetrics
from service.unreadable import UnreadableBatches

if TYPE_CHECKING:
    from service.metrics import Metrics
    from service.settings import Settings

log = logging.getLogger("tickprop.worker")

OUTPUT_PARTITIONS_CHECK_SECONDS = 1.0
# Predictions are handed to the publisher process in groups of this many (and at the end
# of each poll batch): one pipe write per group, and a tick waits for at most this many
# others (~64 x 50 us) before the producer has it.
SHIP_EVERY_TICKS = 64


class _Listener(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread while the main thread waits inside poll()."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.worker.release(revoked, commit=True)

    def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        self.worker.release(lost, commit=False)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.worker.assign(assigned)


class Worker:
    """The consume → decode → learn → publish loop over one consumer."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        publisher: Publisher,
        store: StateStore,
        metrics: Metrics,
        clock: Clock = time,
        learner_config: LearnerConfig | None = None,
        score_window: int = 1000,
        poll_timeout_ms: int = 200,
        dlq_reader: Any | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.config = learner_config or settings.learner_config()
        self.rolling = {h: RollingScores(score_window) for h in self.config.horizons}
        self.poll_timeout_ms = poll_timeout_ms
        self.partitions: dict[TopicPartition, Partition] = {}
        self.checkpoints = Checkpoints(
            self.partitions,
            settings.ticks_topic,
            settings.checkpoint_every_ticks,
            settings.checkpoint_every_seconds,
            publisher,
            store,
            consumer,
            metrics,
            clock,
        )
        self.ownership = Ownership(
            self.partitions,
            store,
            consumer,
            self.checkpoints,
            metrics,
            clock,
            self.config,
            fenced_wait_seconds=2 * settings.session_timeout_ms / 1000,
            reads_back_dead_letters=dlq_reader is not None,
        )
        self.dead_letters = DeadLetters(
            settings.dlq_topic, publisher, self.checkpoints, metrics, clock, reader=dlq_reader
        )
        self.unreadable = UnreadableBatches(
            self.partitions,
            settings.skip_unreadable_batches,
            consumer,
            self.ownership,
            self.dead_letters,
            metrics,
            clock,
        )
        self.outputs = OutputPartitions(publisher, settings.predictions_topic, clock)
        self.gauges = Gauges(
            self.partitions, consumer, metrics, clock, settings.session_timeout_ms / 1000
        )
        self._running = False
        self._joined = False  # the group assigned us partitions (possibly none) at least once
        self._stopping = False
        self._poll_failures = 0
        self._lock = threading.RLock()
        self._last_record_at = clock.monotonic()
        self._iteration_at = clock.monotonic()  # when the loop last completed a step
        self._invalid = metrics.ticks.labels(outcome="invalid")
        self._late = metrics.ticks.labels(outcome="late")
        self.tick_metrics = TickMetrics(metrics, clock, self.rolling)
        self._unshipped = 0  # predictions queued for the publisher, not handed over yet
        # Read on every record (_process):
        self._max_bytes = settings.max_message_bytes
        self._predictions_topic = settings.predictions_topic

    # ------------------------------------------------------------------ probes
    @property
    def ready(self) -> bool:
        """Polling Kafka fine, the group coordinator answering, every partition persisting."""
        return (
            self._running
            and self._poll_failures == 0
            and self.gauges.kafka_answering()
            and self.ownership.all_active()
        )

    def alive(self) -> bool:
        """The loop completed an iteration within TICKPROP_LIVENESS_TIMEOUT_SECONDS.

        A loop blocked anywhere (a hung poll, flush or Redis call) stops completing
        iterations, and /healthz then fails, so the orchestrator restarts the process.
        """
        elapsed = self.clock.monotonic() - self._iteration_at
        return elapsed <= self.settings.liveness_timeout_seconds

    # ------------------------------------------------------------------ life cycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint, commit and return (signal-safe)."""
        self._stopping = True

    def start(self) -> None:
        """Subscribe to the ticks topic; partitions are claimed inside the following polls."""
        fetch_guard.guard(self.consumer)  # a batch it cannot read must not hang poll()
        if self.dead_letters.reader is not None:
            fetch_guard.guard(self.dead_letters.reader)
        self.consumer.subscribe([self.settings.ticks_topic], listener=_Listener(self))
        self._running = True
        self._iteration_at = self.clock.monotonic()
        log.info("worker started", extra={"event": "started", "topic": self.settings.ticks_topic})

    def run(self, max_idle_seconds: float | None = None) -> int:
        """Consume until stop() (or idle for `max_idle_seconds` once drained); exit code."""
        self.start()
        while not self._stopping:
            self.step()
            if max_idle_seconds is not None and self._idle_for(max_idle_seconds):
                log.info("drained and idle, stopping", extra={"event": "idle_exit"})
                break
        return self.shutdown()

    def step(self) -> None:
        """One poll, its records, due checkpoints, retries and gauges."""
        with self._lock:
            self.ownership.retry_paused()
        try:
            batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        except UnreadableBatch as exc:  # recurs for that partition only: not a poll failure
            with self._lock:
                self.unreadable.handle(exc, self.dead_letters.already_sent)
                self._update_gauges()
            self._iteration_at = self.clock.monotonic()
            return
        except KafkaError as exc:
            self._poll_failed(exc)
            return
        if self._poll_failures:
            log.info("kafka poll recovered", extra={"event": "poll_recovered"})
        self._poll_failures = 0
        self.metrics.dependency_up.labels(dependency="kafka").set(1)
        polled_at = self.clock.perf_counter()
        with self._lock:
            if batch:
                self.outputs.check()
            try:
                for tp, records in batch.items():
                    self._process_records(tp, records, polled_at)
            finally:
                self.tick_metrics.flush()
                self._ship(polled_at)
            self.ownership.checkpoint_due()
            self._update_gauges()
        self._iteration_at = self.clock.monotonic()

    def _poll_failed(self, exc: KafkaError) -> None:
        self._poll_failures += 1
        self.metrics.dependency_errors.labels(dependency="kafka").inc()
        self.metrics.dependency_up.labels(dependency="kafka").set(0)
        delay = backoff(self._poll_failures)
        log.error(
            "kafka poll failed, retrying",
            extra={"event": "poll_failed", "error": repr(exc), "retry_in": delay},
        )
        self.clock.sleep(delay)
        self._iteration_at = self.clock.monotonic()  # failing, but not hung

    def shutdown(self) -> int:
        """Checkpoint every partition, commit, close the consumer (leaves the group)."""
        with self._lock:
            ok, offsets = self.ownership.checkpoint_all()
            self.partitions.clear()
            self._running = False
            self._update_gauges(force=True)
        try:
            if offsets:
                self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("kafka commit failed", extra={"event": "commit_failed", "error": repr(exc)})
        try:
            self.consumer.close()
        except KafkaError as exc:
            log.warning(
                "consumer close failed", extra={"event": "close_failed", "error": repr(exc)}
            )
        try:
            self.publisher.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except KafkaError as exc:
            log.warning(
                "publisher flush failed", extra={"event": "flush_failed", "error": repr(exc)}
            )
        log.info("worker stopped", extra={"event": "stopped", "final_checkpoints_ok": ok})
        return 0 if ok else 1

    # ------------------------------------------------------------------ rebalances
    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Claim each newly assigned partition (`Ownership.assign`)."""
        with self._lock:
            self._joined = True
            self.gauges.joined()
            self.ownership.assign(tps)
            self._update_gauges(force=True)

    def release(self, tps: Iterable[TopicPartition], commit: bool) -> None:
        """Checkpoint and forget partitions the group took away (`Ownership.release`)."""
        with self._lock:
            self.gauges.rejoining()
            self.ownership.release(tps, commit, self.gauges.forget)
            self._update_gauges(force=True)

    @property
    def lock(self) -> threading.RLock:
        """Held while the loop processes a batch or a rebalance: readers in other threads
        (the query API) take it too."""
        return self._lock

    # ------------------------------------------------------------------ records
    def _process_records(
        self, tp: TopicPartition, records: Sequence[Any], polled_at: float
    ) -> None:
        part = self.partitions.get(tp)
        if part is None or part.status is not Status.ACTIVE:
            return  # revoked, fenced or paused: read again after the seek that resumes it
        if not self.ownership.dead_letters_known(part, self.dead_letters.already_sent):
            return
        # Checkpoints happen between batches (in step), never between a tick's poll and its
        # publish, so they add to no tick's latency; a batch holds at most poll_max_records,
        # which bounds how far a checkpoint can overshoot checkpoint_every_ticks.
        process = self._process
        for record in records:
            if part.next_offset is not None and record.offset < part.next_offset:
                continue  # already applied (a fetch from before a seek)
            process(part, record, polled_at)
            part.next_offset = record.offset + 1
            part.ticks_since_checkpoint += 1
        self._last_record_at = self.clock.monotonic()

    def _process(self, part: Partition, record: Any, polled_at: float) -> None:
        """One record: decode, learn, publish its prediction (or dead-letter it).

        Runs for every record: attributes it reads more than once are read into locals."""
        key: bytes | None = record.key
        limit = self._max_bytes
        try:
            if key is not None and len(key) > limit:
                raise codec.InvalidTick(codec.TOO_LARGE, f"key is {len(key)} bytes, limit {limit}")
            tick = codec.decode_tick(key, record.value, limit)
        except codec.InvalidTick as exc:
            self._invalid.inc()
            self.dead_letters.send(part, record, exc.reason, exc.detail)
            return
        symbol, ts_ms = tick.symbol, tick.ts_ms
        learner = part.learners.get(symbol) or self._new_learner(part, record, symbol)
        if learner is None:
            return
        if learner.is_late(ts_ms):
            self._late.inc()
            detail = f"ts {ts_ms} is older than the symbol's last tick"
            self.dead_letters.send(part, record, codec.LATE, detail)
            return
        result = learner.on_tick(ts_ms, tick.price)
        part.dirty.add(symbol)
        p = result.prediction
        tp = part.tp
        # Packed, not JSON: the publisher process writes the JSON (codec.pack_prediction).
        value_out = codec.pack_prediction(
            f"{tp.topic}/{tp.partition}/{record.offset}",
            symbol,
            ts_ms,
            p.forecasts,
            p.features_ready,
        )
        try:
            self.publisher.send(
                self._predictions_topic,
                symbol.encode(),
                value_out,
                None,
                self.outputs.partition(symbol),
                tag=tp.partition,
                packed_prediction=True,
            )
        except KafkaError as exc:  # the publisher process could not take the records
            self._send_failed(part, exc)
        self._unshipped += 1
        if self._unshipped >= SHIP_EVERY_TICKS:
            self._ship(polled_at)
        self.tick_metrics.add(result, ts_ms)

    def _new_learner(self, part: Partition, record: Any, symbol: str) -> OnlineLearner | None:
        """A fresh learner for a symbol seen for the first time, unless at max_symbols."""
        limit = self.settings.max_symbols
        held = self.ownership.symbol_count()
        if held >= limit:
            self.metrics.refused_symbols.inc()
            detail = f"worker holds {held} symbols, max_symbols is {limit}"
            self.dead_letters.send(part, record, codec.TOO_MANY_SYMBOLS, detail)
            return None
        learner = part.learners[symbol] = OnlineLearner(symbol, self.config)
        return learner

    # ------------------------------------------------------------------ publishing
    def _send_failed(self, part: Partition, exc: KafkaError) -> None:
        part.mark_send_failed(repr(exc))
        self.checkpoints.take_publish_reports()  # other partitions' records may be lost too

    def _ship(self, polled_at: float) -> None:
        """Hand the queued records to the publisher process: there each tick's
        `tickprop_process_seconds` (from the poll that brought it) ends."""
        try:
            self.publisher.ship()
        except KafkaError:
            self.checkpoints.take_publish_reports()  # what was lost is reported per partition
        if self._unshipped:
            seconds = self.clock.perf_counter() - polled_at
            self.metrics.process_seconds.observe_many(seconds, self._unshipped)
            self._unshipped = 0

    def _update_gauges(self, force: bool = False) -> None:
        self.unreadable.log_due()
        self.gauges.update(self.ownership.symbol_count, lambda: self.ready, self.rolling, force)

    def _idle_for(self, seconds: float) -> bool:
        """Drained (no lag on any partition, all active) and no record for `seconds`."""
        if not self._joined or self.clock.monotonic() - self._last_record_at < seconds:
            return False
        with self._lock:
            return self.ownership.all_active() and all(
                self.gauges.lag(p) == 0 for p in self.partitions.values()
            )


class OutputPartitions:
    """The predictions topic partition of each symbol, chosen as kafka-python's default
    partitioner would (murmur2 of the key over the sorted partitions), but once per symbol
    instead of once per record; forgotten when the topic's partition count changes."""

    def __init__(self, publisher: Publisher, topic: str, clock: Clock) -> None:
        self.publisher = publisher
        self.topic = topic
        self.clock = clock
        self._by_symbol: dict[str, int] = {}
        self._ids: list[int] = []
        self._checked_at = -math.inf

    def check(self) -> None:
        """Forget the symbols' partitions when the topic's partitions changed.

        Asked at most once a second (a round trip to the publisher process): records
        sent in between keep the partitions chosen before a change.
        """
        now = self.clock.monotonic()
        if now - self._checked_at < OUTPUT_PARTITIONS_CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            ids = sorted(self.publisher.partitions_for(self.topic) or ())
        except KafkaError:
            ids = []  # unknown: every send lets the producer's partitioner decide
        if ids != self._ids:
            self._ids = ids
            self._by_symbol.clear()

    def partition(self, symbol: str) -> int | None:
        """The partition for `symbol`'s predictions (None: let the producer choose)."""
        partition = self._by_symbol.get(symbol)
        if partition is not None or not self._ids:
            return partition
        ids = self._ids
        partition = self._by_symbol[symbol] = ids[
            (murmur2(symbol.encode()) & 0x7FFFFFFF) % len(ids)
        ]
        return partition
