"""A soak longer and rougher than CI's chaos tests: kills, several workers, hostile input.

Run: .venv/bin/python scripts/soak.py [--seed N] [--es-ticks N] [--set name=value ...]

On its own broker and redis-server (from the wheels, as the tests start them):

1. a stream of real ticks (E-mini trades and daily stock closes), with one generated bad
   or odd record (tests/integration/test_hostile.py's generator) per 20 ticks, produced
   in random chunks, alternately by kafka-python and by librdkafka (confluent-kafka) in
   a random codec (gzip, snappy, lz4, zstd or none), with kafka-python's partitioner;
2. three workers the whole time: every 1 to 5 s one of them, at random, is SIGKILLed
   and a new one started;
3. after the stream, the last three finish it and stop (SIGTERM).

Then it checks what the tests check, on the whole run: every symbol's state in Redis
equals `tickprop backtest` over the valid records, every valid tick has exactly one
prediction id (re-sends identical) carrying every horizon, every bad or late record is
dead-lettered with its reason, and no worker logged an ERROR. Exit 0 only if all hold.
`--set` passes worker settings (TICKPROP_<NAME>), e.g. `--set horizons=3,1,50,200`;
`--redis-cluster` keeps the state in a Redis Cluster (3 masters, 3 replicas) instead.
A run takes 3 to 5 minutes. The seed (printed) fixes the records, the chunks and the
intervals between kills; where in the stream each kill lands depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]  # the tests' own helpers

from harness import (  # noqa: E402
    Record,
    backtest_symbols,
    check_predictions,
    expected_dead_letters,
    inspect_symbols,
    on_broker,
)
from rdkafka_kit import CODECS, rdkafka_produce  # noqa: E402
from test_hostile import MAX_BYTES, Hostile  # noqa: E402
from worker_kit import (  # noqa: E402
    Names,
    WorkerProcess,
    dlq_source,
    mixed_ticks,
    produce,
    read_topic,
    stored_offsets,
    tick_records,
    wait_until,
    worker_env,
)

from model.learner import LearnerConfig, check_horizons  # noqa: E402
from service.tools.embedded import (  # noqa: E402
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedRedisCluster,
)

WORKERS = 3
SETTINGS = {
    "max_message_bytes": MAX_BYTES,
    "session_timeout_ms": 3000,  # a killed worker leaves the group after 3 s
    "heartbeat_interval_ms": 1000,
    "checkpoint_every_ticks": 500,
    "checkpoint_every_seconds": 1.0,
}


def stream(rng: random.Random, es_ticks: int) -> list[Record]:
    """Real ticks with one hostile record per 20 spread among them, order kept."""
    ticks = mixed_ticks(n_stocks=es_ticks // 2, n_es=es_ticks)
    hostile = Hostile(rng, ts=ticks[len(ticks) // 2].ts)
    records: list[Record] = list(tick_records(ticks))
    for _ in range(len(records) // 20):
        record, _ = hostile.draw()
        records.insert(rng.randrange(len(records) + 1), record)
    return records


class ChunkedProducer(threading.Thread):
    """Sends the records in random chunks, each by kafka-python or by librdkafka."""

    def __init__(self, rng: random.Random, bootstrap: str, topic: str, records: list[Record]):
        super().__init__(daemon=True)
        self.rng, self.bootstrap, self.topic, self.records = rng, bootstrap, topic, records
        self.error: BaseException | None = None

    def run(self) -> None:
        rng, sent = self.rng, 0
        try:
            while sent < len(self.records):
                chunk = self.records[sent : sent + rng.randrange(50, 400)]
                sent += len(chunk)
                if rng.random() < 0.5:
                    produce(self.bootstrap, self.topic, chunk)
                else:
                    codec = rng.choice([*CODECS, "none"])
                    linger = {"linger.ms": rng.choice([0, 5, 50])}
                    rdkafka_produce(
                        self.bootstrap, self.topic, chunk, codec, partitioner="murmur2_random",
                        **linger,
                    )  # fmt: skip
                time.sleep(rng.uniform(0.05, 0.4))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def error_lines(logs: list[Path]) -> list[str]:
    """Lines at ERROR or above, and tracebacks, in the workers' logs."""
    out = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line or "Traceback" in line:
                out.append(f"{path.name}: {line[:300]}")
    return out


