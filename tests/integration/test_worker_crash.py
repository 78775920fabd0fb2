"""kill -9 a worker mid-stream and restart it: bit-identical state, no output lost or changed."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from worker_kit import (
    Names,
    Produced,
    WorkerProcess,
    dlq_source,
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

from service.codec import InvalidTick, decode_tick


def test_kill_9_mid_stream_and_restart_gives_the_uninterrupted_state(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    records = with_bad_records(tick_records(mixed_ticks(n_stocks=3000, n_es=4500)), every=30)
    chunks = [records[:3000], records[3000:6000], records[6000:]]
    env = worker_env(broker, redis_url, names, checkpoint_every_ticks=50, session_timeout_ms=3000)
    produced = Produced()
    mid_stream_kills = 0
    for n, chunk in enumerate(chunks[:2]):
        done_before = sum(stored_offsets(redis_url, names.group).values())
        produce(broker, names.ticks, chunk, into=produced)
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
    produce(broker, names.ticks, chunks[2], into=produced)
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

    # Dead letters are not repeated: a restarted worker reads the DLQ from the mark stored
    # with the checkpoint and skips records an earlier owner dead-lettered after it.
    bad = {
        pos
        for (key, value, _), pos in zip(produced.records, produced.positions)
        if not is_tick(key, value)
    }
    sources = Counter(dlq_source(record) for record in read_topic(broker, names.dlq))
    assert sources == Counter(dict.fromkeys(bad, 1))


def with_bad_records(records, every):
    """`records` with a malformed record (not JSON, wrong key, bad price) after every `every`."""
    kinds = [
        lambda k: (k, b"{not json", [("trace", b"1")]),
        lambda k: (k, b'{"symbol": "ZZZ", "ts": 1704205800000, "price": 1.0}', None),
        lambda k: (k, b'{"symbol": "%s", "ts": 1704205800000, "price": -2.0}' % k, None),
    ]
    out = []
    for i, record in enumerate(records):
        out.append(record)
        if i % every == every - 1:
            out.append(kinds[(i // every) % len(kinds)](record[0]))
    return out


def is_tick(key, value) -> bool:
    try:
        decode_tick(key, value)
    except InvalidTick:
        return False
    return True


def test_dead_letters_sent_before_a_crash_are_not_sent_again(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    records = with_bad_records(tick_records(mixed_ticks(n_stocks=600, n_es=600)), every=20)
    produced = produce(broker, names.ticks, records)
    bad = {pos for (k, v, _), pos in zip(produced.records, produced.positions) if not is_tick(k, v)}
    # The first worker never checkpoints: everything it sent is after the (absent) checkpoint.
    first = WorkerProcess(
        worker_env(broker, redis_url, names, checkpoint_every_ticks=10_000_000,
                   checkpoint_every_seconds=3600, session_timeout_ms=3000),
        tmp_path / "first.log",
    )  # fmt: skip
    wait_until(
        lambda: len(read_topic(broker, names.dlq, idle_ms=300)) == len(bad),
        timeout=60,
        what="every bad record dead-lettered by the first worker",
    )
    first.kill()
    assert stored_offsets(redis_url, names.group) == {}
    second = WorkerProcess(
        worker_env(broker, redis_url, names, session_timeout_ms=3000),
        tmp_path / "second.log",
        "--max-idle-seconds",
        "2",
    )
    assert second.wait(timeout=120) == 0, second.tail()
    assert second.events("dlq_known")  # it found what the first one had sent

    sources = Counter(dlq_source(record) for record in read_topic(broker, names.dlq))
    assert sources == Counter(dict.fromkeys(bad, 1))
    assert stored_symbols(redis_url, names.group) == reference_symbols(produced)
