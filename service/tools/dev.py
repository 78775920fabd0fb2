"""Start a local Kafka-compatible broker (Tansu, in memory) and a redis-server for
development (with --redis-cluster: a Redis Cluster of 3 masters and 3 replicas),
create the topics, print the TICKPROP_* settings to export, and keep
both running until Ctrl-C or SIGTERM, then stop them. Needs the `embedded` extra.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka-port", type=int, default=0, help="broker port (default: a free one)"
    )
    parser.add_argument(
        "--redis-port", type=int, default=0, help="Redis port (default: a free one)"
    )
    parser.add_argument(
        "--persist-redis", action="store_true",
        help="keep Redis data in an append-only file while this runs (survives a Redis restart)",
    )  # fmt: skip
    parser.add_argument(
        "--redis-cluster", action="store_true",
        help="a Redis Cluster of 3 masters and 3 replicas on free ports instead of one "
        "redis-server (for TICKPROP_REDIS_CLUSTER=true)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from service.settings import load_settings
    from service.tools.embedded import (
        EmbeddedBroker,
        EmbeddedError,
        EmbeddedRedis,
        EmbeddedRedisCluster,
    )
    from service.topics import create_topics

    settings = load_settings()

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _SIGNALS}
    try:
        broker = EmbeddedBroker(port=args.kafka_port or None)
        redis: Any = (
            EmbeddedRedisCluster()
            if args.redis_cluster
            else EmbeddedRedis(port=args.redis_port or None, persist=args.persist_redis)
        )
        with broker, redis:
            topics = [settings.ticks_topic, settings.predictions_topic, settings.dlq_topic]
            create_topics(broker.bootstrap, topics, partitions=settings.topic_partitions)
            print(_banner(broker, redis, settings, topics), flush=True)
            while not stop.wait(0.5):
                if not (broker.running() and redis.running()):
                    print("tickprop dev: a server died; see its log:", file=sys.stderr)
                    print(broker.log_tail() if not broker.running() else redis.log_tail())
                    return 1
            print("tickprop dev: stopping broker and Redis", file=sys.stderr)
    except EmbeddedError as exc:
        print(f"tickprop dev: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _banner(broker: Any, redis: Any, settings: Any, topics: list[str]) -> str:
    exports = {
        "TICKPROP_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "TICKPROP_REDIS_URL": redis.url,
        "TICKPROP_TICKS_TOPIC": settings.ticks_topic,
        "TICKPROP_PREDICTIONS_TOPIC": settings.predictions_topic,
        "TICKPROP_DLQ_TOPIC": settings.dlq_topic,
    }
    nodes = getattr(redis, "nodes", [redis])
    if len(nodes) > 1:
        exports["TICKPROP_REDIS_CLUSTER"] = "true"
    lines = [
        f"# broker (Tansu, in memory) pid {broker.pid} on {broker.bootstrap}",
        *(f"# redis-server pid {node.pid} on {node.url}" for node in nodes),
        f"# topics {', '.join(topics)} ({settings.topic_partitions} partitions)",
        "# paste into another shell, then run `tickprop worker` / `tickprop produce`:",
    ]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
    lines.append("# Ctrl-C here stops both servers (all data is lost).")
    return "\n".join(lines)
