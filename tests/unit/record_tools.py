"""Helpers to build Kafka records no client library would send."""

from __future__ import annotations

from typing import Any


class RawName(str):
    """A header name whose encoding is `raw`: how a test makes a name that is not UTF-8
    (kafka-python's producer and record builder call name.encode("utf-8"))."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return self.raw
