"""Redis with a password: the worker authenticates from settings, strangers are refused,
a wrong password stops start-up cleanly, and no password ever reaches a log line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from harness import backtest_symbols, check_predictions, inspect_symbols, on_broker
from worker_kit import Names, WorkerProcess, mixed_ticks, produce, tick_records, worker_env

from service.tools.embedded import EmbeddedRedis

PASSWORD = "Pw-9f3c1e-never-logged"
WRONG = "Wrong-7d21-never-logged"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(password=PASSWORD) as server:
        yield server


def _plain_url(server: EmbeddedRedis) -> str:
    return f"redis://{server.host}:{server.port}/0"  # the password comes from a setting


def test_worker_runs_against_a_password_protected_redis_and_never_logs_it(
    broker: str, locked_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    names = Names.fresh()
    env = worker_env(broker, _plain_url(locked_redis), names, redis_password=PASSWORD)
    produce(broker, names.ticks, tick_records(mixed_ticks(1500, 1500)))
    worker = WorkerProcess(env, tmp_path / "worker.log", "--max-idle-seconds", "2")
    assert worker.wait(timeout=120) == 0, worker.tail()

    held = on_broker(broker, names.ticks)
    assert inspect_symbols(env) == backtest_symbols(held, tmp_path, env)
    check_predictions(broker, names.predictions, names.ticks, held)
    log = worker.log_path.read_text()
    assert PASSWORD not in log
    assert worker.events("starting")[0]["settings"]["redis_password"] == "**********"

    stranger = redis.Redis.from_url(_plain_url(locked_redis))
    with pytest.raises(redis.AuthenticationError):
        stranger.keys("tickprop:*")  # no password, no state


def test_wrong_redis_password_stops_startup_with_exit_1_and_is_not_logged(
    broker: str, locked_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    names = Names.fresh()
    env = worker_env(broker, _plain_url(locked_redis), names, redis_password=WRONG)
    worker = WorkerProcess(env, tmp_path / "worker.log", "--startup-timeout", "2")
    assert worker.wait(timeout=60) == 1, worker.tail()
    failed = worker.events("startup_failed")
    assert failed and "redis" in failed[0]["msg"]
    assert WRONG not in worker.log_path.read_text()
