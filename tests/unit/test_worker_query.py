"""The worker's side of the scorecards: drift alarms counted, the spread metrics and the query
API read live learners while the loop runs in another thread (fake consumer, in-memory store)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import numpy as np
from fakes import FakeConsumer, FakePublisher
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from service import query_api
from service.memory_store import MemoryStore
from service.metrics import Metrics
from service.query_api import LockedDirectory
from service.settings import Settings
from service.worker import Worker

TP = TopicPartition("ticks", 0)


class StreamConsumer(FakeConsumer):
    """Hands out the given batches of records, one per poll, then nothing."""

    def __init__(self, batches: list[list[Any]]) -> None:
        super().__init__()
        self.batches = deque(batches)

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        return {TP: self.batches.popleft()} if self.batches else {}


def flipping_records(n_segments: int = 4, length: int = 1500) -> list[Any]:
    """Ticks of ES whose moves repeat the last sign w.p. 0.9, then 0.1, ...: drift alarms."""
    rng = np.random.default_rng(5)
    records, price, sign = [], 100.0, 1.0
    for segment in range(n_segments):
        q = 0.9 if segment % 2 == 0 else 0.1
        for u in rng.random(length):
            sign = sign if u < q else -sign
            price += 0.25 * sign
            i = len(records)
            body = {"symbol": "ES", "ts": 1_700_000_000_000 + i, "price": price}
            records.append(
                SimpleNamespace(key=b"ES", value=json.dumps(body).encode(), offset=i, headers=[])
            )
    return records


def test_alarms_are_counted_and_the_api_reads_live_learners_while_the_loop_runs() -> None:
    records = flipping_records()
    consumer = StreamConsumer([records[i : i + 100] for i in range(0, len(records), 100)])
    consumer.assigned.add(TP)
    metrics = Metrics(CollectorRegistry(), horizons=(1, 5))
    worker = Worker(Settings(horizons=(1, 5)), consumer, FakePublisher(), MemoryStore("g"), metrics)
    directory = LockedDirectory(worker.lock, worker.ownership.held_learners)
    metrics.watch_spread(directory.spread)
    worker.assign([TP])
    answers: list[tuple[int, bytes]] = []

    def drain() -> None:
        worker.start()
        while consumer.batches:
            worker.step()
            # Between steps the worker's lock is free, but a thread waiting for it rarely
            # gets it before this one takes it again: let the readers in, as the real
            # loop's poll() does, so that they ask while the loop learns.
            time.sleep(0.001)

    loop = threading.Thread(target=drain)
    loop.start()
    while loop.is_alive():  # ask while the loop learns: every answer is whole and valid
        answers.append(query_api.answer("/symbols/ES", directory))
        metrics.exposition()
    loop.join()
    assert len(answers) > 1
    for status, body in answers:
        assert status in (200, 404)  # 404 only before ES's first tick
        if status == 200:
            assert set(json.loads(body)["scorecard"]) == {"1", "5"}

    status, body = query_api.answer("/symbols/ES", directory)
    learner = worker.ownership.held_learners()[0]["ES"]
    final = json.loads(body)
    assert status == 200 and final["model_version"] > 0
    assert final == json.loads(json.dumps(query_api.query_object(learner, 0)))
    r = metrics.registry
    for h in ("1", "5"):
        counted = r.get_sample_value("tickprop_drift_alarms_total", {"horizon": h})
        assert counted == final["drift"][h]["alarms"]
        assert r.get_sample_value("tickprop_symbols_judged", {"horizon": h}) in (0.0, 1.0)
    assert final["drift"]["1"]["alarms"] >= 2
