"""The Redis checkpoint store against a real redis-server: claims, fencing, offsets."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.store import Fenced, OffsetWentBackwards, Store, StoreUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str) -> Store:
    # A fresh group per test keeps tests independent on the shared session server.
    return Store(redis.Redis.from_url(redis_url), group=f"g-{uuid.uuid4().hex[:8]}")


def test_first_claim_has_no_offset_and_no_symbols(store: Store) -> None:
    state = store.claim("ticks", 0)
    assert state.epoch == 1
    assert state.offset is None
    assert state.blobs == {}


def test_checkpoint_round_trips_blobs_and_offset(store: Store) -> None:
    epoch = store.claim("ticks", 3).epoch
    blob = bytes(range(256)) * 4  # arbitrary binary, including NUL bytes
    store.checkpoint("ticks", 3, epoch, 42, {"ES": blob, "AAPL": b"\x00"})
    state = store.claim("ticks", 3)
    assert state.offset == 42
    assert state.blobs == {"ES": blob, "AAPL": b"\x00"}
    assert state.epoch == epoch + 1


def test_one_checkpoint_can_carry_ten_thousand_changed_symbols(store: Store) -> None:
    """A symbol flood up to max_symbols changes them all between two checkpoints; Lua's
    unpack() fails past ~8,000 values, which once left such a partition unable to save."""
    epoch = store.claim("ticks", 0).epoch
    blobs = {f"S{i}": i.to_bytes(3, "little") for i in range(10_000)}
    store.checkpoint("ticks", 0, epoch, 10_001, blobs)
    state = store.claim("ticks", 0)
    assert state.offset == 10_001
    assert state.blobs == blobs


def test_checkpoint_writes_only_changed_symbols_and_keeps_others(store: Store) -> None:
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 10, {"A": b"a1", "B": b"b1"})
    store.checkpoint("ticks", 0, epoch, 20, {"B": b"b2"})
    state = store.claim("ticks", 0)
    assert state.blobs == {"A": b"a1", "B": b"b2"}
    assert state.offset == 20


def test_old_epoch_checkpoint_is_refused_after_another_claim(store: Store) -> None:
    old = store.claim("ticks", 1).epoch
    store.checkpoint("ticks", 1, old, 5, {"ES": b"old-owner"})
    new = store.claim("ticks", 1).epoch
    with pytest.raises(Fenced, match=f"epoch {old} != stored {new}"):
        store.checkpoint("ticks", 1, old, 9, {"ES": b"stale"})
    store.checkpoint("ticks", 1, new, 7, {"ES": b"new-owner"})
    state = store.load_all()[("ticks", 1)]
    assert state.blobs == {"ES": b"new-owner"}
    assert state.offset == 7


def test_checkpoint_without_a_claim_is_fenced(store: Store) -> None:
    with pytest.raises(Fenced):
        store.checkpoint("ticks", 0, 1, 1, {"ES": b"x"})
    assert store.load_all() == {}


def test_offset_that_goes_backwards_is_refused_and_nothing_written(store: Store) -> None:
    epoch = store.claim("ticks", 0).epoch
    store.checkpoint("ticks", 0, epoch, 100, {"ES": b"v1"})
    with pytest.raises(OffsetWentBackwards, match="offset 99 < stored 100"):
        store.checkpoint("ticks", 0, epoch, 99, {"ES": b"v2"})
    store.checkpoint("ticks", 0, epoch, 100, {})  # equal offset: an idle checkpoint is fine
    assert store.load_all()[("ticks", 0)].blobs == {"ES": b"v1"}


def test_symbols_named_like_reserved_fields_do_not_clobber_them(store: Store) -> None:
    epoch = store.claim("ticks", 0).epoch
    blobs = {"offset": b"o", "epoch": b"e", "\x00x": b"n", "ES": b"s"}
    store.checkpoint("ticks", 0, epoch, 12, blobs)
    state = store.claim("ticks", 0)
    assert state.blobs == blobs
    assert (state.epoch, state.offset) == (epoch + 1, 12)
    raw = store.client.hgetall(store.key("ticks", 0))
    assert raw[b"ES"] == b"s" and raw[b"offset"] == b"12"  # plain symbols keep their name


def test_load_all_sees_only_its_group_and_parses_dotted_topics(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    group = f"grp*[{uuid.uuid4().hex[:6]}]"  # glob characters must be matched literally
    mine, other = Store(client, group), Store(client, group + "x")
    for store in (mine, other):
        for partition in (0, 5):
            epoch = store.claim("my.ticks-v2", partition).epoch
            store.checkpoint("my.ticks-v2", partition, epoch, partition + 1, {"S": b"s"})
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


def test_dlq_mark_is_written_with_the_checkpoint_and_is_not_a_symbol(store: Store) -> None:
    epoch = store.claim("ticks", 2).epoch
    store.checkpoint("ticks", 2, epoch, 10, {"ES": b"s"}, dlq_mark=77)
    store.checkpoint("ticks", 2, epoch, 20, {"ES": b"t"})  # no new dead letters: mark stays
    state = store.claim("ticks", 2)
    assert (state.offset, state.dlq_mark, state.blobs) == (20, 77, {"ES": b"t"})
    stale = state.epoch - 1
    with pytest.raises(Fenced):
        store.checkpoint("ticks", 2, stale, 30, {}, dlq_mark=99)
    assert store.claim("ticks", 2).dlq_mark == 77
