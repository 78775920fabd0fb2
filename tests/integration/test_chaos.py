"""Chaos: workers SIGKILLed at random moments over a paced stream of real ticks.

Whatever the kills, every symbol's state in Redis (`tickprop inspect`) must equal
`tickprop backtest` over the same ticks, bit for bit, with one prediction id per valid
tick and re-sent predictions identical to the first. The kill moments come from
TICKPROP_CHAOS_SEED (random when unset, printed either way) so a failure can be replayed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from harness import (
    PacedProducer,
    backtest_symbols,
    check_predictions,
    inspect_symbols,
    seed_from_env,
)
from worker_kit import (
    Names,
    WorkerProcess,
    mixed_ticks,
    stored_offsets,
    tick_records,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.slow  # ~100 s together: `-m "not slow"` skips them locally

SETTINGS = {
    "session_timeout_ms": 3000,  # a killed member leaves the group after 3 s
    "heartbeat_interval_ms": 1000,
    "checkpoint_every_ticks": 300,  # kills land between checkpoints: work is redone
    "checkpoint_every_seconds": 0.5,
}
ALL = set(range(6))


def _persisted(redis_url: str, group: str) -> int:
    return sum(stored_offsets(redis_url, group).values())


def test_worker_killed_at_random_moments_ends_in_the_backtest_state(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    seed = seed_from_env("TICKPROP_CHAOS_SEED")
    rng = random.Random(seed)
    names = Names.fresh()
    env = worker_env(broker, redis_url, names, **SETTINGS)
    ticks = mixed_ticks(n_stocks=6000, n_es=16000)  # 22,000 real ticks, 6 symbols
    # One chunk of the stream per worker lifetime, produced live over ~2 s from its claim,
    # so every kill lands mid-stream however slow the machine; the 11th chunk comes last.
    chunk = -(-len(ticks) // 11)
    stream = PacedProducer(broker, names.ticks, tick_records(ticks), rate=1000, gated=True)
    stream.start()
    mid_stream_kills = startup_kills = 0
    started = time.monotonic()
    n = 0
    while mid_stream_kills < 10 and n < 16:
        n += 1
        worker = WorkerProcess(env, tmp_path / f"worker{n}.log")
        if n in (3, 8):  # killed while starting or joining the group, before any claim
            time.sleep(rng.uniform(0.2, 3.0))
            worker.kill()
            startup_kills += 1
            continue
        wait_until(lambda w=worker: w.events("claimed"), timeout=60, what=f"worker{n} claiming")
        stream.allow(chunk)
        time.sleep(rng.uniform(0.0, 2.5))
        worker.kill()
        persisted = _persisted(redis_url, names.group)
        if persisted < len(ticks):  # the stream was not yet all processed and saved
            mid_stream_kills += 1
    kill_phase = time.monotonic() - started
    last = WorkerProcess(env, tmp_path / "last.log", "--max-idle-seconds", "3")
    produced = stream.finish()
    assert last.wait(timeout=180) == 0, last.tail()
    print(
        f"chaos seed {seed}: {mid_stream_kills} mid-stream + {startup_kills} start-up kills "
        f"in {kill_phase:.0f} s over {len(ticks)} ticks"
    )

    assert mid_stream_kills >= 10, f"seed {seed}: only {mid_stream_kills} kills mid-stream"
    assert stored_offsets(redis_url, names.group) == produced.end_offsets()
    expected = backtest_symbols(produced, tmp_path, env)
    assert len(expected) >= 5
    assert inspect_symbols(env) == expected, f"seed {seed}: state differs from the backtest"
    resent = check_predictions(broker, names.predictions, names.ticks, produced)
    print(f"chaos seed {seed}: {resent} predictions re-sent after kills, all identical")


def test_three_workers_one_killed_for_good_the_others_finish_with_the_backtest_state(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    seed = seed_from_env("TICKPROP_CHAOS_SEED")
    rng = random.Random(seed + 1)
    names = Names.fresh()
    env = worker_env(broker, redis_url, names, **SETTINGS)
    ticks = mixed_ticks(n_stocks=4000, n_es=8000)
    stream = PacedProducer(broker, names.ticks, tick_records(ticks), rate=600)
    stream.start()
    workers = [WorkerProcess(env, tmp_path / f"worker{n}.log") for n in range(3)]
    try:
        wait_until(
            lambda: (
                all(w.owned() for w in workers)
                and set().union(*(w.owned() for w in workers)) == ALL
            ),
            timeout=90,
            what="three workers sharing the six partitions",
        )
        time.sleep(rng.uniform(0.5, 3.0))
        victim = workers.pop(rng.randrange(3))
        assert victim.owned(), "the victim owns partitions when it dies"
        victim.kill()
        assert stream.sent < len(ticks), "the kill must land mid-stream"
        killed_at = time.monotonic()
        wait_until(
            lambda: set().union(*(w.owned() for w in workers)) == ALL,
            timeout=60,
            what="the survivors taking over every partition",
        )
        takeover = time.monotonic() - killed_at
        produced = stream.finish()
        wait_until(
            lambda: stored_offsets(redis_url, names.group) == produced.end_offsets(),
            timeout=120,
            what="the survivors checkpointing the whole stream",
        )
        for w in workers:
            assert w.terminate() == 0, w.tail()
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.kill()
    print(f"chaos seed {seed}: survivors owned every partition {takeover:.1f} s after the kill")

    expected = backtest_symbols(produced, tmp_path, env)
    assert inspect_symbols(env) == expected, f"seed {seed}: state differs from the backtest"
    check_predictions(broker, names.predictions, names.ticks, produced)
