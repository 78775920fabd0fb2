"""The checkpoint store's contract: claims, fencing, offsets.

One suite, run against the Redis store on a real redis-server and against the in-memory
store (`service.memory_store`), so the fake used by unit tests keeps the real contract.
Tests that need Redis itself take `redis_store`.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.memory_store import MemoryStore
from service.protocols import StateStore
from service.store import (
    Fenced,
    LayoutConflict,
    OffsetWentBackwards,
    StateWentBack,
    Store,
    StoreUnavailable,
    _digest,
    legacy_key,
)

pytestmark = pytest.mark.integration


def counter(epoch: str) -> int:
    """The claim counter of a fence ``<counter>-<token>``."""
    return int(epoch.split("-")[0])


@pytest.fixture
def redis_store(redis_url: str) -> Store:
    # A fresh group per test keeps tests independent on the shared session server.
    return Store(redis.Redis.from_url(redis_url), group=f"g-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return MemoryStore(group=f"g-{uuid.uuid4().hex[:8]}")
    return request.getfixturevalue("redis_store")


def test_first_claim_has_no_offset_and_no_symbols(store: StateStore) -> None:
    state = store.claim("ticks", 0)
    assert counter(state.epoch) == 1
    assert state.offset is None
    assert state.blobs == {}


def test_checkpoint_round_trips_blobs_and_offset(store: StateStore) -> None:
    epoch = store.claim("ticks", 3).epoch
    blob = bytes(range(256)) * 4  # arbitrary binary, including NUL bytes
    store.checkpoint("ticks", 3, epoch, 42, {"ES": blob, "AAPL": b"\x00"}, stored_offset=None)
    state = store.claim("ticks", 3)
    assert state.offset == 42
    assert state.blobs == {"ES": blob, "AAPL": b"\x00"}
    assert counter(state.epoch) == counter(epoch) + 1


def test_one_checkpoint_can_carry_ten_thousand_changed_symbols(store: StateStore) -> None:
    """A symbol flood up to max_symbols changes them all between two checkpoints; Lua's
    unpack() fails past ~8,000 values, which once left such a partition unable to save."""
    epoch = store.claim("ticks", 0).epoch
    blobs = {f"S{i}": i.to_bytes(3, "little") for i in range(10_000)}
    store.checkpoint("ticks", 0, epoch, 10_001, blobs, stored_offset=None)
    state = store.claim("ticks", 0)
    assert state.offset == 10_001
    assert state.blobs == blobs


def test_checkpoint_writes_only_changed_symbols_and_keeps_others(store: StateStore) -> None:
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 10, {"A": b"a1", "B": b"b1"}, stored_offset=None)
    store.checkpoint("ticks", 0, epoch, 20, {"B": b"b2"}, stored_offset=10)
    state = store.claim("ticks", 0)
    assert state.blobs == {"A": b"a1", "B": b"b2"}
    assert state.offset == 20


def test_old_epoch_checkpoint_is_refused_after_another_claim(store: StateStore) -> None:
    old = store.claim("ticks", 1).epoch
    store.checkpoint("ticks", 1, old, 5, {"ES": b"old-owner"}, stored_offset=None)
    new = store.claim("ticks", 1).epoch
    with pytest.raises(Fenced, match=f"epoch {old} != stored {new}"):
        store.checkpoint("ticks", 1, old, 9, {"ES": b"stale"}, stored_offset=5)
    store.checkpoint("ticks", 1, new, 7, {"ES": b"new-owner"}, stored_offset=5)
    state = store.load_all()[("ticks", 1)]
    assert state.blobs == {"ES": b"new-owner"}
    assert state.offset == 7


def test_checkpoint_without_a_claim_is_fenced(store: StateStore) -> None:
    with pytest.raises(Fenced):
        store.checkpoint("ticks", 0, "1-00", 1, {"ES": b"x"}, stored_offset=None)
    assert store.load_all() == {}


def test_offset_that_goes_backwards_is_refused_and_nothing_written(store: StateStore) -> None:
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 100, {"ES": b"v1"}, stored_offset=None)
    with pytest.raises(OffsetWentBackwards, match="offset 99 < stored 100"):
        store.checkpoint("ticks", 0, epoch, 99, {"ES": b"v2"}, stored_offset=100)
    # equal offset: an idle checkpoint is fine
    store.checkpoint("ticks", 0, epoch, 100, {}, stored_offset=100)
    assert store.load_all()[("ticks", 0)].blobs == {"ES": b"v1"}


def test_symbols_named_like_reserved_fields_do_not_clobber_them(redis_store: Store) -> None:
    store = redis_store
    epoch = store.claim("ticks", 0).epoch
    blobs = {"offset": b"o", "epoch": b"e", "\x00x": b"n", "ES": b"s"}
    store.checkpoint("ticks", 0, epoch, 12, blobs, stored_offset=None)
    state = store.claim("ticks", 0)
    assert state.blobs == blobs
    assert (counter(state.epoch), state.offset) == (counter(epoch) + 1, 12)
    raw = store.client.hgetall(store.key("ticks", 0))
    assert raw[b"ES"] == b"s" and raw[b"offset"] == b"12"  # plain symbols keep their name


def test_load_all_sees_only_its_group_and_parses_dotted_topics(redis_url: str) -> None:
    """Redis: one keyspace holds many groups; load_all must not read another's."""
    client = redis.Redis.from_url(redis_url)
    group = f"grp*[{uuid.uuid4().hex[:6]}]"  # glob characters must be matched literally
    mine, other = Store(client, group), Store(client, group + "x")
    for store in (mine, other):
        for partition in (0, 5):
            epoch = store.claim("my.ticks-v2", partition).epoch
            store.checkpoint(
                "my.ticks-v2", partition, epoch, partition + 1, {"S": b"s"}, stored_offset=None
            )
    states = mine.load_all()
    assert sorted(states) == [("my.ticks-v2", 0), ("my.ticks-v2", 5)]
    assert states[("my.ticks-v2", 5)].offset == 6


