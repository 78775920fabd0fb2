"""Shared fixtures: a real Kafka-compatible broker and a real redis-server per test session.

Both are started from the wheels by `service.tools.embedded` on free ports, only when a
test asks for them, and stopped by PID at the end of the session. Tests under
tests/integration/ are marked `integration` automatically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from worker_kit import Names

from service.tools.embedded import EmbeddedBroker, EmbeddedRedis

# A shared 2-core machine: wall-clock deadlines would make property tests flaky.
hypothesis_settings.register_profile("tickprop", deadline=None)
hypothesis_settings.load_profile("tickprop")

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker_server() -> Iterator[EmbeddedBroker]:
    """The session's Tansu broker (in memory); use `broker` for its bootstrap address."""
    with EmbeddedBroker() as server:
        yield server


@pytest.fixture(scope="session")
def broker(broker_server: EmbeddedBroker) -> str:
    """Bootstrap `127.0.0.1:port` of the session's broker."""
    return broker_server.bootstrap


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's redis-server; tests that stop or pause Redis start their own instead."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    """`redis://127.0.0.1:port/0` of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def names() -> Names:
    """Topics and a group no other test uses (the servers are shared by the session)."""
    return Names.fresh()
