"""The streaming worker: poll ticks, decode, learn, publish predictions, checkpoint to Redis.

Exactly-once state rests on three rules:

1. A partition's state (every symbol's learner) and the next offset to read are written to
   Redis together, in one fenced Lua script (`Store.checkpoint`), and on assignment the
   worker loads them and seeks to that offset. Records after the last checkpoint are simply
   processed again after a crash — from the same state, so with the same result.
2. Outputs are flushed before the checkpoint that moves past them (at-least-once output);
   a re-sent prediction is identical to the first because it is computed from the same state.
3. Nothing advances without persistence: a partition whose checkpoint fails is paused (and
   re-read from its last good checkpoint if an output was lost) until Redis and Kafka answer.

Collaborators (consumer, publisher, store, metrics, clock) are passed in; `service.main`
builds the real ones. The publisher (`service.publisher.ProcessPublisher`) runs kafka-python's
producer in a child process; publish failures surface after each flush, per input partition.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import murmur2

from model.learner import LearnerConfig, OnlineLearner, Score
from service import codec, fetch_guard
from service.fetch_guard import UnreadableBatch
from service.store import (
    Fenced,
    OffsetWentBackwards,
    StateWentBack,
    Store,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from service.metrics import Metrics
    from service.publisher import ProcessPublisher
    from service.settings import Settings

log = logging.getLogger("tickprop.worker")

TOO_MANY_SYMBOLS = "too_many_symbols"
MODELS = ("ffbpn", "base_rate", "persistence", "reversal")
PROBABILISTIC = ("ffbpn", "base_rate")
MAX_BACKOFF_SECONDS = 5.0
OUTPUT_PARTITIONS_CHECK_SECONDS = 1.0
# Predictions are handed to the publisher process in groups of this many (and at the end
# of each poll batch): one pipe write per group, and a tick waits for at most this many
# others (~64 x 50 us) before the producer has it.
SHIP_EVERY_TICKS = 64
FLUSH_TIMEOUT_SECONDS = 10.0
# A dead letter larger than this (key, value and the record's own headers) keeps no value:
# the producer's max_request_size is 1 MiB, and ours headers come on top.
MAX_DEAD_LETTER_BYTES = 1_000_000
DLQ_READ_TIMEOUT_SECONDS = 30.0
# A partition that cannot be read is logged again this often (well within a minute).
UNREADABLE_LOG_SECONDS = 50.0
# Headers of codec.dlq_headers that say where a dead letter came from.
SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET = (
    codec.SOURCE_TOPIC_HEADER,
    codec.SOURCE_PARTITION_HEADER,
    codec.SOURCE_OFFSET_HEADER,
)


class Clock(Protocol):
    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    def perf_counter(self) -> float: ...
    def sleep(self, seconds: float, /) -> None: ...


class Status(enum.Enum):
    """What the worker does with a partition's records (all but ACTIVE: drops them)."""

    ACTIVE = "active"  # state loaded, records processed
    NEEDS_CLAIM = "needs_claim"  # no state in memory; paused until a claim succeeds
    CHECKPOINT_FAILING = "checkpoint_failing"  # state good but not persisted; paused
    FENCED = "fenced"  # another worker claimed it; paused, state dropped
    UNREADABLE = "unreadable"  # a batch the consumer cannot read; paused until skipped


# Statuses whose in-memory state is good, so it is checkpointed on release and shutdown.
PERSISTING = (Status.ACTIVE, Status.CHECKPOINT_FAILING, Status.UNREADABLE)


@dataclass
class Partition:
    """What this worker holds for one assigned input partition."""

    tp: TopicPartition
    status: Status = Status.NEEDS_CLAIM
    epoch: str = ""  # the fence of our claim
    learners: dict[str, OnlineLearner] = field(default_factory=dict)
    next_offset: int | None = None  # None: nothing read yet and no checkpoint
    stored_offset: int | None = None  # the offset in Redis, as we last stored or claimed it
    dirty: set[str] = field(default_factory=set)
    ticks_since_checkpoint: int = 0
    last_checkpoint_at: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    send_failed: bool = False
    # Dead letters: `dlq_mark` (stored) is where this partition's dead letters sent after
    # the checkpoint can start in its DLQ partition; `dlq_last` the last offset our own
    # dead letters got since the claim; `dlq_sent` the source offsets (>= the checkpoint)
    # already dead-lettered by an earlier owner, None until the DLQ has been read.
    dlq_mark: int | None = None
    dlq_last: int | None = None
    dlq_sent: set[int] | None = None
    unreadable: UnreadableBatch | None = None  # why it is UNREADABLE
    unreadable_logged_at: float = 0.0

    def reset(self, status: Status) -> None:
        """Drop the in-memory state; it will be re-read from Redis."""
        self.status = status
        self.learners.clear()
        self.dirty.clear()
        self.next_offset = None
        self.ticks_since_checkpoint = 0
        self.send_failed = False
        self.dlq_last = None
        self.dlq_sent = None


