"""Hostile input: >= 10,000 generated bad (and odd but valid) records amid real ticks.

A seeded generator (TICKPROP_HOSTILE_SEED, random when unset, printed) draws records the
way hypothesis strategies would — random bytes, wrong JSON types, huge and tiny numbers,
deep nesting, long strings, unicode symbols, keys that disagree with the body, oversized
values and keys, odd headers — and they are produced to the real broker interleaved with
real ticks. One worker must read them all without crashing, dead-letter every invalid or
late record exactly once with its reason and original bytes, predict every valid one, and
end with the state `tickprop backtest` computes from the valid records alone.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Record,
    as_tick,
    backtest_symbols,
    check_predictions,
    expected_dead_letters,
    inspect_symbols,
    metric,
    metrics_port,
    on_broker,
    seed_from_env,
)
from rdkafka_kit import rdkafka_produce
from worker_kit import (
    Names,
    WorkerProcess,
    dlq_source,
    mixed_ticks,
    produce,
    read_topic,
    tick_records,
    wait_until,
    worker_env,
)

from service.codec import InvalidTick, keepable_headers

MAX_BYTES = 4096
N_HOSTILE = 10_000
REAL = ("ES", "AAPL", "IBM", "MSFT", "GOOG")
ODD_SYMBOLS = ("€URO", "日経225", "Ωmega", "🚀", "a,b", 'q"t', "x" * 64, "offset", "epoch")


class Hostile:
    """Seeded draws of records; each strategy returns (key, value, headers, meant_valid)."""

    def __init__(self, rng: random.Random, ts: int) -> None:
        self.rng = rng
        self.ts = ts  # near the real ticks' times, so odd valid ticks are not late by design
        self.odd_ts = dict.fromkeys(ODD_SYMBOLS, ts)

    # --- building blocks ---------------------------------------------------------
    def key(self) -> bytes | None:
        r = self.rng.random()
        if r < 0.7:
            return self.rng.choice(REAL).encode()  # lands beside real ticks
        if r < 0.8:
            return None
        return self.rng.randbytes(self.rng.randrange(0, 40))

    def text(self, n: int) -> str:
        alphabet = "aZ9 _-.,;:{}[]\"'\\/\t\n\u0000\u200b\u202eé日🚀\ud7ff\ufffd"
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def junk(self, depth: int = 0) -> Any:
        """Any JSON value, sometimes nested."""
        r = self.rng.randrange(9 if depth < 3 else 6)
        return [
            lambda: None,
            lambda: self.rng.choice([True, False]),
            lambda: self.rng.randrange(-(10**20), 10**20),
            lambda: self.rng.choice([0.0, -0.0, 5e-324, 1e308, -1e308, 1e-300, 2.5]),
            lambda: self.text(self.rng.randrange(0, 30)),
            lambda: "",
            lambda: [self.junk(depth + 1) for _ in range(self.rng.randrange(4))],
            lambda: {self.text(3): self.junk(depth + 1) for _ in range(self.rng.randrange(4))},
            lambda: {"price": self.junk(depth + 1)},
        ][r]()

    def body(self, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"symbol": self.rng.choice(REAL), "ts": self.ts, "price": 10.5}
        base.update(fields)
        return base

    def dumps(self, body: Any) -> bytes:
        return json.dumps(body, ensure_ascii=self.rng.random() < 0.5).encode(
            "utf-8", "surrogatepass"
        )

    # --- strategies ----------------------------------------------------------------
    def random_bytes(self) -> tuple[bytes | None, bytes | None, bool]:
        return self.key(), self.rng.randbytes(self.rng.randrange(0, 300)), False

    def not_an_object(self) -> tuple[bytes | None, bytes | None, bool]:
        value = self.rng.choice([[1, 2], "ES", 3.5, None, True, [], [self.body()]])
        return self.key(), self.dumps(value), False

    def wrong_types(self) -> tuple[bytes | None, bytes | None, bool]:
        field = self.rng.choice(["symbol", "ts", "price", "volume"])
        bad = {
            "symbol": [None, 7, ["ES"], {"s": 1}, True, "", " ES", "ES\n", "x" * 65],
            "ts": [None, True, "yesterday", 1.5, -1, [1], {}, "2024-13-45", 10**30, ""],
            "price": [None, "10.5", True, [10.5], {}, 0, -0.0, -3, 1e309],
            "volume": ["many", -1, True, [], {}, -1e-9, 1e309],
        }[field]
        body = self.body(**{field: self.rng.choice(bad)})
        return body["symbol"].encode() if isinstance(body["symbol"], str) else None, \
            self.dumps(body).replace(b"Infinity", b"1e999"), False  # fmt: skip

    def missing_field(self) -> tuple[bytes | None, bytes | None, bool]:
        body = self.body()
        del body[self.rng.choice(["symbol", "ts", "price"])]
        return self.key(), self.dumps(body), False

    def non_finite(self) -> tuple[bytes | None, bytes | None, bool]:
        symbol = self.rng.choice(REAL)
        literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
        field = self.rng.choice([b"price", b"volume"])
        value = b'{"symbol": "%s", "ts": %d, "price": 10.0, "%s": %s}' % (
            symbol.encode(), self.ts, field, literal
        )  # fmt: skip
        return symbol.encode(), value, False

    def huge_integer(self) -> tuple[bytes | None, bytes | None, bool]:
        digits = "9" * self.rng.choice([400, 5000, 20000])  # beyond int-parsing limits too
        value = b'{"symbol": "ES", "ts": %s, "price": %s}' % (
            digits.encode(), self.rng.choice([b"1.0", digits.encode()])
        )  # fmt: skip
        return b"ES", value, False

    def deep(self) -> tuple[bytes | None, bytes | None, bool]:
        n = self.rng.choice([100, 1000, 1500])
        nested = "[" * n + "]" * n
        if self.rng.random() < 0.5:  # deep inside an otherwise good tick, or on its own
            value = b'{"symbol": "ES", "ts": %d, "price": %s}' % (self.ts, nested.encode())
        else:
            value = nested.encode()
        return b"ES", value, False

    def long_string(self) -> tuple[bytes | None, bytes | None, bool]:
        symbol = self.text(self.rng.randrange(65, 2000))
        return symbol.encode("utf-8", "surrogatepass"), self.dumps(self.body(symbol=symbol)), False

    def bad_unicode_symbol(self) -> tuple[bytes | None, bytes | None, bool]:
        symbol = self.rng.choice(["\u0000ES", "E\u200bS", "\ud800", "ES\u2028", "\x7f", "\t"])
        key = symbol.encode("utf-8", "surrogatepass")
        return key, self.dumps(self.body(symbol=symbol)), False

    def key_disagrees(self) -> tuple[bytes | None, bytes | None, bool]:
        body = self.body()
        key = self.rng.choice(
            [b"es", b"ES ", b"\xff\xfe", b"AAPL" if body["symbol"] != "AAPL" else b"IBM", b""]
        )
        return key, self.dumps(body), False

    def oversized(self) -> tuple[bytes | None, bytes | None, bool]:
        if self.rng.random() < 0.3:  # a key over the limit, good body
            return b"E" * (MAX_BYTES + 1), self.dumps(self.body(symbol="ES")), False
        size = self.rng.choice([MAX_BYTES + 1, 3 * MAX_BYTES, 100_000])
        body = self.body(pad="p" * size)
        return body["symbol"].encode(), self.dumps(body), False

    def odd_but_valid(self) -> tuple[bytes | None, bytes | None, bool]:
        """Unicode symbols, extreme prices, extra fields, ISO ts: valid, own symbols."""
        symbol = self.rng.choice(ODD_SYMBOLS)
        late = self.rng.random() < 0.1
        if not late:
            self.odd_ts[symbol] += self.rng.randrange(0, 3)
        ts: Any = self.odd_ts[symbol] - (1 if late else 0)
        price = self.rng.choice([5e-324, 1e-300, 1e-9, 1.0, 1e9, 1e300, 1.7976931348623157e308])
        price *= self.rng.choice([1.0, 1.5, 1.0000001])
        body: dict[str, Any] = {"symbol": symbol, "ts": ts, "price": price}
        if self.rng.random() < 0.3:
            body["extra"] = self.junk()
        if self.rng.random() < 0.3:
            body["volume"] = self.rng.choice([0, 0.0, 1e308, 5e-324])
        return symbol.encode(), self.dumps(body), True  # late or not is the worker's call

    def draw(self) -> tuple[Record, bool]:
        strategies: list[Callable[[], tuple[bytes | None, bytes | None, bool]]] = [
            self.random_bytes, self.not_an_object, self.wrong_types, self.missing_field,
            self.non_finite, self.huge_integer, self.deep, self.long_string,
            self.bad_unicode_symbol, self.key_disagrees, self.oversized, self.odd_but_valid,
        ]  # fmt: skip
        key, value, valid = self.rng.choice(strategies)()
        headers = None
        if self.rng.random() < 0.1:
            headers = [(self.text(5), self.rng.randbytes(self.rng.randrange(20)))]
        return (key, value, headers), valid

    def odd_headers(self) -> list[tuple[str, bytes | None]]:
        """Headers Kafka allows: null and empty values, repeated and empty names, many."""
        r = self.rng.random()
        if r < 0.3:
            return [("trace", None)]
        if r < 0.5:
            return [("", b""), ("a", None), ("a", b"1"), ("a", b"")]
        if r < 0.7:
            return [(self.text(3), None if i % 2 else b"x" * i) for i in range(300)]
        return [(self.text(5), self.rng.choice([None, b"", self.rng.randbytes(8)]))]


def test_hostile_records_are_dead_lettered_with_reasons_and_never_touch_a_model(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    seed = seed_from_env("TICKPROP_HOSTILE_SEED")
    rng = random.Random(seed)
    ticks = mixed_ticks(n_stocks=3000, n_es=3000)
    gen = Hostile(rng, ts=ticks[len(ticks) // 2].ts)
    hostile = [gen.draw() for _ in range(N_HOSTILE)]
    records: list[Record] = list(tick_records(ticks))
    for record, _ in hostile:  # spread among the real ticks, order kept
        records.insert(rng.randrange(len(records) + 1), record)
    # The generator's intent agrees with the codec: no bad record slips through as valid.
    for (key, value, _), meant_valid in hostile:
        if not meant_valid:
            with pytest.raises(InvalidTick):
                as_tick(key, value, MAX_BYTES)

    names = Names.fresh()
    produce(broker, names.ticks, records)
    # Headers kafka-python's producer cannot send, from librdkafka (with kafka-python's
    # partitioner, murmur2, so a symbol stays on its partition).
    odd = [
        (key, value, gen.odd_headers()) for (key, value, _), _ in (gen.draw() for _ in range(300))
    ]
    rdkafka_produce(broker, names.ticks, odd, partitioner="murmur2_random")
    held = on_broker(broker, names.ticks)
    env = worker_env(broker, redis_url, names, max_message_bytes=MAX_BYTES)
    worker = WorkerProcess(env, tmp_path / "worker.log", "--max-idle-seconds", "3")
    assert worker.wait(timeout=240) == 0, worker.tail()
    assert not [e for e in worker.events() if e.get("level") in ("ERROR", "CRITICAL")]

    expected = expected_dead_letters(held, MAX_BYTES)
    dead: dict[tuple[int, int], list[str]] = {}
    originals = dict(zip(held.positions, held.records, strict=True))
    for record in read_topic(broker, names.dlq):
        headers = {k: v.decode() for k, v in record.headers if k.startswith("tickprop.")}
        source = dlq_source(record)
        assert headers["tickprop.source.topic"] == names.ticks
        dead.setdefault(source, []).append(headers["tickprop.reason"])
        key, value, original_headers = originals[source]
        assert (record.key, record.value) == (key, value), "original bytes kept"
        kept = keepable_headers(original_headers)  # null values listed, not dropped
        assert [(k, bytes(v)) for k, v in record.headers][: len(kept)] == kept, "headers kept"
    assert {s: r[0] for s, r in dead.items()} == expected
    assert all(len(r) == 1 for r in dead.values()), "each dead-lettered once"

    reasons = Counter(expected.values())
    print(f"hostile seed {seed}: {N_HOSTILE} generated, {len(expected)} dead-lettered: {reasons}")
    assert len(expected) >= N_HOSTILE * 0.85
    assert len(reasons) >= 9  # the strategies reach most reason codes
    check_predictions(broker, names.predictions, names.ticks, held, MAX_BYTES)
    assert inspect_symbols(env) == backtest_symbols(held, tmp_path, env, MAX_BYTES)


def test_symbol_flood_is_bounded_by_max_symbols_and_refusals_are_counted(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    T = 1_704_205_800_000
    flood = [
        (f"S{i:05d}".encode(), json.dumps({"symbol": f"S{i:05d}", "ts": T, "price": 1.0}).encode(),
         None)
        for i in range(3000)
    ]  # fmt: skip
    produce(broker, names.ticks, flood)
    env = worker_env(broker, redis_url, names, max_symbols=50)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        port = metrics_port(worker)
        wait_until(
            lambda: (metric(port, "tickprop_refused_symbols_total") or 0) >= 3000 - 50,
            timeout=120,
            what="every symbol beyond the 50th refused",
        )
        wait_until(lambda: metric(port, "tickprop_symbols") == 50, 10, "the symbols gauge")
        assert metric(port, "tickprop_refused_symbols_total") == 3000 - 50
        assert metric(port, "tickprop_dlq_total", 'reason="too_many_symbols"') == 3000 - 50
        assert worker.terminate() == 0, worker.tail()
    finally:
        if worker.process.poll() is None:
            worker.kill()
    reasons = Counter(
        dict(record.headers)["tickprop.reason"] for record in read_topic(broker, names.dlq)
    )
    assert reasons == {b"too_many_symbols": 3000 - 50}
