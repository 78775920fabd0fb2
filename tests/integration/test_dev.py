"""`tickprop dev` starts the servers, prints working settings, and stops them on SIGTERM."""

import contextlib
import os
import re
import signal
import subprocess
import sys

import redis
from kafka import KafkaAdminClient

from service.store import connect


def start_dev(*args: str) -> tuple[subprocess.Popen[str], dict[str, str], list[int]]:
    """`tickprop dev ARGS` and, once its banner is out: its exports and its servers' pids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKPROP_")}
    env["TICKPROP_TOPIC_PARTITIONS"] = "2"
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("# Ctrl-C"):
            break
    text = "".join(lines)
    exports = dict(re.findall(r"^export (TICKPROP_\w+)=(\S+)$", text, re.M))
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    return process, exports, pids


def stop_dev(process: subprocess.Popen[str], pids: list[int]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"server pid {pid} still runs after tickprop dev exited")


def cleanup(process: subprocess.Popen[str], pids: list[int]) -> None:
    """After a failed check: kill `tickprop dev`, then any of its servers it left running
    (a SIGKILLed parent cannot stop its children)."""
    if process.poll() is not None:
        return  # it exited: stop_dev checked that its servers are gone
    process.kill()
    process.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_dev_prints_working_settings_and_stops_both_servers_on_sigterm():
    process, exports, pids = start_dev()
    try:
        assert len(pids) == 2
        admin = KafkaAdminClient(bootstrap_servers=exports["TICKPROP_KAFKA_BOOTSTRAP_SERVERS"])
        assert {"ticks", "predictions", "ticks.dlq"} <= set(admin.list_topics())
        admin.close()
        assert redis.Redis.from_url(exports["TICKPROP_REDIS_URL"]).ping()
        assert "TICKPROP_REDIS_CLUSTER" not in exports
        stop_dev(process, pids)
    finally:
        cleanup(process, pids)


def test_dev_with_a_redis_cluster_prints_cluster_settings_and_stops_all_seven_servers():
    process, exports, pids = start_dev("--redis-cluster")
    try:
        assert len(pids) == 7 and exports["TICKPROP_REDIS_CLUSTER"] == "true"
        client = connect(exports["TICKPROP_REDIS_URL"], cluster=True)
        assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
        client.close()
        stop_dev(process, pids)
    finally:
        cleanup(process, pids)