class RollingScores:
    """Prequential accuracy and log loss of each model over the last `size` scored predictions.

    Sums are kept incrementally (O(1) per score); the float sums are recomputed from the
    window every `size` scores so rounding cannot drift. Each window entry is the tuple
    (hit per model in MODELS order, then loss per model in PROBABILISTIC order).
    """

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.window: deque[tuple[int, int, int, int, float, float]] = deque()
        self._hits = [0] * len(MODELS)
        self._losses = [0.0] * len(PROBABILISTIC)
        self._since_resum = 0

    def add(self, score: Score) -> None:
        label, p_net, p_base, persist = score.label, score.p_net, score.p_base, score.persist
        entry = (
            int((p_net >= 0.5) == label),
            int((p_base >= 0.5) == label),
            int(persist == label),
            int(persist != label),
            _log_loss(p_net, label),
            _log_loss(p_base, label),
        )
        window, hits, losses = self.window, self._hits, self._losses
        window.append(entry)
        for i, hit in enumerate(entry[:4]):
            hits[i] += hit
        losses[0] += entry[4]
        losses[1] += entry[5]
        if len(window) > self.size:
            old = window.popleft()
            for i, hit in enumerate(old[:4]):
                hits[i] -= hit
            losses[0] -= old[4]
            losses[1] -= old[5]
        self._since_resum += 1
        if self._since_resum >= self.size:
            self._since_resum = 0
            losses[0] = math.fsum(e[4] for e in window)
            losses[1] = math.fsum(e[5] for e in window)

    def accuracy(self, model: str) -> float | None:
        window = self.window
        return self._hits[MODELS.index(model)] / len(window) if window else None

    def log_loss(self, model: str) -> float | None:
        window = self.window
        return self._losses[PROBABILISTIC.index(model)] / len(window) if window else None