def test_unreachable_redis_raises_store_unavailable() -> None:
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    store = Store(client, "g")
    with pytest.raises(StoreUnavailable):
        store.claim("ticks", 0)
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_dlq_mark_is_written_with_the_checkpoint_and_is_not_a_symbol(store: StateStore) -> None:
    epoch = store.claim("ticks", 2).epoch
    store.checkpoint("ticks", 2, epoch, 10, {"ES": b"s"}, dlq_mark=77, stored_offset=None)
    # no new dead letters: the mark stays
    store.checkpoint("ticks", 2, epoch, 20, {"ES": b"t"}, stored_offset=10)
    state = store.claim("ticks", 2)
    assert (state.offset, state.dlq_mark, state.blobs) == (20, 77, {"ES": b"t"})
    with pytest.raises(Fenced):
        store.checkpoint("ticks", 2, epoch, 30, {}, dlq_mark=99, stored_offset=20)
    assert store.claim("ticks", 2).dlq_mark == 77


def test_a_claim_that_reuses_a_lost_claims_counter_still_fences_its_holder(
    redis_store: Store,
) -> None:
    """A failover that lost claim n lets the next claim count n again; the tokens differ."""
    store = redis_store
    key = store.key("ticks", 0)
    store.claim("ticks", 0)
    before = store.client.dump(key)  # what a replica that missed the next claim holds
    lost = store.claim("ticks", 0).epoch
    store.client.restore(key, 0, before, replace=True)
    again = store.claim("ticks", 0).epoch
    assert counter(lost) == counter(again) == 2  # a counter alone would fence nobody
    with pytest.raises(Fenced):
        store.checkpoint("ticks", 0, lost, 5, {"ES": b"zombie"}, stored_offset=None)
    store.checkpoint("ticks", 0, again, 5, {"ES": b"owner"}, stored_offset=None)
    assert store.load_all()[("ticks", 0)].blobs == {"ES": b"owner"}


def test_after_lost_checkpoints_state_and_offset_go_back_together_and_the_owner_rereads(
    redis_store: Store,
) -> None:
    store = redis_store
    key = store.key("ticks", 0)
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 10, {"A": b"a10", "B": b"b10"}, stored_offset=None)
    before = store.client.dump(key)
    store.checkpoint("ticks", 0, epoch, 20, {"A": b"a20"}, stored_offset=10)
    store.client.restore(key, 0, before, replace=True)  # the failover lost offset 20
    back = store.load_all()[("ticks", 0)]
    assert (back.offset, back.blobs) == (10, {"A": b"a10", "B": b"b10"})
    # Writing only B (changed since 20) beside A at 10 would mix two points in time.
    with pytest.raises(StateWentBack, match="stored offset 10 is not 20"):
        store.checkpoint("ticks", 0, epoch, 30, {"B": b"b30"}, stored_offset=20)
    assert store.load_all()[("ticks", 0)] == back


def _legacy_state(store: Store, partition: int, blobs: dict[bytes, bytes]) -> str:
    """Write a partition's hash as the first releases did; return its key."""
    key = legacy_key(store.group, "ticks", partition)
    store.client.hset(key, mapping={b"epoch": b"4", b"offset": b"77", **blobs})
    return key


