"""Two workers in one consumer group: they split the partitions and hand over when one leaves."""

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

ALL = set(range(6))


def test_two_workers_split_partitions_and_hand_over_when_one_leaves(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    ticks = mixed_ticks(n_stocks=2000, n_es=2000)
    env = worker_env(broker, redis_url, names, checkpoint_every_ticks=200)
    produced = produce(broker, names.ticks, tick_records(ticks[:2000]), into=Produced())
    a = WorkerProcess(env, tmp_path / "a.log")
    b = WorkerProcess(env, tmp_path / "b.log")
    try:
        wait_until(
            lambda: (
                a.owned()
                and b.owned()
                and a.owned() | b.owned() == ALL
                and not a.owned() & b.owned()
            ),
            timeout=60,
            what="both workers owning a share of the partitions",
        )
        wait_until(
            lambda: stored_offsets(redis_url, names.group) == produced.end_offsets(),
            timeout=60,
            what="the first half checkpointed",
        )
        assert a.terminate() == 0, a.tail()
        assert a.events("stopped")[-1]["final_checkpoints_ok"] is True
        wait_until(lambda: b.owned() == ALL, timeout=60, what="b taking over every partition")
        produce(broker, names.ticks, tick_records(ticks[2000:]), into=produced)
        wait_until(
            lambda: stored_offsets(redis_url, names.group) == produced.end_offsets(),
            timeout=60,
            what="the second half checkpointed by b",
        )
        assert b.terminate() == 0, b.tail()
    finally:
        for worker in (a, b):
            if worker.process.poll() is None:
                worker.kill()

    assert stored_symbols(redis_url, names.group) == reference_symbols(produced)
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for record in read_topic(broker, names.predictions):
        by_id[json.loads(record.value)["id"]].add(record.value)
    assert set(by_id) == valid_ids(names.ticks, produced)
    assert all(len(values) == 1 for values in by_id.values())
