"""Redis checkpoint store: one hash per input partition, claimed and written under a fence.

Layout (docs/state.md): key ``tickprop:{<group>:<topic>:<partition>}``, one field per
symbol holding that symbol's ``OnlineLearner.to_bytes()`` blob, the field ``offset`` (next
offset to read) and the field ``epoch`` (the fence, renewed by every claim). The hash tag
spans the whole partition name, so in a Redis Cluster the partitions spread over the slots
and nodes, and every script below touches exactly one key.

The fence is ``<counter>-<token>``: the counter goes up by one per claim and the token is
the claimant's own 64 random bits. Replication is asynchronous, so a failover can lose the
last claim; the next claim then reuses its counter, but never its token, and the checkpoint
compares the whole fence: two workers never hold the same one. A failover can also lose the
last checkpoints. The hash then goes back as a whole (state and offset together), and the
owner's next checkpoint, which names the offset it stored last, is refused (`StateWentBack`),
so it re-reads the hash instead of writing newer symbols beside older ones.

The first releases kept the state under ``tickprop:{<group>}:<topic>:<partition>`` (one slot
per group). A claim first moves such a hash to the new key, in three one-key steps that may
be repeated after a crash or raced by another worker (`Store.move_legacy`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

OFFSET_FIELD = b"offset"
EPOCH_FIELD = b"epoch"
# Symbols share the hash with these two fields. A symbol spelled like one of them is stored
# under an escaped name starting with NUL, which no valid symbol (printable text) contains.
RESERVED_FIELDS = frozenset({OFFSET_FIELD, EPOCH_FIELD})
ESCAPE = b"\x00"
# Where, in the partition's dead-letter partition, this partition's dead letters sent after
# the checkpoint can start (see Worker). NUL-led, so no symbol's field can take this name.
DLQ_MARK_FIELD = ESCAPE + b"dlq_mark"
# On a hash moved from the old layout: the digest of what was moved (see move_legacy).
MOVED_FROM_FIELD = ESCAPE + b"moved_from"
INTERNAL_FIELDS = frozenset({DLQ_MARK_FIELD, MOVED_FROM_FIELD})
# The epoch of an old-layout hash whose state has been moved: no fence equals it, so a
# worker of an older release still holding that partition is fenced, and its claim fails
# (HINCRBY on a non-number) instead of starting the partition again from nothing.
MOVED = b"moved"

Client = redis.Redis | RedisCluster
# Errors of a Redis call: the cluster client raises some that are not RedisError
# (no node reachable at start-up, a slot no node serves).
REDIS_ERRORS = (redis.RedisError, RedisClusterException)
_TOPIC = re.compile(r"[A-Za-z0-9._-]+")  # Kafka's legal topic names: never a ':'


def symbol_field(symbol: str) -> bytes:
    """The hash field holding `symbol`'s state: the symbol itself unless it is reserved."""
    name = symbol.encode("utf-8")
    return ESCAPE + name if name in RESERVED_FIELDS or name.startswith(ESCAPE) else name


def field_symbol(name: bytes) -> str:
    """The inverse of `symbol_field`."""
    return name.removeprefix(ESCAPE).decode("utf-8")


# HSET KEYS[1] with the field/value pairs ARGV[first], ARGV[first + 1], ... unpack() of
# more than ~8,000 values fails ("too many results to unpack"), so the pairs go in chunks
# of 500; the script that calls it stays one atomic step.
_HSET_PAIRS_LUA = """
local function hset_pairs(first)
  local i = first
  while i <= #ARGV do
    local j = math.min(i + 999, #ARGV)
    redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
    i = j + 1
  end
end
"""

# KEYS[1] = partition hash, ARGV[1] = the claimant's token. Renew the fence, return the hash.
_CLAIM_LUA = """
local stored = redis.call('HGET', KEYS[1], 'epoch')
local counter = 0
if stored then
  counter = tonumber(string.match(stored, '^(%d+)'))
  if not counter then
    return redis.error_reply('epoch of ' .. KEYS[1] .. ' is ' .. stored .. ', not a fence')
  end
end
redis.call('HSET', KEYS[1], 'epoch', string.format('%d-%s', counter + 1, ARGV[1]))
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] = partition hash; ARGV = epoch, offset, the offset the caller stored last ('' for
# none), then field1, blob1, field2, blob2, ... Returns {1} when written, {0, stored_epoch}
# when fenced, {-2, stored_offset} when the stored offset is neither the caller's last one
# nor this checkpoint's (a failover lost checkpoints), {-1, stored_offset} when the offset
# would go backwards.
# Nothing is written unless every check passes.
_CHECKPOINT_LUA = _HSET_PAIRS_LUA + """
local stored_epoch = redis.call('HGET', KEYS[1], 'epoch')
if stored_epoch ~= ARGV[1] then
  return {0, stored_epoch or ''}
