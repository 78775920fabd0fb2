"""kill -9 of a worker mid-stream, then restarts: state bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from worker_kit import (
    Names,
    Produced,
    WorkerProcess,
    mixed_ticks,
    produce,
    read_topic,
    reference_symbols,
    stored_offsets,
    stored_symbols,
    tick_records,
    valid_ids,
    wait_until,
    worker_env,
)


def test_kill_9_mid_stream_and_restart_gives_the_uninterrupted_state(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    ticks = mixed_ticks(n_stocks=3000, n_es=4500)
    chunks = [ticks[:3000], ticks[3000:6000], ticks[6000:]]
    env = worker_env(broker, redis_url, names, checkpoint_every_ticks=50, session_timeout_ms=3000)
    produced = Produced()
    mid_stream_kills = 0
    for n, chunk in enumerate(chunks[:2]):
        done_before = sum(stored_offsets(redis_url, names.group).values())
        produce(broker, names.ticks, tick_records(chunk), into=produced)
        worker = WorkerProcess(env, tmp_path / f"worker{n}.log")
        wait_until(
            lambda: sum(stored_offsets(redis_url, names.group).values()) > done_before,
            timeout=60,
            what="a checkpoint of the new worker",
            step=0.02,
        )
        worker.kill()
        if sum(stored_offsets(redis_url, names.group).values()) < len(produced.records):
            mid_stream_kills += 1
    produce(broker, names.ticks, tick_records(chunks[2]), into=produced)
    last = WorkerProcess(env, tmp_path / "last.log", "--max-idle-seconds", "2")
    assert last.wait(timeout=120) == 0, last.tail()

    assert mid_stream_kills >= 1  # the kills interrupted work, not an idle worker
    assert stored_offsets(redis_url, names.group) == produced.end_offsets()
    assert stored_symbols(redis_url, names.group) == reference_symbols(produced)

    by_id: dict[str, set[bytes]] = defaultdict(set)
    for record in read_topic(broker, names.predictions):
        by_id[json.loads(record.value)["id"]].add(record.value)
    assert set(by_id) == valid_ids(names.ticks, produced)
    assert all(len(values) == 1 for values in by_id.values())  # re-sent ones are identical