def _log_loss(p_up: float, label: int) -> float:
    p = min(max(p_up, 1e-15), 1.0 - 1e-15)
    return -math.log(p if label == 1 else 1.0 - p)


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
    """The consume → decode → learn → publish → checkpoint loop over one consumer."""

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        publisher: ProcessPublisher,
        store: Store,
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
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.config = learner_config or settings.learner_config()
        self.rolling = {h: RollingScores(score_window) for h in self.config.horizons}
        self.poll_timeout_ms = poll_timeout_ms
        self.partitions: dict[TopicPartition, Partition] = {}
        # A group-less consumer to read the DLQ after a claim, so a record dead-lettered
        # before a crash is not dead-lettered again (None: no such de-duplication).
        self.dlq_reader = dlq_reader
        self._dlq_partitions: int | None = None
        self._running = False
        self._joined = False  # the group assigned us partitions (possibly none) at least once
        self._stopping = False
        self._poll_failures = 0
        self._lock = threading.RLock()
        self._last_record_at = clock.monotonic()
        self._gauges_at = -math.inf
        self._kafka_answering = True  # as last logged
        self._processed = metrics.ticks.labels(outcome="processed")
        self._invalid = metrics.ticks.labels(outcome="invalid")
        self._late = metrics.ticks.labels(outcome="late")
        # Counts of the batch being processed, added to the counters once per batch: a
        # prometheus_client counter takes a lock on every inc().
        self._n_processed = self._n_steps = self._n_refused = 0
        self._unshipped = 0  # predictions queued for the publisher, not handed over yet
        # Output partition of each symbol's predictions, chosen as kafka-python's default
        # partitioner would (murmur2 of the key over the sorted partitions) but once per
        # symbol instead of once per record; forgotten when the partition count changes.
        self._out_partitions: dict[str, int] = {}
        self._out_partition_ids: list[int] = []
        self._out_checked_at = -math.inf

    @property
    def ready(self) -> bool:
        """Polling Kafka fine, the group coordinator answering, every partition persisting."""
        return (
            self._running
            and self._poll_failures == 0
            and self.kafka_answering()
            and self._all_active()
        )

    def kafka_answering(self) -> bool:
        """A group heartbeat went out within the session timeout.

        A frozen or cut-off broker makes poll() return nothing instead of failing, so this
        is the sign: kafka-python sends the next heartbeat only once the last one is
        answered (and none during a rebalance). Before the first heartbeat (start-up,
        the first assignment) the age is infinite: not a sign of silence. Clients
        without the metric (fakes) count as answering.
        """
        try:
            group = self.consumer.metrics()["consumer-coordinator-metrics"]
            age = float(group["last-heartbeat-seconds-ago"])
        except (AttributeError, KeyError, TypeError, ValueError, KafkaError):
            return True
        return math.isinf(age) or age < self.settings.session_timeout_ms / 1000

    # ------------------------------------------------------------------ life cycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint, commit and return (signal-safe)."""
        self._stopping = True

    def start(self) -> None:
        """Subscribe to the ticks topic; partitions are claimed inside the following polls."""
        fetch_guard.guard(self.consumer)  # a batch it cannot read must not hang poll()
        if self.dlq_reader is not None:
            fetch_guard.guard(self.dlq_reader)
        self.consumer.subscribe([self.settings.ticks_topic], listener=_Listener(self))
        self._running = True
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
        self._retry_paused()
        try:
            batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        except UnreadableBatch as exc:  # recurs for that partition only: not a poll failure
            with self._lock:
                self._unreadable(exc)
                self._update_gauges()
            return
        except KafkaError as exc:
            self._poll_failures += 1
            self.metrics.dependency_errors.labels(dependency="kafka").inc()
            self.metrics.dependency_up.labels(dependency="kafka").set(0)
            delay = _backoff(self._poll_failures)
            log.error(
                "kafka poll failed, retrying",
                extra={"event": "poll_failed", "error": repr(exc), "retry_in": delay},
            )
            self.clock.sleep(delay)
            return
        if self._poll_failures:
            log.info("kafka poll recovered", extra={"event": "poll_recovered"})
        self._poll_failures = 0
        self.metrics.dependency_up.labels(dependency="kafka").set(1)
        polled_at = self.clock.perf_counter()
        with self._lock:
            if batch:
                self._check_output_partitions()
            try:
                for tp, records in batch.items():
                    self._process_records(tp, records, polled_at)
            finally:
                self._count_batch()
                self._ship(polled_at)
            self._checkpoint_due()
            self._update_gauges()

    def shutdown(self) -> int:
        """Checkpoint every partition, commit, close the consumer (leaves the group)."""
        ok = True
        offsets = {}
        with self._lock:
            for tp, part in list(self.partitions.items()):
                if part.status in PERSISTING:
                    persisted = self._checkpoint(part, commit=False)
                    ok = ok and persisted
                    if persisted and part.next_offset is not None:
                        offsets[tp] = OffsetAndMetadata(part.next_offset, "", -1)
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
        """Claim each newly assigned partition in Redis, restore its learners and seek."""
        with self._lock:
            self._joined = True
            for tp in tps:
                self.metrics.rebalances.labels(event="assigned").inc()
                part = self.partitions.setdefault(tp, Partition(tp))
                self._claim(part)
            self._update_gauges(force=True)

    def release(self, tps: Iterable[TopicPartition], commit: bool) -> None:
        """Checkpoint partitions we are giving up (fenced if already lost), then forget them."""
        with self._lock:
            for tp in tps:
                part = self.partitions.pop(tp, None)
                if part is None:
                    continue
                self.metrics.rebalances.labels(event="revoked").inc()
                with contextlib.suppress(KeyError):  # no lag reported for it yet
                    self.metrics.consumer_lag.remove(str(tp.partition))
                if part.status in PERSISTING:
                    self._checkpoint(part, commit=commit)
                with contextlib.suppress(KeyError):
                    self.metrics.unreadable_partition.remove(str(tp.partition))
                log.info(
                    "partition released",
                    extra={
                        "event": "released",
                        "partition": tp.partition,
                        "status": part.status.value,
                    },
                )
            self._update_gauges(force=True)

    def _claim(self, part: Partition) -> None:
        tp = part.tp
        try:
            state = self.store.claim(tp.topic, tp.partition)
            learners = self._restore(state.blobs)
        except (StoreError, ValueError) as exc:
            part.reset(Status.NEEDS_CLAIM)
            self._pause(part, exc, "claim_failed")
            return
        part.reset(Status.ACTIVE)
        part.epoch = state.epoch
        part.learners = learners
        part.next_offset = part.stored_offset = state.offset
        part.dlq_mark = state.dlq_mark
        part.dlq_sent = None if self.dlq_reader is not None else set()
        part.failures = 0
        part.last_checkpoint_at = self.clock.monotonic()
        if state.offset is None:
            self.consumer.seek(tp, 0)  # out of range (retention) resets to earliest
        else:
            self.consumer.seek(tp, state.offset)
        if tp in self.consumer.paused():  # it was UNREADABLE, and still assigned
            self.consumer.resume(tp)
        log.info(
            "partition claimed",
            extra={
                "event": "claimed",
                "partition": tp.partition,
                "epoch": state.epoch,
                "offset": state.offset,
                "symbols": len(learners),
            },
        )

    def _restore(self, blobs: Mapping[str, bytes]) -> dict[str, OnlineLearner]:
        learners = {}
        for symbol, blob in blobs.items():
            try:
                learners[symbol] = OnlineLearner.from_bytes(blob, self.config)
            except ValueError as exc:
                raise ValueError(f"stored state of symbol {symbol!r} is unreadable: {exc}") from exc
        return learners

    # ------------------------------------------------------------------ records
    def _process_records(
        self, tp: TopicPartition, records: Sequence[Any], polled_at: float
    ) -> None:
        part = self.partitions.get(tp)
        if part is None or part.status is not Status.ACTIVE:
            return  # revoked, fenced or paused: read again after the seek that resumes it
        if part.dlq_sent is None and not self._read_dead_letters(part):
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
        metrics = self.metrics
        key: bytes | None = record.key
        value: bytes | None = record.value
        limit = self.settings.max_message_bytes
        try:
            if key is not None and len(key) > limit:
                raise codec.InvalidTick(codec.TOO_LARGE, f"key is {len(key)} bytes, limit {limit}")
            tick = codec.decode_tick(key, value, max_bytes=limit)
        except codec.InvalidTick as exc:
            self._invalid.inc()
            self._dead_letter(part, record, exc.reason, exc.detail)
            return
        learner = part.learners.get(tick.symbol)
        if learner is None:
            limit = self.settings.max_symbols
            if self._symbol_count() >= limit:
                metrics.evicted_or_refused_symbols.labels(action="refused").inc()
                detail = f"worker holds {self._symbol_count()} symbols, max_symbols is {limit}"
                self._dead_letter(part, record, TOO_MANY_SYMBOLS, detail)
                return
            learner = part.learners[tick.symbol] = OnlineLearner(tick.symbol, self.config)
        if learner.is_late(tick.ts_ms):
            self._late.inc()
            self._dead_letter(
                part, record, codec.LATE, f"ts {tick.ts_ms} is older than the symbol's last tick"
            )
            return
        symbol = tick.symbol
        result = learner.on_tick(tick.ts_ms, tick.price)
        part.dirty.add(symbol)
        p = result.prediction
        tp = part.tp
        value_out = codec.encode_prediction(
            f"{tp.topic}/{tp.partition}/{record.offset}",
            symbol,
            tick.ts_ms,
            p.forecasts,
            p.features_ready,
        )
        partition = self._out_partitions.get(symbol)
        if partition is None:
            partition = self._output_partition(symbol)
        self._send(
            part, self.settings.predictions_topic, symbol.encode(), value_out, None, partition
        )
        self._unshipped += 1
        if self._unshipped >= SHIP_EVERY_TICKS:
            self._ship(polled_at)
        self._n_processed += 1
        if result.steps:
            self._n_steps += result.steps
        if result.refused:
            self._n_refused += result.refused
        for seconds in result.step_seconds:
            metrics.step_seconds.observe(seconds)
        metrics.event_lag_seconds.observe(max(0.0, self.clock.time() - tick.ts_ms / 1000.0))
        for score in result.scores:
            self.rolling[score.horizon].add(score)
            if score.alarm:  # rare: a drift alarm of this symbol's horizon
                metrics.drift_alarms.labels(horizon=str(score.horizon)).inc()

    def _count_batch(self) -> None:
        """Add the batch's counts to the counters (predictions: one per processed tick)."""
        if self._n_processed:
            self._processed.inc(self._n_processed)
            self.metrics.predictions.inc(self._n_processed)
        if self._n_steps:
            self.metrics.learn_steps.inc(self._n_steps)
        if self._n_refused:
            self.metrics.refused_updates.inc(self._n_refused)
        self._n_processed = self._n_steps = self._n_refused = 0

    def _check_output_partitions(self) -> None:
        """Forget the symbols' output partitions when the predictions topic's changed.

        Asked at most once a second (a round trip to the publisher process): records
        sent in between keep the partitions chosen before a change.
        """
        now = self.clock.monotonic()
        if now - self._out_checked_at < OUTPUT_PARTITIONS_CHECK_SECONDS:
            return
        self._out_checked_at = now
        try:
            ids = sorted(self.publisher.partitions_for(self.settings.predictions_topic) or ())
        except KafkaError:
            ids = []  # unknown: every send lets the producer's partitioner decide
        if ids != self._out_partition_ids:
            self._out_partition_ids = ids
            self._out_partitions.clear()

    def _output_partition(self, symbol: str) -> int | None:
        """kafka-python's DefaultPartitioner choice for key `symbol`, remembered."""
        ids = self._out_partition_ids
        if not ids:
            return None
        partition = ids[(murmur2(symbol.encode()) & 0x7FFFFFFF) % len(ids)]
        self._out_partitions[symbol] = partition
        return partition

    def _dead_letter(
        self,
        part: Partition,
        record: Any,
        reason: str,
        detail: str,
        last_offset: int | None = None,
    ) -> None:
        """Send the record to the DLQ, in the DLQ partition numbered like its own partition.

        `record` needs key, value, headers and offset (for a skipped batch: a Marker, and
        `last_offset` ends the skipped range)."""
        self.metrics.dlq.labels(reason=reason).inc()
        if part.dlq_sent and record.offset in part.dlq_sent:
            return  # an earlier owner dead-lettered it after its last checkpoint
        tp = part.tp
        key, value = record.key, record.value
        own = codec.keepable_headers(record.headers)  # null values, non-UTF-8 names
        size = len(key or b"") + len(value or b"") + codec.headers_size(own)
        if size > MAX_DEAD_LETTER_BYTES:
            # Kafka would refuse it (and the partition would rewind forever): keep the why
            # and the where, drop the value, and the record's own headers if still too big.
            detail = f"{detail}; value of {len(value or b'')} bytes not kept: too large"
            value = b""
            if len(key or b"") + codec.headers_size(own) > MAX_DEAD_LETTER_BYTES:
                detail = f"{detail}; its {len(record.headers)} headers not kept: too large"
                own = []
        elif value is None and key is None:
            value = b""  # a record needs a key or a value; the reason header says "null"
        headers = own + codec.dlq_headers(
            reason, detail, tp.topic, tp.partition, record.offset, last_offset
        )
        try:
            self.publisher.send(
                self.settings.dlq_topic,
                key,
                value,
                headers,
                self._dlq_partition(tp),
                tag=tp.partition,
                want_offset=True,  # dlq_last, for the mark the checkpoint stores
            )
        except KafkaError as exc:
            self._mark_send_failed(part, repr(exc))
            self._publish_outcomes()  # records of other partitions may be lost with it

    def _dlq_partition(self, tp: TopicPartition) -> int:
        if self._dlq_partitions is None:
            partitions = self.publisher.partitions_for(self.settings.dlq_topic)
            self._dlq_partitions = max(1, len(partitions or ()))
        return tp.partition % self._dlq_partitions

    def _read_dead_letters(self, part: Partition) -> bool:
        """Find the records of `part` from its offset on that are in the DLQ already.

        Reads the partition's DLQ partition from the stored mark to its end. False (and
        the partition paused for a new claim) when Kafka does not answer in time.
        """
        reader, tp = self.dlq_reader, part.tp
        if reader is None:
            part.dlq_sent = set()
            return True
        start = part.next_offset or 0
        sent: set[int] = set()
        try:
            dlq_tp = TopicPartition(self.settings.dlq_topic, self._dlq_partition(tp))
            reader.assign([dlq_tp])
            reader.seek(dlq_tp, part.dlq_mark or 0)
            deadline = self.clock.monotonic() + DLQ_READ_TIMEOUT_SECONDS
            source = (tp.topic.encode(), str(tp.partition).encode())
            while True:
                for records in reader.poll(timeout_ms=100).values():
                    for record in records:
                        headers = dict(record.headers or [])  # ours come last, so they win
                        if (headers.get(SOURCE_TOPIC), headers.get(SOURCE_PARTITION)) == source:
                            offset = int(headers.get(SOURCE_OFFSET, b"-1"))
                            if offset >= start:
                                sent.add(offset)
                highwater = reader.highwater(dlq_tp)
                if highwater is not None and reader.position(dlq_tp) >= highwater:
                    break
                if self.clock.monotonic() > deadline:
                    raise KafkaTimeoutError(
                        f"reading {dlq_tp} took over {DLQ_READ_TIMEOUT_SECONDS} s"
                    )
        except (KafkaError, ValueError) as exc:
            part.reset(Status.NEEDS_CLAIM)
            self._pause(part, exc, "dlq_read_failed")
            return False
        part.dlq_sent = sent
        if sent:
            log.info(
                "records dead-lettered before a restart will not be sent again",
                extra={"event": "dlq_known", "partition": tp.partition, "records": len(sent)},
            )
        return True

    def _send(
        self,
        part: Partition,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None = None,
    ) -> None:
        try:
            self.publisher.send(topic, key, value, headers, partition, tag=part.tp.partition)
        except KafkaError as exc:  # the publisher process could not take the records
            self._mark_send_failed(part, repr(exc))
            self._publish_outcomes()  # records of other partitions may be lost with it

    def _ship(self, polled_at: float) -> None:
        """Hand the queued records to the publisher process: there each tick's
        `tickprop_process_seconds` (from the poll that brought it) ends."""
        try:
            self.publisher.ship()
        except KafkaError:
            self._publish_outcomes()  # what was lost is reported per partition
        if self._unshipped:
            seconds = self.clock.perf_counter() - polled_at
            observe = self.metrics.process_seconds.observe
            for _ in range(self._unshipped):
                observe(seconds)
            self._unshipped = 0

    def _mark_send_failed(self, part: Partition, error: str) -> None:
        if not part.send_failed:
            log.error(
                "publish failed; partition will be re-read from its last checkpoint",
                extra={"event": "send_failed", "partition": part.tp.partition, "error": error},
            )
        part.send_failed = True

    def _publish_outcomes(self, part: Partition | None = None) -> None:
        """Hand the publisher's reports since the last flush to the partitions they concern.

        Records are tagged with their input partition; `part` is the one being checkpointed,
        which a release has already taken out of `self.partitions`.
        """

        def owner(tag: int) -> Partition | None:
            if part is not None and part.tp.partition == tag:
                return part
            return self.partitions.get(TopicPartition(self.settings.ticks_topic, tag))

        for tag, error in self.publisher.take_failures().items():
            target = owner(tag)
            if target is not None:
                self._mark_send_failed(target, error)
        for tag, offset in self.publisher.take_offsets().items():
            target = owner(tag)
            if target is not None and (target.dlq_last is None or offset > target.dlq_last):
                target.dlq_last = offset

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_is_due(self, part: Partition) -> bool:
        if part.ticks_since_checkpoint == 0:
            return False
        if part.ticks_since_checkpoint >= self.settings.checkpoint_every_ticks:
            return True
        elapsed = self.clock.monotonic() - part.last_checkpoint_at
        return elapsed >= self.settings.checkpoint_every_seconds

    def _checkpoint_due(self) -> None:
        for part in list(self.partitions.values()):
            if part.status is Status.ACTIVE and (self._checkpoint_is_due(part) or part.send_failed):
                self._checkpoint(part)

    def _checkpoint(self, part: Partition, commit: bool = True) -> bool:
        """Flush outputs, write the partition's state and offset, then commit it to Kafka.

        Returns whether the state is persisted. On failure the partition is paused (state
        kept) or, if an output was lost or we were fenced, its state is dropped.
        """
        tp = part.tp
        if part.next_offset is None or (part.ticks_since_checkpoint == 0 and not part.send_failed):
            return True
        started = self.clock.perf_counter()
        try:
            self.publisher.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except KafkaError as exc:
            self._publish_outcomes(part)
            self._checkpoint_failed(part, exc)
            return False
        self._publish_outcomes(part)
        if part.send_failed:
            # Outputs after the last checkpoint may be lost: re-read them from there.
            part.reset(Status.NEEDS_CLAIM)
            self._pause(part, RuntimeError("a publish failed"), "rewind")
            return False
        blobs = {symbol: part.learners[symbol].to_bytes() for symbol in part.dirty}
        mark = None if part.dlq_last is None else part.dlq_last + 1
        try:
            self.store.checkpoint(
                tp.topic, tp.partition, part.epoch, part.next_offset, blobs, dlq_mark=mark,
                stored_offset=part.stored_offset,
            )  # fmt: skip
        except StateWentBack as exc:  # a Redis failover lost checkpoints: re-read from there
            self.metrics.checkpoint_failures.inc()
            part.reset(Status.NEEDS_CLAIM)
            self._pause(part, exc, "state_went_back")
            return False
        except Fenced as exc:
            self.metrics.checkpoint_failures.inc()
            self.metrics.fenced_checkpoints.inc()
            log.warning(
                "fenced: another worker owns this partition now; dropping its state",
                extra={"event": "fenced", "partition": tp.partition, "error": str(exc)},
            )
            part.reset(Status.FENCED)
            part.retry_at = self.clock.monotonic() + 2 * self.settings.session_timeout_ms / 1000
            return False
        except (StoreUnavailable, OffsetWentBackwards) as exc:
            self._checkpoint_failed(part, exc)
            return False
        part.stored_offset = part.next_offset
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.observe(self.clock.perf_counter() - started)
        self.metrics.last_checkpoint_timestamp_seconds.set(self.clock.time())
        self.metrics.dependency_up.labels(dependency="redis").set(1)
        part.dirty.clear()
        part.ticks_since_checkpoint = 0
        part.last_checkpoint_at = self.clock.monotonic()
        if part.failures:
            log.info(
                "checkpoint recovered",
                extra={"event": "checkpoint_recovered", "partition": tp.partition},
            )
            part.failures = 0
        if commit:
            self._commit(tp, part.next_offset)
        return True

    def _commit(self, tp: TopicPartition, offset: int) -> None:
        """Let Kafka's committed offset follow Redis (informational: Redis is the truth).

        Asynchronous, because the rebalance listener runs on kafka-python's IO thread, where
        blocking consumer calls are forbidden.
        """
        try:
            self.consumer.commit_async({tp: OffsetAndMetadata(offset, "", -1)})
        except KafkaError as exc:
            log.warning("kafka commit failed", extra={"event": "commit_failed", "error": repr(exc)})

    def _checkpoint_failed(self, part: Partition, exc: Exception) -> None:
        self.metrics.checkpoint_failures.inc()
        if part.status is Status.ACTIVE:
            part.status = Status.CHECKPOINT_FAILING
        self._pause(part, exc, "checkpoint_failed")

    def _pause(self, part: Partition, exc: BaseException, event: str) -> None:
        """Stop processing `part` until `retry_at`; it resumes with a seek to its offset.

        Records polled for a paused partition are dropped (they are read again after the
        seek). KafkaConsumer.pause() is deliberately not used: in kafka-python 3.0.12 a
        resumed partition whose prefetched records were parked while paused is never
        fetched again (the fetcher restores parked records only while no other partition's
        exhausted records are in line), which stalled the partition for good after a
        Redis outage in test_worker_faults.
        """
        dependency = "redis" if isinstance(exc, StoreError) else "kafka"
        self.metrics.dependency_errors.labels(dependency=dependency).inc()
        self.metrics.dependency_up.labels(dependency=dependency).set(0)
        part.failures += 1
        delay = _backoff(part.failures)
        part.retry_at = self.clock.monotonic() + delay
        log.error(
            f"{event.replace('_', ' ')}; partition paused, retrying",
            extra={
                "event": event,
                "partition": part.tp.partition,
                "error": str(exc),
                "retry_in": round(delay, 3),
                "attempt": part.failures,
            },
        )

    def _retry_paused(self) -> None:
        now = self.clock.monotonic()
        with self._lock:
            for part in list(self.partitions.values()):
                if part.status is Status.ACTIVE or now < part.retry_at:
                    continue
                if part.status is Status.CHECKPOINT_FAILING:
                    if self._checkpoint(part):
                        part.status = Status.ACTIVE
                        self.consumer.seek(part.tp, part.next_offset)
                elif part.status is Status.NEEDS_CLAIM:
                    self._claim(part)
                elif part.status is Status.FENCED and part.tp in self.consumer.assignment():
                    # Still ours per the group long after the fence: the other claimer was a
                    # stale worker. Take the partition back from Redis.
                    self._claim(part)

    # ------------------------------------------------------------------ unreadable batches
    def _unreadable(self, exc: UnreadableBatch) -> None:
        """A batch of a partition cannot be read: skip it if the operator allows, else
        stop reading that partition (only) and say so until someone does."""
        part = self.partitions.get(exc.tp)
        if part is None or part.status is not Status.ACTIVE:
            return  # not ours, or its records are dropped until a seek resumes it
        if part.dlq_sent is None and not self._read_dead_letters(part):
            return
        if self.settings.skip_unreadable_batches and exc.last_offset is not None:
            self._skip_batch(part, exc, exc.last_offset)
            return
        if not self._checkpoint(part):  # keep what was read before the batch
            return
        # KafkaConsumer.pause() is safe here, unlike in _pause: fetch_guard drained the
        # partition's records in line, so the fetcher parks no parsed records for it.
        self.consumer.pause(exc.tp)
        part.status = Status.UNREADABLE
        part.unreadable = exc
        self.metrics.unreadable_partition.labels(partition=str(exc.tp.partition)).set(1)
        self._log_unreadable(part)

    def _log_unreadable(self, part: Partition) -> None:
        exc = part.unreadable
        if exc is None:
            return
        part.unreadable_logged_at = self.clock.monotonic()
        log.error(
            "partition cannot be read at this offset; it waits (set "
            "TICKPROP_SKIP_UNREADABLE_BATCHES=true to skip the batch, or fix the cause)",
            extra={
                "event": "partition_unreadable",
                "partition": exc.tp.partition,
                "offset": exc.first_offset,
                "last_offset": exc.last_offset,
                "cause": exc.cause,
                "error": exc.error,
            },
        )

    def _skip_batch(self, part: Partition, exc: UnreadableBatch, last: int) -> None:
        """Dead-letter a marker naming the unreadable offsets, then read on after them."""
        first = max(exc.first_offset, part.next_offset or 0)
        if last >= first:
            detail = (
                f"offsets {first}..{last} of {exc.tp.topic}[{exc.tp.partition}] skipped "
                f"unread ({exc.cause}): {exc.error}"
            )
            self._dead_letter(part, Marker(first), codec.UNREADABLE_BATCH, detail, last)
            self.metrics.skipped_records.inc(last - first + 1)
            log.warning(
                "unreadable batch skipped",
                extra={
                    "event": "batch_skipped",
                    "partition": exc.tp.partition,
                    "offset": first,
                    "last_offset": last,
                    "cause": exc.cause,
                    "error": exc.error,
                },
            )
            part.ticks_since_checkpoint += 1  # the checkpoint keeps the skip
        part.next_offset = max(last + 1, part.next_offset or 0)
        self.consumer.seek(exc.tp, part.next_offset)

    # ------------------------------------------------------------------ gauges
    def _all_active(self) -> bool:
        return all(p.status is Status.ACTIVE for p in self.partitions.values())

    @property
    def lock(self) -> threading.RLock:
        """Held while the loop processes a batch or a rebalance: readers in other threads
        (the query API) take it too."""
        return self._lock

    def held_learners(self) -> dict[int, dict[str, OnlineLearner]]:
        """Input partition -> {symbol: learner} of the state in memory; call under `lock`."""
        return {
            tp.partition: part.learners for tp, part in self.partitions.items() if part.learners
        }

    def _symbol_count(self) -> int:
        return sum(len(p.learners) for p in self.partitions.values())

    def lag(self, part: Partition) -> int | None:
        """Records on the broker not yet processed (highwater from fetches − next offset)."""
        try:
            highwater = self.consumer.highwater(part.tp)
        except KafkaError:
            return None
        if highwater is None:
            return None
        return max(0, highwater - (part.next_offset or 0))

    def _update_gauges(self, force: bool = False) -> None:
        now = self.clock.monotonic()
        if not force and now - self._gauges_at < 0.5:
            return
        self._gauges_at = now
        m = self.metrics
        m.assigned_partitions.set(len(self.partitions))
        m.symbols.set(self._symbol_count())
        m.ready.set(1 if self.ready else 0)
        answering = self.kafka_answering()
        if answering != self._kafka_answering:
            self._kafka_answering = answering
            if answering:
                log.info("kafka answering again", extra={"event": "kafka_answering"})
            else:
                m.dependency_errors.labels(dependency="kafka").inc()
                log.error(
                    "kafka silent: no group heartbeat answered within the session timeout",
                    extra={"event": "kafka_silent"},
                )
        for part in self.partitions.values():
            if part.status is Status.UNREADABLE and now - part.unreadable_logged_at >= (
                UNREADABLE_LOG_SECONDS
            ):
                self._log_unreadable(part)
            lag = self.lag(part)
            if lag is not None:
                m.consumer_lag.labels(partition=str(part.tp.partition)).set(lag)
        for h, rolling in self.rolling.items():
            for model in MODELS:
                accuracy = rolling.accuracy(model)
                if accuracy is not None:
                    m.prequential_accuracy.labels(model=model, horizon=str(h)).set(accuracy)
            for model in PROBABILISTIC:
                loss = rolling.log_loss(model)
                if loss is not None:
                    m.prequential_log_loss.labels(model=model, horizon=str(h)).set(loss)

    def _idle_for(self, seconds: float) -> bool:
        """Drained (no lag on any partition, all active) and no record for `seconds`."""
        if not self._joined or self.clock.monotonic() - self._last_record_at < seconds:
            return False
        with self._lock:
            return self._all_active() and all(self.lag(p) == 0 for p in self.partitions.values())


@dataclass(frozen=True)
class Marker:
    """The record a skipped batch is dead-lettered as: no key, no value, no headers."""

    offset: int
    key: None = None
    value: None = None
    headers: tuple[()] = ()


def _backoff(attempt: int) -> float:
    """0.25 s, 0.5 s, 1 s, ... capped at MAX_BACKOFF_SECONDS."""
    return float(min(MAX_BACKOFF_SECONDS, 0.25 * 2 ** min(attempt - 1, 10)))