def dead_letter_problems(bootstrap: str, names: Names, expected: dict[Any, str]) -> list[str]:
    """Dead letters missing, or with a reason other than the expected one."""
    found: dict[tuple[int, int], set[str]] = {}
    for record in read_topic(bootstrap, names.dlq):
        headers = {k: bytes(v).decode() for k, v in record.headers if k.startswith("tickprop.")}
        found.setdefault(dlq_source(record), set()).add(headers["tickprop.reason"])
    problems = [f"no dead letter for {s}" for s in sorted(set(expected) - set(found))]
    problems += [
        f"dead letter for {s}: {sorted(r)}, expected {expected.get(s)!r}"
        for s, r in sorted(found.items())
        if r != {expected.get(s)}
    ]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**32))
    parser.add_argument(
        "--es-ticks", type=int, default=16_000, help="E-mini trades (and half as many closes)"
    )
    parser.add_argument("--set", action="append", default=[], help="worker setting name=value")
    parser.add_argument("--redis-cluster", action="store_true", help="state in a Redis Cluster")
    args = parser.parse_args()
    settings: dict[str, Any] = dict(SETTINGS)
    if args.redis_cluster:
        settings["redis_cluster"] = "true"
    settings.update(item.split("=", 1) for item in args.set)
    horizons = list(check_horizons(settings.get("horizons", LearnerConfig().horizons)))
    max_bytes = int(settings["max_message_bytes"])
    print(f"soak seed {args.seed} (--seed {args.seed} replays it)", flush=True)
    rng = random.Random(args.seed)  # the records and the chunks (the producer's thread)
    kill_rng = random.Random(args.seed + 1)  # the kills (this thread)
    records = stream(rng, args.es_ticks)

    redis_server = EmbeddedRedisCluster() if args.redis_cluster else EmbeddedRedis()
    with EmbeddedBroker() as broker, redis_server as redis, TemporaryDirectory() as tmp:
        names = Names.fresh()
        logs: list[Path] = []
        env = worker_env(broker.bootstrap, redis.url, names, **settings)

        def start() -> WorkerProcess:
            logs.append(Path(tmp) / f"worker{len(logs)}.log")
            return WorkerProcess(env, logs[-1])

        producer = ChunkedProducer(rng, broker.bootstrap, names.ticks, records)
        producer.start()
        workers, kills = [start() for _ in range(WORKERS)], 0
        while producer.is_alive():
            time.sleep(kill_rng.uniform(1.0, 5.0))
            workers.pop(kill_rng.randrange(len(workers))).kill()
            workers.append(start())
            kills += 1
        if producer.error is not None:
            raise producer.error
        held = on_broker(broker.bootstrap, names.ticks)
        print(f"{len(held.records):,} records produced, {kills} workers killed", flush=True)
        wait_until(
            lambda: (
                stored_offsets(redis.url, names.group, args.redis_cluster) == held.end_offsets()
            ),
            timeout=600,
            what="the workers checkpointing the whole stream",
            step=1.0,
        )
        for worker in workers:
            if worker.terminate() != 0:
                print(worker.tail())
                return 1

        problems = error_lines(logs)
        expected = backtest_symbols(held, Path(tmp), env, max_bytes)
        stored = inspect_symbols(env)
        problems += [
            f"{s}: state {stored.get(s)} != backtest {expected.get(s)}"
            for s in sorted(set(expected) | set(stored))
            if stored.get(s) != expected.get(s)
        ]
        try:
            resent = check_predictions(
                broker.bootstrap, names.predictions, names.ticks, held, max_bytes
            )
        except AssertionError as exc:
            problems.append(str(exc))
            resent = 0
        for record in read_topic(broker.bootstrap, names.predictions):
            found = [f["horizon"] for f in json.loads(record.value)["forecasts"]]
            if found != horizons:
                problems.append(f"prediction with horizons {found}, not {horizons}")
                break
        dead = expected_dead_letters(held, max_bytes)
        problems += dead_letter_problems(broker.bootstrap, names, dead)

    print(f"{len(expected)} symbols, {resent} predictions re-sent, {len(dead)} dead letters")
    for problem in problems[:30]:
        print("PROBLEM", problem)
    print(f"soak seed {args.seed}: {'FAILED' if problems else 'passed'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
