"""The JSON logs: kafka-python's read of a connection closed meanwhile is a warning, not an
error (service.logs.ClosedSocketRead), and every other error stays an error."""

from __future__ import annotations

import json
import logging
import socket

import pytest
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