def test_state_under_the_old_layout_is_moved_by_the_first_claim(redis_store: Store) -> None:
    store = redis_store
    old = _legacy_state(store, 2, {b"ES": b"es-state", b"\x00epoch": b"sym-epoch"})
    assert store.load_all()[("ticks", 2)].offset == 77  # visible before the move too
    state = store.claim("ticks", 2)
    assert (state.offset, state.blobs) == (77, {"ES": b"es-state", "epoch": b"sym-epoch"})
    assert store.client.hgetall(old) == {b"epoch": b"moved"}  # a tombstone, nothing else
    epoch = state.epoch
    store.checkpoint("ticks", 2, epoch, 80, {"ES": b"newer"}, stored_offset=77)
    assert store.claim("ticks", 2).blobs["ES"] == b"newer"  # the tombstone moves nothing
    assert store.legacy_partitions() == []


def test_a_move_interrupted_after_any_step_is_finished_by_the_next_claim(
    redis_store: Store,
) -> None:
    store = redis_store
    blobs = {b"ES": b"e", b"NQ": b"n"}
    for partition, steps in ((0, 1), (1, 2)):  # crashed after freezing / after copying
        old = _legacy_state(store, partition, blobs)
        flat = store._freeze(keys=[old])
        if steps == 2:
            fields = {k: v for k, v in zip(flat[::2], flat[1::2], strict=True) if k != b"epoch"}
            args = [_digest(fields)] + [x for pair in fields.items() for x in pair]
            store._copy(keys=[store.key("ticks", partition)], args=args)
        state = store.claim("ticks", partition)
        assert (state.offset, state.blobs) == (77, {"ES": b"e", "NQ": b"n"})
        assert store.client.hgetall(old) == {b"epoch": b"moved"}


def test_two_workers_racing_the_move_lose_nothing(redis_store: Store) -> None:
    """The slower one copies after the faster one claimed and checkpointed: no overwrite."""
    store = redis_store
    old = _legacy_state(store, 0, {b"ES": b"old"})
    slow_view = store._freeze(keys=[old])  # the slow worker froze and read, then stalled
    fast = store.claim("ticks", 0)
    store.checkpoint("ticks", 0, fast.epoch, 90, {"ES": b"fast"}, stored_offset=77)
    fields = {k: v for k, v in zip(slow_view[::2], slow_view[1::2], strict=True) if k != b"epoch"}
    args = [_digest(fields)] + [x for pair in fields.items() for x in pair]
    assert store._copy(keys=[store.key("ticks", 0)], args=args)[0] == 1  # same move: no-op
    assert store.claim("ticks", 0).blobs == {"ES": b"fast"}


def test_a_worker_of_the_old_release_is_fenced_once_its_partition_moved(redis_store: Store) -> None:
    store = redis_store
    old = _legacy_state(store, 0, {b"ES": b"s"})
    store.claim("ticks", 0)
    old_release_checkpoint = store.client.register_script(
        "if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end return 1"
    )
    assert old_release_checkpoint(keys=[old], args=[4]) == 0
    with pytest.raises(redis.ResponseError):  # its claim: HINCRBY epoch
        store.client.hincrby(old, "epoch", 1)


def test_state_under_both_layouts_is_a_conflict_and_both_are_kept(redis_store: Store) -> None:
    store = redis_store
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 5, {"ES": b"new"}, stored_offset=None)
    old = _legacy_state(store, 0, {b"ES": b"old"})
    with pytest.raises(LayoutConflict, match="both kept"):
        store.claim("ticks", 0)
    assert store.client.hget(old, "ES") == b"old"
    assert store.load_all()[("ticks", 0)].blobs == {"ES": b"new"}
    assert store.legacy_partitions() == [("ticks", 0)]


def test_a_checkpoint_repeated_after_a_timeout_that_was_applied_is_not_state_gone_back(
    store: Store,
) -> None:
    """The first attempt timed out but Redis applied it; the retry (same offset, the same
    or more symbols: the partition took no ticks meanwhile) completes it."""
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 10, {"A": b"a10"}, stored_offset=None)
    store.checkpoint("ticks", 0, epoch, 20, {"A": b"a20"}, stored_offset=10)  # "timed out"
    store.checkpoint("ticks", 0, epoch, 20, {"A": b"a20", "B": b"b20"}, stored_offset=10)
    assert store.load_all()[("ticks", 0)].blobs == {"A": b"a20", "B": b"b20"}
    with pytest.raises(StateWentBack):  # any other offset is not that attempt
        store.checkpoint("ticks", 0, epoch, 25, {"A": b"a25"}, stored_offset=10)
