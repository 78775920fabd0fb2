"""Helpers of the worker's integration tests: real data slices, producing, running workers.

Everything talks to the real broker and redis-server of the session fixtures; workers run
as `tickprop worker` subprocesses (`python -m service.cli worker`).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from model.learner import LearnerConfig, OnlineLearner
from service.codec import InvalidTick, decode_tick
from service.fetch_guard import guard
from service.store import Store, connect
from service.tools.embedded import create_topics
from service.tools.inspect import summarise

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"


@dataclass(frozen=True)
class Tick:
    symbol: str
    ts: int
    price: float
    volume: float | None = None

    def value(self) -> bytes:
        body: dict[str, Any] = {"symbol": self.symbol, "ts": self.ts, "price": self.price}
        if self.volume is not None:
            body["volume"] = self.volume
        return json.dumps(body).encode()


def read_ticks(name: str, limit: int, symbols: Iterable[str] | None = None) -> list[Tick]:
    """The first `limit` rows of data/<name> (optionally only `symbols`)."""
    wanted = set(symbols) if symbols is not None else None
    out: list[Tick] = []
    with gzip.open(DATA / name, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if wanted is not None and row["symbol"] not in wanted:
                continue
            volume = float(row["volume"])
            out.append(Tick(row["symbol"], int(row["ts"]), float(row["price"]), volume))
            if len(out) >= limit:
                break
    return out


def mixed_ticks(n_stocks: int, n_es: int) -> list[Tick]:
    """Daily closes of five stocks interleaved with E-mini trades: a keyed multi-symbol stream."""
    stocks = read_ticks("stocks_daily_2000-2013.csv.gz", n_stocks)
    es = read_ticks("es_ticks_2013-09-01_03.csv.gz", n_es)
    out: list[Tick] = []
    for i in range(max(len(stocks), len(es))):
        out.extend(stocks[i : i + 1])
        out.extend(es[i : i + 1])
    return out


@dataclass
class Produced:
    """Records written to the ticks topic, with where each landed."""

    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    positions: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)

    def end_offsets(self) -> dict[int, int]:
        ends: dict[int, int] = {}
        for partition, offset in self.positions:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        return ends


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
    partitions: int = 6,
    into: Produced | None = None,
) -> Produced:
    """Send records (key, value, headers) keyed as given; wait for every acknowledgement."""
    create_topics(bootstrap, [topic], partitions=partitions)
    out = into if into is not None else Produced()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = []
        for key, value, headers in records:
            out.records.append((key, value, list(headers or [])))
            futures.append(producer.send(topic, key=key, value=value, headers=headers or None))
        producer.flush()
        for future in futures:
            meta = future.get(timeout=30)
            out.positions.append((meta.partition, meta.offset))
    finally:
        producer.close()
    return out


def tick_records(ticks: Iterable[Tick]) -> list[tuple[bytes, bytes, None]]:
    return [(t.symbol.encode(), t.value(), None) for t in ticks]


def dlq_source(record: Any) -> tuple[int, int]:
    """(partition, offset) of the tick a dead letter stands for, from its headers."""
    headers = dict(record.headers)
    return int(headers["tickprop.source.partition"]), int(headers["tickprop.source.offset"])


def read_topic(bootstrap: str, topic: str, idle_ms: int = 1500) -> list[Any]:
    """Every record of `topic` now on the broker (no group, from the beginning)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
    )
    guard(consumer)  # header names that are not UTF-8 are read, not a hang
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        return list(consumer)
    finally:
        consumer.close()


