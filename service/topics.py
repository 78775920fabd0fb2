"""Create the service's Kafka topics when missing (idempotent), against any cluster."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any


def create_topics(
    bootstrap: str | list[str],
    names: Iterable[str],
    partitions: int = 6,
    replication_factor: int = 1,
    timeout: float = 30.0,
    **client_kwargs: Any,
) -> dict[str, int]:
    """Create each topic in `names` that does not exist yet; return every topic's partition count.

    Existing topics are left as they are (even with another partition count: the
    caller decides whether that matters). `client_kwargs` are passed to
    KafkaAdminClient, e.g. `settings.kafka_client_kwargs()` minus bootstrap_servers.
    Waits until the metadata shows every topic with its partitions.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = list(dict.fromkeys(names))
    client_kwargs.pop("bootstrap_servers", None)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    try:
        existing = set(admin.list_topics())
        for name in wanted:
            if name in existing:
                continue
            # One at a time: a batch fails whole when one topic exists already; and
            # another worker may win the race between list_topics and here.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, replication_factor)])
        return _wait_for_partitions(admin, wanted, timeout)
    finally:
        admin.close()


def _wait_for_partitions(admin: Any, names: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = {
            topic.get("name", topic.get("topic")): len(topic.get("partitions") or [])
            for topic in admin.describe_topics(names)
            if not topic.get("error_code")
        }
        if all(counts.get(name, 0) > 0 for name in names):
            return {name: counts[name] for name in names}
        if time.monotonic() > deadline:
            missing = [name for name in names if counts.get(name, 0) == 0]
            raise TimeoutError(f"topics {missing} not visible in metadata after {timeout:.0f} s")
        time.sleep(0.1)
