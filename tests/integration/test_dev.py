"""`tickprop dev` starts both servers, prints working settings, and stops them on SIGTERM."""

import os
import re
import signal
import subprocess
import sys

import redis
from kafka import KafkaAdminClient


def test_dev_prints_working_settings_and_stops_both_servers_on_sigterm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKPROP_")}
    env["TICKPROP_TOPIC_PARTITIONS"] = "2"
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("# Ctrl-C"):
                break
        text = "".join(lines)
        exports = dict(re.findall(r"^export (TICKPROP_\w+)=(\S+)$", text, re.M))
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 2

        admin = KafkaAdminClient(bootstrap_servers=exports["TICKPROP_KAFKA_BOOTSTRAP_SERVERS"])
        assert {"ticks", "predictions", "ticks.dlq"} <= set(admin.list_topics())
        admin.close()
        assert redis.Redis.from_url(exports["TICKPROP_REDIS_URL"]).ping()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"server pid {pid} still runs after tickprop dev exited")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
