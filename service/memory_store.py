"""An in-memory `StateStore` with the Redis store's contract, for unit tests and tools.

It keeps, per (topic, partition), what `service.store.Store` keeps in one Redis hash: the
fence (`<counter>-<token>`, renewed by every claim), the next offset, the DLQ mark and
each symbol's blob, and it refuses the same writes (`Fenced`, `StateWentBack`,
`OffsetWentBackwards`). One test suite (tests/integration/test_store.py) runs against
both stores. Nothing survives the process: never use it for the service.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from service.protocols import Blobs
from service.store import (
    Fenced,
    OffsetWentBackwards,
    PartitionState,
    StateWentBack,
    StoreUnavailable,
)


@dataclass
class _Hash:
    claims: int = 0
    epoch: str = ""
    offset: int | None = None
    dlq_mark: int | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)


class MemoryStore:
    """Checkpoints of one consumer group's partitions, in this process's memory."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.available = True  # False: every call raises StoreUnavailable (an outage)
        self._hashes: dict[tuple[str, int], _Hash] = {}

    def ping(self) -> None:
        self._check_available("ping")

    def claim(self, topic: str, partition: int) -> PartitionState:
        """Renew the partition's fence and return its state (as `Store.claim`)."""
        self._check_available(f"claim {topic}[{partition}]")
        h = self._hashes.setdefault((topic, partition), _Hash())
        h.claims += 1
        h.epoch = f"{h.claims}-{os.urandom(8).hex()}"
        return self._state(h)

    # fmt: off
    def checkpoint(self, topic: str, partition: int, epoch: str, offset: int, blobs: Blobs,
                   dlq_mark: int | None = None, *, stored_offset: int | None) -> None:
        # fmt: on
        """Write blobs, offset and mark if `epoch` is still the stored fence (as `Store`)."""
        self._check_available(f"checkpoint {topic}[{partition}]")
        where = f"{topic}[{partition}]"
        h = self._hashes.get((topic, partition))
        if h is None or h.epoch != epoch:
            stored = "none" if h is None else h.epoch
            raise Fenced(f"{where}: epoch {epoch} != stored {stored}")
        if h.offset not in (stored_offset, offset):  # offset: an applied earlier attempt
            raise StateWentBack(f"{where}: stored offset {h.offset} is not {stored_offset}")
        if h.offset is not None and offset < h.offset:
            raise OffsetWentBackwards(f"{where}: offset {offset} < stored {h.offset}")
        h.offset = offset
        h.blobs.update({symbol: bytes(blob) for symbol, blob in blobs.items()})
        if dlq_mark is not None:
            h.dlq_mark = dlq_mark

    def load_all(self) -> dict[tuple[str, int], PartitionState]:
        """Every partition's state of this group (as `Store.load_all`)."""
        self._check_available(f"reading group {self.group!r}")
        return {key: self._state(h) for key, h in self._hashes.items()}

    def _state(self, h: _Hash) -> PartitionState:
        return PartitionState(h.epoch, h.offset, dict(h.blobs), h.dlq_mark)

    def _check_available(self, what: str) -> None:
        if not self.available:
            raise StoreUnavailable(f"{what} failed: store unavailable")