end
local stored_offset = redis.call('HGET', KEYS[1], 'offset')
-- ARGV[2] too: an earlier attempt of this very checkpoint that timed out but was applied
-- (the partition takes no ticks until its checkpoint succeeds, so it wrote a subset of
-- these symbols at this offset, under our fence).
if (stored_offset or '') ~= ARGV[3] and stored_offset ~= ARGV[2] then
  return {-2, stored_offset or ''}
end
if stored_offset and tonumber(ARGV[2]) < tonumber(stored_offset) then
  return {-1, stored_offset}
end
redis.call('HSET', KEYS[1], 'offset', ARGV[2])
hset_pairs(4)
return {1}
"""

# Moving one partition from the old layout: three scripts, one key each (in a Cluster the
# two keys sit in different slots), each safe to run again.
# 1. Freeze the old hash (KEYS[1]): its epoch becomes 'moved', so nothing writes it any
#    more, and return its fields; nothing when it is absent or already emptied.
_FREEZE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], 'epoch', 'moved')
if redis.call('HLEN', KEYS[1]) == 1 then return {} end
return redis.call('HGETALL', KEYS[1])
"""
# 2. Copy into the new hash (KEYS[1]); ARGV = digest of the frozen fields, then field/value
#    pairs. Returns 1 when the new hash holds them (now or from an earlier run), 0 and the
#    marker found when it holds other state (never overwritten).
_COPY_LUA = _HSET_PAIRS_LUA + """
local mark = redis.call('HGET', KEYS[1], '\\0moved_from')
if mark == ARGV[1] then return {1, mark} end
local own = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], 'epoch')
if mark or own > 0 then return {0, mark or ''} end
hset_pairs(2)
redis.call('HSET', KEYS[1], '\\0moved_from', ARGV[1])
return {1, ARGV[1]}
"""
# 3. Empty the old hash (KEYS[1]) down to its tombstone, {epoch: moved}, which keeps fencing
#    workers of older releases. Run only once the copy is confirmed.
_EMPTY_LUA = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', 'moved')
return 1
"""

# Moving one symbol's field between two partition hashes (different slots): copy, then
# delete, each one key and each safe to repeat, since the source is deleted only once the
# target holds the same bytes.
# KEYS[1] = target hash; ARGV = field, blob. 1 when the target holds the blob now, 0 when it
# holds other bytes for that symbol (kept).
_PUT_LUA = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and held ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] = source hash; ARGV = field, blob. Delete the field only if it still holds blob.
_DROP_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""


class StoreError(Exception):
    """Base class of the checkpoint store's errors."""


class Fenced(StoreError):
    """Our fence is not the stored one: the partition was claimed since, our state is stale."""


class StateWentBack(Fenced):
    """The stored offset is not the one we stored last: a Redis failover lost checkpoints.

    The stored hash is an older, consistent state (its symbols and offset went back
    together); ours has moved on from what is stored, so writing only our changed symbols
    would mix two points in time. Re-claim: re-read the hash and the ticks after it.
    """


class OffsetWentBackwards(StoreError):
    """A checkpoint tried to store an offset below the stored one (a bug, never expected)."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered with an error; retry later."""


class LayoutConflict(StoreError):
    """A partition has state under both the old and the new key layout; nothing was moved."""


@dataclass(frozen=True)
class PartitionState:
    """What a claim returns: our fence, the next offset (None: never checkpointed)."""

    epoch: str
    offset: int | None
    blobs: dict[str, bytes] = field(default_factory=dict)
    dlq_mark: int | None = None  # see DLQ_MARK_FIELD


def partition_key(group: str, topic: str, partition: int) -> str:
    """The Redis key of one input partition's state; ``{...}`` is the Cluster hash tag."""
    return f"tickprop:{{{group}:{topic}:{partition}}}"


def legacy_key(group: str, topic: str, partition: int) -> str:
    """The key the first releases used: the whole group in one Cluster slot."""
    return f"tickprop:{{{group}}}:{topic}:{partition}"


