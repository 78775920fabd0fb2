"""Redis checkpoint store: one hash per input partition, claimed and written under a fencing epoch.

Layout (DESIGN.md): key ``tickprop:{<group>}:<topic>:<partition>``, one field per symbol
holding that symbol's ``OnlineLearner.to_bytes()`` blob, the field ``offset`` (next offset
to read) and the field ``epoch`` (bumped by every claim). A checkpoint is one Lua script
that writes only if the epoch is still the caller's, so a worker that lost the partition
(paused, cut off from the group) can never overwrite the new owner's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import redis

OFFSET_FIELD = b"offset"
EPOCH_FIELD = b"epoch"
# Symbols share the hash with these two fields. A symbol spelled like one of them is stored
# under an escaped name starting with NUL, which no valid symbol (printable text) contains.
RESERVED_FIELDS = frozenset({OFFSET_FIELD, EPOCH_FIELD})
ESCAPE = b"\x00"
# Where, in the partition's dead-letter partition, this partition's dead letters sent after
# the checkpoint can start (see Worker). NUL-led, so no symbol's field can take this name.
DLQ_MARK_FIELD = ESCAPE + b"dlq_mark"


def symbol_field(symbol: str) -> bytes:
    """The hash field holding `symbol`'s state: the symbol itself unless it is reserved."""
    name = symbol.encode("utf-8")
    return ESCAPE + name if name in RESERVED_FIELDS or name.startswith(ESCAPE) else name


def field_symbol(name: bytes) -> str:
    """The inverse of `symbol_field`."""
    return name.removeprefix(ESCAPE).decode("utf-8")

# KEYS[1] = partition hash. Bump the epoch and return it with the whole hash.
_CLAIM_LUA = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return {epoch, redis.call('HGETALL', KEYS[1])}
"""

# KEYS[1] = partition hash; ARGV = epoch, offset, field1, blob1, field2, blob2, ...
# Returns {1} when written, {0, stored_epoch} when fenced, {-1, stored_offset} when the
# offset would go backwards. Nothing is written unless every check passes.
_CHECKPOINT_LUA = """
local stored_epoch = redis.call('HGET', KEYS[1], 'epoch')
if stored_epoch ~= ARGV[1] then
  return {0, stored_epoch or ''}
end
local stored_offset = redis.call('HGET', KEYS[1], 'offset')
if stored_offset and tonumber(ARGV[2]) < tonumber(stored_offset) then
  return {-1, stored_offset}
end
redis.call('HSET', KEYS[1], 'offset', ARGV[2])
-- unpack() of more than ~8,000 values fails ("too many results to unpack"), so the
-- field/blob pairs go in chunks of 500; the script as a whole stays one atomic step.
local i = 3
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
return {1}
"""


class StoreError(Exception):
    """Base class of the checkpoint store's errors."""


class Fenced(StoreError):
    """Another worker claimed the partition after us: our state for it is stale."""


class OffsetWentBackwards(StoreError):
    """A checkpoint tried to store an offset below the stored one (a bug, never expected)."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered with an error; retry later."""


@dataclass(frozen=True)
class PartitionState:
    """What a claim returns: our fencing epoch, the next offset (None: never checkpointed)."""

    epoch: int
    offset: int | None
    blobs: dict[str, bytes] = field(default_factory=dict)
    dlq_mark: int | None = None  # see DLQ_MARK_FIELD


def partition_key(group: str, topic: str, partition: int) -> str:
    """The Redis key of one input partition's state; ``{group}`` is the Cluster hash tag."""
    return f"tickprop:{{{group}}}:{topic}:{partition}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _parse_hash(fields: Mapping[bytes, bytes]) -> PartitionState:
    """Turn a partition hash into its state: epoch, offset and the symbols' blobs."""
    blobs = {
        field_symbol(name): bytes(value)
        for name, value in fields.items()
        if name not in RESERVED_FIELDS and name != DLQ_MARK_FIELD
    }
    offset = fields.get(OFFSET_FIELD)
    mark = fields.get(DLQ_MARK_FIELD)
    return PartitionState(
        epoch=int(fields.get(EPOCH_FIELD) or 0),
        offset=None if offset is None else int(offset),
        blobs=blobs,
        dlq_mark=None if mark is None else int(mark),
    )


class Store:
    """Checkpoints of one consumer group's partitions in Redis.

    ``client`` must return bytes (``decode_responses=False``). Every Redis failure surfaces
    as ``StoreUnavailable``, so callers need not import redis.
    """

    def __init__(self, client: redis.Redis, group: str) -> None:
        self.client = client
        self.group = group
        self._claim = client.register_script(_CLAIM_LUA)
        self._checkpoint = client.register_script(_CHECKPOINT_LUA)

    def key(self, topic: str, partition: int) -> str:
        return partition_key(self.group, topic, partition)

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis ping failed: {exc}") from exc

    def claim(self, topic: str, partition: int) -> PartitionState:
        """Take ownership of a partition: bump its epoch and read its state, atomically."""
        try:
            _epoch, flat = self._claim(keys=[self.key(topic, partition)])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"claim {topic}[{partition}] failed: {exc}") from exc
        return _parse_hash(dict(zip(flat[::2], flat[1::2], strict=True)))

    def checkpoint(
        self,
        topic: str,
        partition: int,
        epoch: int,
        offset: int,
        blobs: Mapping[str, bytes],
        dlq_mark: int | None = None,
    ) -> None:
        """Write changed symbols' blobs and the next offset, only if ``epoch`` is still ours.

        Raises ``Fenced`` when another claim happened since ours, ``OffsetWentBackwards``
        when ``offset`` is below the stored one (nothing is written in either case).
        ``dlq_mark``, when given, is written in the same step.
        """
        args: list[bytes | int] = [epoch, offset]
        for symbol, blob in blobs.items():
            args.extend((symbol_field(symbol), blob))
        if dlq_mark is not None:
            args.extend((DLQ_MARK_FIELD, dlq_mark))
        key = self.key(topic, partition)
        try:
            reply = self._checkpoint(keys=[key], args=args)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"checkpoint {topic}[{partition}] failed: {exc}") from exc
        status = int(reply[0])
        if status == 0:
            stored = reply[1].decode() or "none"
            raise Fenced(f"{topic}[{partition}]: epoch {epoch} != stored {stored}")
        if status == -1:
            stored = reply[1].decode()
            raise OffsetWentBackwards(f"{topic}[{partition}]: offset {offset} < stored {stored}")

    def load_all(self) -> dict[tuple[str, int], PartitionState]:
        """Every partition's state of this group, read with SCAN (for inspect and tests)."""
        prefix = f"tickprop:{{{self.group}}}:"
        states: dict[tuple[str, int], PartitionState] = {}
        try:
            for raw_key in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=100):
                key = raw_key.decode("utf-8")
                topic, _, partition = key[len(prefix) :].rpartition(":")
                if not topic or not partition.isdigit():
                    continue
                fields = cast(dict[bytes, bytes], self.client.hgetall(raw_key))
                states[(topic, int(partition))] = _parse_hash(fields)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"reading group {self.group!r} failed: {exc}") from exc
        return states

