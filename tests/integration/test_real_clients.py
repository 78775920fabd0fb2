"""Real clients around a running worker: librdkafka produces the ticks and reads the predictions.

One `tickprop worker` process, one stream (real ticks of six symbols), produced the way
a new user's producer would: confluent-kafka (librdkafka) in its default settings — its
partitioner is not kafka-python's — in segments compressed with each codec Kafka has
(gzip, snappy, lz4, zstd) between plain ones, with headers Kafka allows and kafka-python's
producer does not (null values, empty values, repeated names, hundreds of headers), plus
key-less ticks, ticks with `ts` in seconds, and one header name that is not UTF-8 (from
a hand-built record: no client library sends one). A librdkafka consumer in a group,
with read_committed, reads the predictions. Every valid tick gets exactly one prediction
with every documented field right, every other record is dead-lettered once with its
reason and its headers, the state equals `tickprop backtest`'s, and SIGTERM exits 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import backtest_symbols, expected_dead_letters, inspect_symbols, on_broker
from harness import valid_positions as valid_indexes
from kafka import KafkaProducer
from rdkafka_kit import CODECS, rdkafka_produce, rdkafka_read
from record_tools import RawName
from worker_kit import (
    Names,
    Produced,
    Tick,
    WorkerProcess,
    dlq_source,
    mixed_ticks,
    read_topic,
    stored_offsets,
    wait_until,
    worker_env,
)

from service import codec

PARTITIONS = 6
PREDICTION_FIELDS = {
    "id", "symbol", "ts", "horizon", "p_up", "direction", "model_version", "features_ready",
    "forecasts",
}  # fmt: skip
FORECAST_FIELDS = {"horizon", "p_up", "direction", "model_version"}
HORIZONS = [1, 5, 20]  # the default TICKPROP_HORIZONS, in order
# Headers Kafka allows, on valid and invalid ticks alike.
ODD_HEADERS: list[list[tuple[str, bytes | None]]] = [
    [("trace", None)],
    [("empty", b"")],
    [("a", None), ("a", b""), ("a", b"2"), ("", b"no name")],
    [(f"h{i}", None if i % 3 == 0 else b"v" * (i % 5)) for i in range(300)],
]


def segment_records(ticks: list[Tick], start: int) -> list[tuple[Any, Any, Any]]:
    """The ticks keyed by symbol, with odd headers on some and bad records between them."""
    out: list[tuple[Any, Any, Any]] = []
    for i, tick in enumerate(ticks, start):
        key, value = tick.symbol.encode(), tick.value()
        out.append((key, value, ODD_HEADERS[i // 25 % 4] if i % 25 == 0 else None))
        if i % 40 == 7:
            out.append((None, value, None))  # key-less: missing_key
        if i % 40 == 23:
            seconds = {"symbol": tick.symbol, "ts": tick.ts // 1000, "price": tick.price}
            out.append((key, json.dumps(seconds).encode(), ODD_HEADERS[0]))  # bad_ts
        if i % 40 == 31:
            bad = {"symbol": tick.symbol, "ts": tick.ts, "price": -tick.price}
            out.append((key, json.dumps(bad).encode(), ODD_HEADERS[i % 4]))  # bad_price
    return out


@pytest.fixture(scope="module")
def run(broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    names = Names.fresh()
    tmp = tmp_path_factory.mktemp("real_clients")
    ticks = mixed_ticks(n_stocks=500, n_es=500)
    plan = ["none", *CODECS, "none"]  # each compressed segment sits between plain ones
    size = len(ticks) // len(plan) + 1
    for n, compression in enumerate(plan):
        chunk = ticks[n * size : (n + 1) * size]
        rdkafka_produce(
            broker, names.ticks, segment_records(chunk, n * size), compression, PARTITIONS
        )
    # A header name that is not UTF-8, on a bad tick and on a tick of a symbol of its own.
    raw = KafkaProducer(bootstrap_servers=broker, linger_ms=20)
    name = RawName(b"\xff\xfeid")
    last = ticks[-1]
    raw.send(names.ticks, key=b"ES", value=b"{not json", headers=[(name, b"1")])
    own = {"symbol": "RAWHDR", "ts": last.ts, "price": 1.5}
    raw.send(names.ticks, key=b"RAWHDR", value=json.dumps(own).encode(), headers=[(name, b"2")])
    raw.flush()
    raw.close()

    held = on_broker(broker, names.ticks)  # what the topic holds, in partition/offset order
    env = worker_env(broker, redis_url, names)
    worker = WorkerProcess(env, tmp / "worker.log")
    try:
        wait_until(
            lambda: stored_offsets(redis_url, names.group) == held.end_offsets(),
            120,
            "every partition checkpointed at its end",
        )
        valid = [held.positions[i] for i in valid_indexes(held)]
        predictions = rdkafka_read(broker, names.predictions, f"readers-{names.group}", len(valid))
        code = worker.terminate(timeout=60)
    except BaseException:
        worker.kill()
        print(worker.tail())
        raise
    return {
        "names": names, "held": held, "valid": valid, "predictions": predictions,
        "code": code, "worker": worker, "env": env, "tmp": tmp, "broker": broker,
    }  # fmt: skip


def test_librdkafka_spreads_the_stream_its_own_way(run: dict[str, Any]) -> None:
    held: Produced = run["held"]
    partitions_of: dict[bytes, set[int]] = {}
    for i in valid_indexes(held):
        partitions_of.setdefault(held.records[i][0], set()).add(held.positions[i][0])
    assert all(len(p) == 1 for p in partitions_of.values()), "a symbol stays on one partition"
    assert len({p for (p,) in partitions_of.values()}) >= 3  # the symbols are spread out


def test_every_valid_tick_gets_one_prediction_with_every_field_right(run: dict[str, Any]) -> None:
    names: Names = run["names"]
    held: Produced = run["held"]
    ticks_at = {
        position: codec.decode_tick(key, value)
        for (key, value, _), position in zip(held.records, held.positions, strict=True)
        if position in set(run["valid"])
    }
    seen: dict[str, int] = {}
    for msg in run["predictions"]:
        body = json.loads(msg.value())
        assert set(body) == PREDICTION_FIELDS
        seen[body["id"]] = seen.get(body["id"], 0) + 1
        topic, partition, offset = body["id"].rsplit("/", 2)
        tick = ticks_at[(int(partition), int(offset))]
        assert topic == names.ticks
        assert msg.key() == tick.symbol.encode() == body["symbol"].encode()
        assert body["ts"] == tick.ts_ms
        assert type(body["features_ready"]) is bool
        forecasts = body["forecasts"]
        assert [f["horizon"] for f in forecasts] == HORIZONS
        for f in forecasts:
            assert set(f) == FORECAST_FIELDS
            assert type(f["p_up"]) is float and 0.0 <= f["p_up"] <= 1.0
            assert f["direction"] == ("up" if f["p_up"] >= 0.5 else "down")
            assert type(f["model_version"]) is int and f["model_version"] >= 0
        assert {k: body[k] for k in FORECAST_FIELDS} == forecasts[0]  # the first, repeated
    expected = {f"{names.ticks}/{p}/{o}" for p, o in run["valid"]}
    assert set(seen) == expected
    assert all(n == 1 for n in seen.values()), "one prediction per tick"
    assert "RAWHDR" in {json.loads(m.value())["symbol"] for m in run["predictions"]}


def test_every_other_record_is_dead_lettered_once_with_its_reason_and_headers(
    run: dict[str, Any],
) -> None:
    names: Names = run["names"]
    held: Produced = run["held"]
    originals = dict(zip(held.positions, held.records, strict=True))
    reasons: dict[tuple[int, int], list[str]] = {}
    dead = read_topic(run["broker"], names.dlq)
    for record in dead:
        source = dlq_source(record)
        headers = dict(record.headers)
        reasons.setdefault(source, []).append(headers["tickprop.reason"].decode())
        key, value, original = originals[source]
        assert (record.key, record.value) == (key, value)
        kept = codec.keepable_headers(original)
        assert [(k, bytes(v)) for k, v in record.headers][: len(kept)] == kept
    expected = expected_dead_letters(held)
    assert {s: r[0] for s, r in reasons.items()} == expected
    assert all(len(r) == 1 for r in reasons.values()), "each dead-lettered once"
    counts: dict[str, int] = {}
    for reason in expected.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert counts.keys() >= {"missing_key", "bad_ts", "bad_price", "not_json"}
    # the not-UTF-8 header name survives, escaped and listed
    (escaped,) = [
        h for h in map(dict, (r.headers for r in dead)) if h["tickprop.reason"] == b"not_json"
    ]
    assert escaped["\\xff\\xfeid"] == b"1" and escaped["tickprop.escaped_header_names"] == b"0"


def test_state_equals_the_backtest_and_sigterm_exits_0(run: dict[str, Any]) -> None:
    worker: WorkerProcess = run["worker"]
    assert run["code"] == 0, worker.tail()
    errors = [e for e in worker.events() if e.get("level") in ("ERROR", "CRITICAL")]
    assert not errors, errors[:5]
    assert not worker.events("partition_unreadable")
    tmp: Path = run["tmp"]
    assert inspect_symbols(run["env"]) == backtest_symbols(run["held"], tmp, run["env"])
