"""Outages: Redis stopped, the broker frozen, a worker frozen past its session timeout.

In each case the worker must say it is not ready while it cannot persist, not advance
without persistence, recover by itself, and end with every symbol's state equal to
`tickprop backtest` over the same ticks. Figures (time to notice, time to recover) are
printed for docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    PacedProducer,
    backtest_symbols,
    check_predictions,
    http_status,
    inspect_symbols,
    metric,
    metrics_port,
)
from worker_kit import (
    Names,
    WorkerProcess,
    mixed_ticks,
    store_for,
    stored_offsets,
    tick_records,
    wait_until,
    worker_env,
)

from service.tools.embedded import EmbeddedBroker, EmbeddedRedis, create_topics

OUTAGE_SECONDS = 10.0
ALL = set(range(6))


def _processed(port: int) -> float | None:
    return metric(port, "tickprop_ticks_total", 'outcome="processed"')


def _await_status(port: int, status: int, timeout: float, what: str) -> float:
    """Seconds until /readyz answers `status`."""
    started = time.monotonic()
    wait_until(lambda: http_status(port, "/readyz") == status, timeout=timeout, what=what)
    return time.monotonic() - started


def _finish_and_compare(
    stream: PacedProducer,
    workers: list[WorkerProcess],
    broker: str,
    redis_url: str,
    names: Names,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Drain the stream, stop the workers cleanly, compare with the backtest and outputs."""
    produced = stream.finish()
    wait_until(
        lambda: stored_offsets(redis_url, names.group) == produced.end_offsets(),
        timeout=120,
        what="the whole stream checkpointed",
    )
    for w in workers:
        assert w.terminate() == 0, w.tail()
    assert inspect_symbols(env) == backtest_symbols(produced, tmp_path, env)
    check_predictions(broker, names.predictions, names.ticks, produced)


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone, persisting to an append-only file."""
    with EmbeddedRedis(persist=True) as server:
        yield server


def test_redis_stopped_for_10_s_worker_unready_paused_then_resumes_bit_identical(
    broker: str, own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    names = Names.fresh()
    url = own_redis.url
    env = worker_env(broker, url, names, checkpoint_every_ticks=300)
    stream = PacedProducer(broker, names.ticks, tick_records(mixed_ticks(3000, 6000)), rate=400)
    stream.start()
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        port = metrics_port(worker)
        _await_status(port, 200, 60, "the worker ready")
        wait_until(lambda: sum(stored_offsets(url, names.group).values()) > 500, 60, "progress")

        own_redis.stop()
        down_at = time.monotonic()
        noticed = _await_status(port, 503, OUTAGE_SECONDS, "/readyz 503 with Redis down")
        time.sleep(2.0)  # every partition has hit a failed checkpoint and paused by now
        frozen = _processed(port)
        time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.monotonic()))
        assert _processed(port) == frozen, "ticks were processed while Redis was down"
        assert http_status(port, "/healthz") == 200, "alive: no crash, no restart loop"
        assert worker.process.poll() is None

        own_redis.start()  # same port, data back from the append-only file
        recovered = _await_status(port, 200, 60, "/readyz 200 after Redis is back")
        # Ready comes first (the retried checkpoint succeeds), the next poll's ticks after.
        wait_until(lambda: _processed(port) > frozen, 10, "processing advancing again")
        print(
            f"redis outage {OUTAGE_SECONDS:.0f} s: /readyz 503 after {noticed:.2f} s, "
            f"ready again {recovered:.2f} s after Redis restarted"
        )
        assert worker.events("checkpoint_failed"), "the failures were logged"
        assert worker.events("checkpoint_recovered")
        _finish_and_compare(stream, [worker], broker, url, names, env, tmp_path)
    finally:
        if worker.process.poll() is None:
            worker.kill()


def test_broker_frozen_for_10_s_worker_unready_no_crash_then_bit_identical(
    redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    with EmbeddedBroker() as own_broker:
        bootstrap = own_broker.bootstrap
        env = worker_env(bootstrap, redis_url, names, checkpoint_every_ticks=300)
        ticks = tick_records(mixed_ticks(3000, 6000))
        stream = PacedProducer(bootstrap, names.ticks, ticks, rate=400)
        stream.start()
        worker = WorkerProcess(env, tmp_path / "worker.log")
        try:
            port = metrics_port(worker)
            _await_status(port, 200, 60, "the worker ready")
            wait_until(
                lambda: sum(stored_offsets(redis_url, names.group).values()) > 500, 60, "progress"
            )
            own_broker.pause()  # SIGSTOP: connections open, nothing answered
            noticed = _await_status(port, 503, OUTAGE_SECONDS, "/readyz 503 with the broker down")
            persisted = stored_offsets(redis_url, names.group)
            time.sleep(max(0.0, OUTAGE_SECONDS - noticed))
            assert worker.process.poll() is None, worker.tail()
            assert http_status(port, "/healthz") == 200
            own_broker.resume()
            recovered = _await_status(port, 200, 90, "/readyz 200 after the broker is back")
            print(
                f"broker frozen {OUTAGE_SECONDS:.0f} s: /readyz 503 after {noticed:.2f} s, "
                f"ready again {recovered:.2f} s after it resumed"
            )
            # No log line is asserted: the loop may sit inside kafka-python (a poll or a
            # flush) for the whole freeze; /readyz, served by its own thread, tells it.
            assert all(
                stored_offsets(redis_url, names.group)[p] >= offset
                for p, offset in persisted.items()
            )
            _finish_and_compare(stream, [worker], bootstrap, redis_url, names, env, tmp_path)
        finally:
            if worker.process.poll() is None:
                worker.kill()


def test_worker_frozen_past_its_session_cannot_overwrite_the_new_owners_checkpoint(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    # Checkpoints every 3 s: the frozen worker almost surely holds unsaved ticks.
    env = worker_env(
        broker,
        redis_url,
        names,
        session_timeout_ms=3000,
        checkpoint_every_ticks=100_000,
        checkpoint_every_seconds=3,
    )
    stream = PacedProducer(broker, names.ticks, tick_records(mixed_ticks(4000, 8000)), rate=500)
    stream.start()
    a = WorkerProcess(env, tmp_path / "a.log")
    b = WorkerProcess(env, tmp_path / "b.log")
    store = store_for(redis_url, names.group)
    try:
        wait_until(
            lambda: a.owned() and b.owned() and a.owned() | b.owned() == ALL,
            timeout=60,
            what="both workers owning partitions",
        )
        time.sleep(1.5)
        a_parts = a.owned()
        a_epochs = {e["partition"]: e["epoch"] for e in a.events("claimed")}
        os.kill(a.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_until(lambda: b.owned() == ALL, timeout=30, what="b claiming a's partitions")
        taken_over = time.monotonic() - frozen_at
        time.sleep(max(0.0, 8.0 - taken_over))  # b checkpoints a's partitions meanwhile
        os.kill(a.process.pid, signal.SIGCONT)
        wait_until(lambda: a.events("fenced"), timeout=30, what="a's stale checkpoint fenced")
        states = store.load_all()
        for p in a_parts:
            assert states[(names.ticks, p)].epoch != a_epochs[p]  # claimed again since
        fenced = {e["partition"] for e in a.events("fenced")}
        assert fenced <= a_parts
        print(
            f"fencing: a frozen, b owned all partitions {taken_over:.1f} s later; "
            f"a's checkpoints of partitions {sorted(fenced)} refused after SIGCONT"
        )
        _finish_and_compare(stream, [a, b], broker, redis_url, names, env, tmp_path)
    finally:
        for w in (a, b):
            if w.process.poll() is None:
                os.kill(w.process.pid, signal.SIGCONT)
                w.kill()


def test_broker_killed_and_restarted_empty_then_replayed_worker_resumes_from_redis(
    redis_url: str, tmp_path: Path
) -> None:
    """The embedded broker keeps topics in memory only, so a restart loses them all.

    A source that replays the stream into the new broker writes the same records at the
    same offsets (keyed partitioning, same order); the worker must survive the gap without
    a crash loop, then continue from the offsets in Redis, applying nothing twice.
    """
    names = Names.fresh()
    ticks = tick_records(mixed_ticks(2000, 4000))
    half = len(ticks) // 2
    with EmbeddedBroker() as own_broker:
        bootstrap = own_broker.bootstrap
        env = worker_env(bootstrap, redis_url, names, checkpoint_every_ticks=300)
        first = PacedProducer(bootstrap, names.ticks, ticks[:half], rate=10_000)
        first.start()
        first_half = first.finish()
        worker = WorkerProcess(env, tmp_path / "worker.log")
        try:
            port = metrics_port(worker)
            wait_until(
                lambda: stored_offsets(redis_url, names.group) == first_half.end_offsets(),
                timeout=60,
                what="the first half checkpointed",
            )
            before = stored_offsets(redis_url, names.group)
            own_broker.kill()  # SIGKILL: every topic and the group are gone
            killed_at = time.monotonic()
            noticed = _await_status(port, 503, 30, "/readyz 503 with the broker gone")
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - killed_at)))
            assert worker.process.poll() is None, worker.tail()  # no crash, no restart loop
            assert stored_offsets(redis_url, names.group) == before  # state untouched

            own_broker.start()  # same port, empty
            for topic in (names.predictions, names.dlq):
                create_topics(bootstrap, [topic], partitions=6)
            replay = PacedProducer(bootstrap, names.ticks, ticks, rate=10_000)
            replay.start()
            produced = replay.finish()
            replayed = dict(zip(produced.positions, produced.records, strict=True))
            for position, record in zip(first_half.positions, first_half.records, strict=True):
                assert replayed[position] == record  # the same records at the same offsets
            recovered = _await_status(port, 200, 60, "/readyz 200 after the restart")
            wait_until(
                lambda: stored_offsets(redis_url, names.group) == produced.end_offsets(),
                timeout=90,
                what="the replayed stream checkpointed",
            )
            print(
                f"broker killed {OUTAGE_SECONDS:.0f} s: /readyz 503 after {noticed:.2f} s; "
                f"ready again {recovered:.2f} s after the replay was produced"
            )
            assert worker.terminate() == 0, worker.tail()
        finally:
            if worker.process.poll() is None:
                worker.kill()
    assert inspect_symbols(env) == backtest_symbols(produced, tmp_path, env)
