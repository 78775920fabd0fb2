"""SIGTERM ends the worker within TICKPROP_SHUTDOWN_GRACE_SECONDS, even when its orderly stop
cannot finish: here its final checkpoint waits on a frozen Redis (SIGSTOP, 30 s socket
timeout)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from harness import metric, metrics_port
from worker_kit import (
    Names,
    WorkerProcess,
    mixed_ticks,
    produce,
    tick_records,
    wait_until,
    worker_env,
)

from service.main import EXIT_FORCED
from service.tools.embedded import EmbeddedRedis


def test_sigterm_exits_in_time_while_the_final_checkpoint_hangs(
    broker: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    produce(broker, names.ticks, tick_records(mixed_ticks(n_stocks=100, n_es=100)))
    with EmbeddedRedis() as redis_server:
        env = worker_env(
            broker, redis_server.url, names,
            shutdown_grace_seconds=2, redis_socket_timeout_seconds=30,
            checkpoint_every_seconds=600, checkpoint_every_ticks=1_000_000,
        )  # fmt: skip
        worker = WorkerProcess(env, tmp_path / "worker.log")
        try:
            port = metrics_port(worker)
            wait_until(
                lambda: (metric(port, "tickprop_ticks_total", 'outcome="processed"') or 0) >= 200,
                60,
                "the ticks processed (their checkpoint not yet due)",
            )
            redis_server.pause()
            started = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            redis_server.resume()
            if worker.process.poll() is None:
                worker.kill()
    assert code == EXIT_FORCED, worker.tail()
    assert 2 <= elapsed < 6, elapsed
    (forced,) = worker.events("forced_exit")
    assert forced["grace_seconds"] == 2
