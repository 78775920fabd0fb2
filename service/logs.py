"""Structured logs: one JSON object per line on stderr, extra fields passed with `extra=`."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from kafka.errors import Cancelled as KafkaCancelled

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ClosedSocketRead(logging.Filter):
    """kafka-python 3.0.12's network loop can wake to read a connection that another
    thread closed meanwhile (its socket is then None) and logs the AttributeError at
    ERROR: "<KafkaTCPTransport ... (closed)>: Error receiving network data closing socket".
    Nothing is lost (the connection was closing anyway; seen as the worker stopped), so
    that one record is logged at WARNING: an ERROR line means something to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (
            record.levelno == logging.ERROR
            and isinstance(exc, AttributeError)
            and str(exc).startswith("'NoneType' object has no attribute")
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class CancelledMetadataRefresh(logging.Filter):
    """kafka-python cancels its requests in flight when a client closes, and logs a
    metadata refresh cancelled that way at ERROR ("Metadata refresh: failed Cancelled",
    seen as the worker stopped). Nothing was lost: the client is closing, so that one
    record is logged at WARNING. A refresh that failed for any other reason stays an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and str(record.msg).startswith("Metadata refresh: failed")
            and isinstance(record.args, tuple)
            and any(isinstance(arg, KafkaCancelled) for arg in record.args)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(level: str = "INFO") -> None:
    """Send every log line of the process to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every reconnect at WARNING/ERROR; keep it but one notch quieter.
    logging.getLogger("kafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    for name, noise in (
        ("kafka.net.transport", ClosedSocketRead),
        ("kafka.cluster", CancelledMetadataRefresh),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, noise) for f in logger.filters):
            logger.addFilter(noise())
