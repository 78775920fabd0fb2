"""One worker over a real stream with malformed records mixed in: outputs, DLQ and state."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from worker_kit import (
    Names,
    Produced,
    WorkerProcess,
    dlq_source,
    mixed_ticks,
    produce,
    read_topic,
    reference_symbols,
    stored_offsets,
    stored_symbols,
    tick_records,
    valid_ids,
    worker_env,
)

from service.codec import InvalidTick, decode_tick

MAX_BYTES = 4096
PREDICTION_KEYS = {
    "id", "symbol", "ts", "horizon", "p_up", "direction", "model_version", "features_ready",
    "forecasts",
}  # fmt: skip
FORECAST_KEYS = {"horizon", "p_up", "direction", "model_version"}


def malformed(ts: int) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], str]]:
    """(key, value, headers, expected reason) of records the worker must dead-letter."""

    def tick(symbol: str, **fields: Any) -> bytes:
        return json.dumps({"symbol": symbol, "ts": ts, "price": 10.0, **fields}).encode()

    trace = [("trace-id", b"abc123")]
    return [
        (b"AAPL", b"not json {", trace, "not_json"),
        (b"AAPL", None, [], "not_json"),
        (b"ES", b"[1, 2, 3]", [], "not_object"),
        (b"ES", b'{"symbol": "ES", "price": 1.0}', [], "missing_field"),
        (b"IBM", b'{"symbol": "IBM", "ts": %d, "price": NaN}' % ts, [], "bad_price"),
        (b"IBM", tick("IBM", price=-3.5), [], "bad_price"),
        (b"MSFT", tick("IBM"), trace, "key_mismatch"),
        (b"MSFT", tick("MSFT", ts="yesterday"), [], "bad_ts"),
        (b"MSFT", tick("MSFT", volume=-1), [], "bad_volume"),
        (b"ES", tick("ES", pad="x" * MAX_BYTES), [], "too_large"),
        (b"ES", tick("ES", ts=10**11), [], "late"),  # older than ES's earlier ticks
    ]


@pytest.fixture(scope="module")
def run(broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Produce ~1,600 real ticks with malformed records spliced in, run one worker until idle."""
    names = Names.fresh()
    ticks = mixed_ticks(n_stocks=900, n_es=700)
    bad = malformed(ts=ticks[-1].ts)
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []
    reasons: list[str | None] = []
    good = tick_records(ticks)
    step = len(good) // len(bad)
    for i, (key, value, headers) in enumerate(good):
        records.append((key, value, headers))
        reasons.append(None)
        if i % step == step - 1 and bad:
            k, v, h, reason = bad.pop(0)
            records.append((k, v, h))
            reasons.append(reason)
    produced = produce(broker, names.ticks, records)
    log = tmp_path_factory.mktemp("flow") / "worker.log"
    env = worker_env(broker, redis_url, names, max_message_bytes=MAX_BYTES)
    worker = WorkerProcess(env, log, "--max-idle-seconds", "2")
    code = worker.wait(timeout=120)
    return {
        "names": names,
        "produced": produced,
        "reasons": reasons,
        "code": code,
        "worker": worker,
        "predictions": read_topic(broker, names.predictions),
        "dlq": read_topic(broker, names.dlq),
        "redis_url": redis_url,
        "broker": broker,
    }


def test_worker_drains_the_topic_and_exits_cleanly(run: dict[str, Any]) -> None:
    assert run["code"] == 0, run["worker"].tail()
    produced: Produced = run["produced"]
    assert stored_offsets(run["redis_url"], run["names"].group) == produced.end_offsets()


def test_every_valid_tick_gets_exactly_one_prediction(run: dict[str, Any]) -> None:
    ids = [json.loads(r.value)["id"] for r in run["predictions"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == valid_ids(run["names"].ticks, run["produced"])


def test_predictions_follow_the_design_format(run: dict[str, Any]) -> None:
    for record in run["predictions"]:
        body = json.loads(record.value)
        assert set(body) == PREDICTION_KEYS
        assert record.key == body["symbol"].encode()
        forecasts = body["forecasts"]
        assert [f["horizon"] for f in forecasts] == [1, 5, 20]  # the default horizons, in order
        for f in forecasts:
            assert set(f) == FORECAST_KEYS
            assert 0.0 <= f["p_up"] <= 1.0
            assert f["direction"] == ("up" if f["p_up"] >= 0.5 else "down")
            assert isinstance(f["model_version"], int) and f["model_version"] >= 0
        assert {k: body[k] for k in FORECAST_KEYS} == forecasts[0]
        assert isinstance(body["features_ready"], bool)
    ready = [json.loads(r.value)["features_ready"] for r in run["predictions"]]
    assert any(ready) and not all(ready)


def test_malformed_records_are_dead_lettered_with_reason_and_source(run: dict[str, Any]) -> None:
    produced: Produced = run["produced"]
    expected = {
        pos: (rec, reason)
        for rec, pos, reason in zip(produced.records, produced.positions, run["reasons"])
        if reason is not None
    }
    seen = Counter()
    for record in run["dlq"]:
        headers = dict(record.headers)
        assert headers["tickprop.source.topic"] == run["names"].ticks.encode()
        pos = dlq_source(record)
        (key, value, original_headers), reason = expected[pos]
        assert headers["tickprop.reason"] == reason.encode()
        assert headers["tickprop.detail"]
        assert (record.key, record.value) == (key, value)  # the original bytes
        for name, data in original_headers:
            assert headers[name] == data
        seen[pos] += 1
    assert seen == Counter(dict.fromkeys(expected, 1))


def test_state_equals_an_uninterrupted_run_over_the_valid_ticks_only(run: dict[str, Any]) -> None:
    stored = stored_symbols(run["redis_url"], run["names"].group)
    assert stored == reference_symbols(run["produced"])
    assert set(stored) == {"AAPL", "IBM", "MSFT", "ES"}
    assert all(s["model_version"] > 0 for s in stored.values())


def test_worker_logs_are_json_lines(run: dict[str, Any]) -> None:
    path: Path = run["worker"].log_path
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert run["worker"].events("claimed")


def test_tickprop_inspect_equals_tickprop_backtest_over_the_same_ticks(
    run: dict[str, Any], tmp_path: Path
) -> None:
    csv = tmp_path / "valid.csv"
    with csv.open("w") as f:
        f.write("ts,symbol,price,volume\n")
        for key, value, _ in run["produced"].records:
            try:
                tick = decode_tick(key, value, max_bytes=MAX_BYTES)
            except InvalidTick:
                continue
            volume = "" if tick.volume is None else repr(tick.volume)
            f.write(f"{tick.ts_ms},{tick.symbol},{tick.price!r},{volume}\n")
    env = worker_env(run["broker"], run["redis_url"], run["names"])
    out = tmp_path / "backtest.json"
    tickprop = [sys.executable, "-m", "service.cli"]
    subprocess.run([*tickprop, "backtest", "--csv", str(csv), "--json", str(out)], env=env,
                   check=True, capture_output=True)  # fmt: skip
    inspected = json.loads(
        subprocess.run([*tickprop, "inspect"], env=env, check=True, capture_output=True).stdout
    )
    report = json.loads(out.read_text())["per_symbol"]
    assert inspected["symbols"] == {
        symbol: {"model_version": r["model_version"], "weights_sha256": r["weights_sha256"]}
        for symbol, r in report.items()
    }