def worker_env(broker: str, redis_url: str, names: Any, **settings: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(names.env())
    env.update(
        TICKPROP_KAFKA_BOOTSTRAP_SERVERS=broker,
        TICKPROP_REDIS_URL=redis_url,
        TICKPROP_METRICS_PORT="0",
        TICKPROP_METRICS_HOST="127.0.0.1",
        TICKPROP_CHECKPOINT_EVERY_SECONDS="0.5",
    )
    env.update({f"TICKPROP_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class WorkerProcess:
    """`tickprop worker` in a subprocess; its stderr (JSON lines) kept in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in wait/kill)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                out.append(entry)
        return out

    def owned(self) -> set[int]:
        """Partitions this worker claimed and has not released since (from its log)."""
        owned: set[int] = set()
        for entry in self.events():
            if entry.get("event") == "claimed":
                owned.add(entry["partition"])
            elif entry.get("event") == "released":
                owned.discard(entry["partition"])
        return owned

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def store_for(redis_url: str, group: str, cluster: bool = False) -> Store:
    """A Store of `group`; `cluster`: `redis_url` is a node of a Redis Cluster."""
    return Store(connect(redis_url, cluster), group)


def stored_symbols(redis_url: str, group: str, cluster: bool = False) -> dict[str, dict[str, Any]]:
    """`tickprop inspect`'s "symbols" for the group."""
    return dict(summarise(store_for(redis_url, group, cluster), LearnerConfig())["symbols"])


def stored_offsets(redis_url: str, group: str, cluster: bool = False) -> dict[int, int]:
    return {
        partition: state.offset
        for (_, partition), state in store_for(redis_url, group, cluster).load_all().items()
        if state.offset is not None
    }


def reference_symbols(produced: Produced) -> dict[str, dict[str, Any]]:
    """The learner run in-process, uninterrupted, over the valid ticks in partition order.

    Each symbol lives in one partition, so its ticks' order is the order they were produced.
    """
    learners: dict[str, OnlineLearner] = {}
    for key, value, _ in produced.records:
        try:
            tick = decode_tick(key, value)
        except InvalidTick:
            continue
        learner = learners.setdefault(tick.symbol, OnlineLearner(tick.symbol, LearnerConfig()))
        if not learner.is_late(tick.ts_ms):
            learner.on_tick(tick.ts_ms, tick.price)
    return {
        symbol: {"model_version": ln.model_version, "weights_sha256": ln.weights_sha256()}
        for symbol, ln in learners.items()
    }


def valid_ids(topic: str, produced: Produced) -> set[str]:
    """Prediction ids the worker owes: one per record that decodes and is not late."""
    last_ts: dict[str, int] = {}
    ids = set()
    for (key, value, _), (partition, offset) in zip(
        produced.records, produced.positions, strict=True
    ):
        try:
            tick = decode_tick(key, value)
        except InvalidTick:
            continue
        if tick.ts_ms < last_ts.get(tick.symbol, -1):
            continue
        last_ts[tick.symbol] = tick.ts_ms
        ids.add(f"{topic}/{partition}/{offset}")
    return ids


@dataclass(frozen=True)
class Names:
    """Topics and group of one test (the servers are shared by the session)."""

    ticks: str
    predictions: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls) -> Names:
        tag = os.urandom(5).hex()
        return cls(f"ticks-{tag}", f"predictions-{tag}", f"ticks-{tag}.dlq", f"group-{tag}")

    def env(self) -> dict[str, str]:
        return {
            "TICKPROP_TICKS_TOPIC": self.ticks,
            "TICKPROP_PREDICTIONS_TOPIC": self.predictions,
            "TICKPROP_DLQ_TOPIC": self.dlq,
            "TICKPROP_GROUP_ID": self.group,
        }

    def settings(self, broker: str, redis_url: str, **settings: Any) -> Any:
        """Worker settings for these topics and group on the given servers."""
        from service.settings import Settings

        return Settings(
            kafka_bootstrap_servers=broker,
            redis_url=redis_url,
            ticks_topic=self.ticks,
            predictions_topic=self.predictions,
            dlq_topic=self.dlq,
            group_id=self.group,
            **settings,
        )


def in_process_worker(broker: str, redis_url: str, names: Names, **settings: Any) -> Any:
    """A real Worker (real consumer, publisher, store; fresh metrics registry), started."""
    from service.main import CONSUMER_OPTIONS, PRODUCER_OPTIONS
    from service.metrics import Metrics
    from service.publisher import ProcessPublisher
    from service.worker import Worker

    s = names.settings(broker, redis_url, **settings)
    client = s.redis_client()
    worker = Worker(
        s,
        KafkaConsumer(**s.kafka_consumer_kwargs(), **CONSUMER_OPTIONS),
        ProcessPublisher(s.kafka_client_kwargs(), PRODUCER_OPTIONS),
        Store(client, names.group),
        Metrics(),
    )
    worker.start()
    return worker


def step_until(worker: Any, condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        worker.step()


def step_until_checkpointed(
    worker: Any, redis_url: str, group: str, produced: Produced, timeout: float, what: str
) -> None:
    """Step `worker` until Redis holds, for every partition, the end offset produced."""
    step_until(
        worker, lambda: stored_offsets(redis_url, group) == produced.end_offsets(), timeout, what
    )