def connect(url: str, cluster: bool = False, **kwargs: Any) -> Client:
    """A bytes-returning Redis client: plain, or redis-py's cluster client (`url` is any node).

    Raises StoreUnavailable when a cluster cannot be reached (its client asks for the slot
    map at once).
    """
    if not cluster:
        return redis.Redis.from_url(url, **kwargs)
    try:
        return RedisCluster.from_url(url, **kwargs)
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(f"redis cluster at {url!r} unreachable: {exc}") from exc


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _topic_partition(text: str) -> tuple[str, int] | None:
    """``<topic>:<partition>`` parsed, or None (a key of another group whose name has ':')."""
    topic, _, partition = text.rpartition(":")
    if _TOPIC.fullmatch(topic) and partition.isdigit():
        return topic, int(partition)
    return None


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _parse_hash(fields: Mapping[bytes, bytes]) -> PartitionState:
    """Turn a partition hash into its state: fence, offset and the symbols' blobs."""
    blobs = {
        field_symbol(name): bytes(value)
        for name, value in fields.items()
        if name not in RESERVED_FIELDS and name not in INTERNAL_FIELDS
    }
    offset = fields.get(OFFSET_FIELD)
    mark = fields.get(DLQ_MARK_FIELD)
    epoch = fields.get(EPOCH_FIELD)
    return PartitionState(
        epoch="" if epoch is None else epoch.decode(),
        offset=None if offset is None else int(offset),
        blobs=blobs,
        dlq_mark=None if mark is None else int(mark),
    )


def _digest(fields: Mapping[bytes, bytes]) -> str:
    """sha256 of a hash's fields, independent of their order."""
    h = hashlib.sha256()
    for name in sorted(fields):
        for part in (name, fields[name]):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


