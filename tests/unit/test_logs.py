"""The JSON logs: kafka-python's read of a connection closed meanwhile, and its metadata
refresh cancelled by a closing client, are warnings, not errors (service.logs), and every
other error stays an error."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from kafka import errors
from kafka.cluster import ClusterMetadata
from kafka.net.transport import KafkaTCPTransport

from service import logs


def test_a_read_of_a_connection_closed_meanwhile_is_logged_as_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO")
    ours, theirs = socket.socketpair()
    try:
        transport = KafkaTCPTransport(None, ours)
        # What another thread's close() leaves while the network loop wakes to read
        # (the race kafka-python 3.0.12 logs at ERROR as the worker stops).
        transport._closed, transport._sock = True, None
        _, error = transport._sock_recv()  # kafka-python's own code logs the exception
        assert error is not None
        logging.getLogger("kafka.net.transport").error("socket disconnected")
        try:
            raise AttributeError("'NoneType' object has no attribute 'recv'")
        except AttributeError:  # the same exception from our own code is still an error
            logging.getLogger("tickprop.worker").exception("boom")
    finally:
        logging.getLogger().handlers.clear()
        ours.close()
        theirs.close()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    found = [(line["logger"], line["level"], "recv" in line.get("exc", "")) for line in lines]
    assert found == [
        ("kafka.net.transport", "WARNING", True),
        ("kafka.net.transport", "ERROR", False),
        ("tickprop.worker", "ERROR", True),
    ]


class Manager:
    """What ClusterMetadata sends its metadata request through; this one fails the send."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def least_loaded_node(self) -> int:
        return 0

    def reset_backoff(self, key: str) -> None:
        pass

    async def send(self, request: object, node_id: int) -> None:
        raise self.error


def refresh_failing_with(error: Exception) -> None:
    """Run kafka-python's own metadata refresh until the send fails with `error`."""
    cluster = ClusterMetadata()
    cluster._manager = Manager(error)
    with pytest.raises(type(error)):
        cluster._do_refresh_metadata(0).send(None)


def test_a_metadata_refresh_cancelled_by_a_closing_client_is_logged_as_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO")
    try:
        refresh_failing_with(errors.Cancelled())  # what close() does to requests in flight
        refresh_failing_with(errors.KafkaConnectionError("broker gone"))
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    found = [(line["logger"], line["level"], line["msg"]) for line in lines]
    assert found == [
        ("kafka.cluster", "WARNING", "Metadata refresh: failed Cancelled"),
        ("kafka.cluster", "ERROR", "Metadata refresh: failed KafkaConnectionError: broker gone"),
    ]
