"""/healthz of a real `tickprop worker` whose loop blocks: Redis frozen mid-checkpoint.

With a long Redis command timeout, a checkpoint sent to a SIGSTOPped redis-server blocks
the worker's loop in the Redis call itself. /healthz must fail once the loop has not
completed an iteration for TICKPROP_LIVENESS_TIMEOUT_SECONDS (so an orchestrator would
restart it), and pass again once the loop runs; /readyz keeps its own meaning.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import http_status, metric, metrics_port
from worker_kit import (
    Names,
    WorkerProcess,
    mixed_ticks,
    produce,
    tick_records,
    wait_until,
    worker_env,
)

from service.tools.embedded import EmbeddedRedis

LIVENESS_SECONDS = 2.0


def test_healthz_fails_while_the_loop_is_blocked_in_redis_and_recovers(
    broker: str, names: Names, tmp_path: Path
) -> None:
    ticks = mixed_ticks(50, 300)
    with EmbeddedRedis() as redis_server:
        env = worker_env(
            broker,
            redis_server.url,
            names,
            liveness_timeout_seconds=LIVENESS_SECONDS,
            redis_socket_timeout_seconds=120,
        )
        produce(broker, names.ticks, tick_records(ticks[:100]))
        worker = WorkerProcess(env, tmp_path / "worker.log")
        try:
            port = metrics_port(worker)
            wait_until(
                lambda: (metric(port, "tickprop_checkpoints_total") or 0) >= 1,
                timeout=60,
                what="a first checkpoint",
            )
            assert http_status(port, "/healthz") == 200
            redis_server.pause()
            produce(broker, names.ticks, tick_records(ticks[100:]))  # a checkpoint falls due
            started = time.monotonic()
            wait_until(lambda: http_status(port, "/healthz") == 503, 30, "healthz failing")
            assert time.monotonic() - started >= LIVENESS_SECONDS * 0.5
            assert worker.process.poll() is None  # blocked, not dead
            redis_server.resume()
            wait_until(lambda: http_status(port, "/healthz") == 200, 30, "healthz passing")
            wait_until(lambda: http_status(port, "/readyz") == 200, 60, "readyz passing")
            assert worker.terminate() == 0, worker.tail()
        finally:
            redis_server.resume()
            if worker.process.poll() is None:
                worker.kill()