class Store:
    """Checkpoints of one consumer group's partitions in Redis (one node or a Cluster).

    ``client`` must return bytes (``decode_responses=False``). Every Redis failure surfaces
    as ``StoreUnavailable``, so callers need not import redis.
    """

    def __init__(self, client: Client, group: str) -> None:
        self.client = client
        self.group = group
        self._claim = client.register_script(_CLAIM_LUA)
        self._checkpoint = client.register_script(_CHECKPOINT_LUA)
        self._freeze = client.register_script(_FREEZE_LUA)
        self._copy = client.register_script(_COPY_LUA)
        self._empty = client.register_script(_EMPTY_LUA)
        self._put = client.register_script(_PUT_LUA)
        self._drop = client.register_script(_DROP_LUA)

    def key(self, topic: str, partition: int) -> str:
        return partition_key(self.group, topic, partition)

    def ping(self) -> None:
        try:
            self.client.ping()
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis ping failed: {exc}") from exc

    def claim(self, topic: str, partition: int) -> PartitionState:
        """Take ownership of a partition: renew its fence and read its state, atomically.

        State still under the old key layout is moved first (`move_legacy`).
        """
        self.move_legacy(topic, partition)
        token = os.urandom(8).hex()
        try:
            flat = self._claim(keys=[self.key(topic, partition)], args=[token])
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"claim {topic}[{partition}] failed: {exc}") from exc
        return _parse_hash(_pairs(flat))

    def checkpoint(
        self,
        topic: str,
        partition: int,
        epoch: str,
        offset: int,
        blobs: Mapping[str, bytes],
        dlq_mark: int | None = None,
        *,
        stored_offset: int | None,
    ) -> None:
        """Write changed symbols' blobs and the next offset, only if ``epoch`` is still ours.

        ``stored_offset`` is the offset this owner last stored (or found at its claim).
        Raises ``Fenced`` when another claim happened since ours, ``StateWentBack`` when the
        stored offset is neither ``stored_offset`` nor ``offset`` (a failover lost
        checkpoints; ``offset``: an earlier attempt of this checkpoint that timed out
        but was applied, which this one repeats), and
        ``OffsetWentBackwards`` when ``offset`` is below the stored one; nothing is written
        in any of these cases. ``dlq_mark``, when given, is written in the same step.
        """
        expected = b"" if stored_offset is None else str(stored_offset).encode()
        args: list[bytes | int | str] = [epoch, offset, expected]
        for symbol, blob in blobs.items():
            args.extend((symbol_field(symbol), blob))
        if dlq_mark is not None:
            args.extend((DLQ_MARK_FIELD, dlq_mark))
        try:
            reply = self._checkpoint(keys=[self.key(topic, partition)], args=args)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"checkpoint {topic}[{partition}] failed: {exc}") from exc
        status, stored = int(reply[0]), (reply[1].decode() if len(reply) > 1 else "")
        if status == 0:
            raise Fenced(f"{topic}[{partition}]: epoch {epoch} != stored {stored or 'none'}")
        if status == -2:
            raise StateWentBack(
                f"{topic}[{partition}]: stored offset {stored or 'none'} is not "
                f"{stored_offset}, the one stored last under epoch {epoch}: "
                "a Redis failover lost checkpoints; re-claim"
            )
        if status == -1:
            raise OffsetWentBackwards(f"{topic}[{partition}]: offset {offset} < stored {stored}")

    def move_legacy(self, topic: str, partition: int) -> bool:
        """Move the partition's state from the old key layout to the new one, if there is any.

        Freeze the old hash, copy it into the new one (marked with the digest of what was
        copied), then empty the old one to a tombstone. Every step touches one key and may
        run again: after a crash at any point, or when two workers race, a later call
        finishes the move, and the copy never overwrites state that is not the same move's.
        Returns whether anything was moved. Raises ``LayoutConflict`` when the new hash holds
        other state (kept, as the old one is: a person must decide).
        """
        old, new = legacy_key(self.group, topic, partition), self.key(topic, partition)
        try:
            flat = self._freeze(keys=[old])
            if not flat:
                return False
            fields = {k: v for k, v in _pairs(flat).items() if k != EPOCH_FIELD}
            digest = _digest(fields)
            args: list[bytes | str] = [digest]
            for pair in fields.items():
                args.extend(pair)
            copied, mark = self._copy(keys=[new], args=args)
            if not int(copied):
                raise LayoutConflict(
                    f"{topic}[{partition}]: state under both {old!r} and {new!r} "
                    f"(moved_from {mark.decode() or 'none'}, expected {digest}); both kept, "
                    "nothing moved: delete the one that is not wanted (docs/deploy.md)"
                )
            self._empty(keys=[old])
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"moving {old!r} to {new!r} failed: {exc}") from exc
        return True

    def move_symbol(self, topic: str, symbol: str, source: int, target: int) -> bool:
        """Move `symbol`'s state from partition `source`'s hash to `target`'s (repartition).

        Copy, then delete from the source only what was copied: a run interrupted between
        the two, or repeated, finishes the move and loses nothing. Returns False when the
        source no longer holds the symbol (moved before). Raises ``LayoutConflict`` when the
        target holds other state for it (both kept). Workers must be stopped: the symbol's
        state is not fenced while it moves (repartition renews both partitions' fences first).
        """
        name = symbol_field(symbol)
        src, dst = self.key(topic, source), self.key(topic, target)
        try:
            blob = self.client.hget(src, name)
            if blob is None:
                return False
            if not int(self._put(keys=[dst], args=[name, blob])):
                raise LayoutConflict(
                    f"{symbol!r} has state in {topic}[{source}] and other state in "
                    f"{topic}[{target}]; both kept, nothing moved: delete the one not wanted"
                )
            self._drop(keys=[src], args=[name, blob])
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(
                f"moving {symbol!r} from {src!r} to {dst!r} failed: {exc}"
            ) from exc
        return True

    def legacy_partitions(self) -> list[tuple[str, int]]:
        """Partitions with state still under the old key layout (not yet moved)."""
        prefix = f"tickprop:{{{self.group}}}:"
        found = []
        try:
            for key in self._scan(_glob_escape(prefix) + "*"):
                name = _topic_partition(key[len(prefix) :])
                if name is not None and self._hlen(key) > 1:
                    found.append(name)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"reading group {self.group!r} failed: {exc}") from exc
        return sorted(found)

    def load_all(self) -> dict[tuple[str, int], PartitionState]:
        """Every partition's state of this group, read with SCAN (for inspect and tests).

        Partitions not yet moved from the old key layout are read from there.
        """
        prefix = f"tickprop:{{{self.group}:"
        states: dict[tuple[str, int], PartitionState] = {}
        try:
            for key in self._scan(_glob_escape(prefix) + "*}"):
                name = _topic_partition(key[len(prefix) : -1])
                if name is not None:
                    states[name] = _parse_hash(self._hgetall(key))
            for topic, partition in self.legacy_partitions():
                if (topic, partition) not in states:
                    key = legacy_key(self.group, topic, partition)
                    states[(topic, partition)] = _parse_hash(self._hgetall(key))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"reading group {self.group!r} failed: {exc}") from exc
        return states

    def _scan(self, pattern: str) -> list[str]:
        """Keys matching `pattern` (on every master of a Cluster)."""
        keys = self.client.scan_iter(match=pattern, count=1000)
        return sorted({raw.decode("utf-8") for raw in keys})

    def _hgetall(self, key: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], self.client.hgetall(key))

    def _hlen(self, key: str) -> int:
        return cast(int, self.client.hlen(key))
