import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.learner import Forecast
from service import codec
from service.codec import (
    MAX_NESTING,
    REASONS,
    InvalidTick,
    Tick,
    decode_tick,
    dlq_headers,
    encode_prediction,
    encode_tick,
    tick_from_text,
)


def body(**fields):
    base = {"symbol": "SPX", "ts": 1704205800123, "price": 4742.83, "volume": 1200}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def reason_of(key, value, **kw):
    with pytest.raises(InvalidTick) as info:
        decode_tick(key, value, **kw)
    assert info.value.reason in REASONS
    assert info.value.detail
    return info.value.reason


def test_design_example_decodes():
    tick = decode_tick(b"SPX", body())
    assert tick == Tick("SPX", 1704205800123, 4742.83, 1200.0)


def test_volume_is_optional():
    assert decode_tick(b"SPX", body(volume=...)) == Tick("SPX", 1704205800123, 4742.83, None)
    assert decode_tick(b"SPX", body(volume=None)).volume is None


def test_a_valid_tick_without_a_key_is_missing_key():
    """Key-less records are spread over the partitions: one symbol would get one model
    per partition, its ticks out of order between them."""
    with pytest.raises(InvalidTick) as info:
        decode_tick(None, body())
    assert info.value.reason == "missing_key"
    assert "keyed by symbol" in info.value.detail and "one partition" in info.value.detail
    # what is wrong with the value itself is said first
    assert reason_of(None, body(price=-1)) == "bad_price"


def test_iso_timestamps_become_epoch_ms():
    assert decode_tick(b"SPX", body(ts="2024-01-02T14:30:00.123Z")).ts_ms == 1704205800123
    assert decode_tick(b"SPX", body(ts="2024-01-02T15:30:00.123+01:00")).ts_ms == 1704205800123
    assert decode_tick(b"SPX", body(ts="2024-01-02T14:30:00.123")).ts_ms == 1704205800123  # UTC
    assert decode_tick(b"SPX", body(ts="1704205800123")).ts_ms == 1704205800123
    assert decode_tick(b"SPX", body(ts=1704205800123.0)).ts_ms == 1704205800123


@pytest.mark.parametrize(
    "ts", [1704205800, "1704205800", 1704205800.0, 1704205800.123, 0, 10**11 - 1]
)
def test_a_ts_in_seconds_is_bad_ts_and_says_so(ts):
    with pytest.raises(InvalidTick) as info:
        decode_tick(b"SPX", body(ts=ts))
    assert info.value.reason == "bad_ts"
    assert "looks like epoch seconds" in info.value.detail


def test_ts_range_starts_at_1e11_ms_in_every_form():
    assert decode_tick(b"SPX", body(ts=10**11)).ts_ms == 10**11
    assert decode_tick(b"SPX", body(ts="1973-03-03T09:46:40Z")).ts_ms == 10**11
    assert reason_of(b"SPX", body(ts="1973-03-03T09:46:39.999Z")) == "bad_ts"
    assert reason_of(b"SPX", body(ts="1970-01-01T00:00:00Z")) == "bad_ts"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "not_json"),
        (b"", "not_json"),
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"SPX"', "not_object"),
        (b"null", "not_object"),
        (body(symbol=...), "missing_field"),
        (body(ts=...), "missing_field"),
        (body(price=...), "missing_field"),
        (body(symbol=""), "bad_symbol"),
        (body(symbol=7), "bad_symbol"),
        (body(symbol="A" * 65), "bad_symbol"),
        (body(symbol="A\nB"), "bad_symbol"),
        (body(symbol=" SPX"), "bad_symbol"),
        (body(ts=True), "bad_ts"),
        (body(ts=-1), "bad_ts"),
        (body(ts=1.5), "bad_ts"),
        (body(ts=10**20), "bad_ts"),
        (body(ts="yesterday"), "bad_ts"),
        (body(ts=None), "bad_ts"),
        (body(ts=[1]), "bad_ts"),
        (body(price=0), "bad_price"),
        (body(price=-1.5), "bad_price"),
        (body(price=True), "bad_price"),
        (body(price="4742.83"), "bad_price"),
        (body(price=None), "bad_price"),
        (b'{"symbol":"SPX","ts":1704205800123,"price":NaN}', "bad_price"),
        (b'{"symbol":"SPX","ts":1704205800123,"price":Infinity}', "bad_price"),
        (b'{"symbol":"SPX","ts":1704205800123,"price":1e999}', "bad_price"),
        (b'{"symbol":"SPX","ts":1704205800123,"price":' + b"9" * 400 + b"}", "bad_price"),
        (body(volume=-1), "bad_volume"),
        (body(volume=False), "bad_volume"),
        (body(volume="12"), "bad_volume"),
        (b'{"symbol":"SPX","ts":1704205800123,"price":1,"volume":NaN}', "bad_volume"),
    ],
)
def test_invalid_records_name_their_reason(value, reason):
    assert reason_of(None, value) == reason


def test_key_must_equal_symbol_when_present():
    assert reason_of(b"ES", body()) == "key_mismatch"
    assert reason_of(b"", body()) == "key_mismatch"
    assert reason_of(b"\xff", body()) == "key_mismatch"


def test_oversized_records_are_refused_before_parsing():
    big = body(pad="x" * 70_000)
    assert reason_of(b"SPX", big) == "too_large"
    assert decode_tick(b"SPX", big, max_bytes=100_000).symbol == "SPX"


def test_deep_nesting_and_huge_integers_are_invalid_not_crashes():
    deep = (
        b'{"symbol":"SPX","ts":1704205800123,"price":1,"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    )
    assert reason_of(None, deep, max_bytes=len(deep)) == "not_json"
    huge_int = b'{"symbol":"SPX","ts":' + b"1" * 5000 + b',"price":1}'
    assert reason_of(None, huge_int) == "not_json"


def test_nesting_past_the_limit_is_not_json_whatever_the_python():
    """json's own depth limit moves with the Python version (3.11 near 1,000 levels, 3.14
    past 10,000): the same record must get the same verdict on every worker."""

    def nested(levels):
        return b"[" * levels + b"]" * levels

    def tick_with(extra):
        return b'{"symbol":"SPX","ts":1704205800123,"price":1.5,"x":' + extra + b"}"

    assert decode_tick(b"SPX", tick_with(nested(MAX_NESTING - 1))).price == 1.5  # 100 levels
    assert reason_of(b"SPX", tick_with(nested(MAX_NESTING))) == "not_json"
    objects = b'{"a":' * MAX_NESTING + b"1" + b"}" * MAX_NESTING
    assert reason_of(b"SPX", tick_with(objects)) == "not_json"
    assert reason_of(b"SPX", nested(MAX_NESTING + 1)) == "not_json"  # before "not an object"
    assert reason_of(b"SPX", tick_with(nested(2000))) == "not_json"  # 3.13 and 3.14 parse it
    extra = b'{"symbol":"SPX","ts":1704205800123,"price":1.5,"volume":2,"note":"ok"}'
    assert decode_tick(b"SPX", extra) == Tick("SPX", 1704205800123, 1.5, 2)


def test_unicode_symbols_are_valid_and_lone_surrogates_are_not():
    assert decode_tick("ÄPFEL".encode(), body(symbol="ÄPFEL")).symbol == "ÄPFEL"
    assert reason_of(None, b'{"symbol":"\\ud800","ts":1704205800123,"price":1}') == "bad_symbol"


def test_unknown_fields_are_ignored():
    assert decode_tick(b"SPX", body(exchange="CME")).symbol == "SPX"


def test_encode_tick_round_trips():
    t = 1378072800000
    for tick in (
        Tick("ES", t, 1642.25, 3.0),
        Tick("ES", t + 1, 0.1, None),
        Tick("É", t, 1e-300, 0.5),
    ):
        assert decode_tick(tick.symbol.encode(), encode_tick(tick)) == tick


def test_csv_text_follows_the_same_rules():
    assert tick_from_text("ES", "1378072800000", "1642.25", "3") == Tick(
        "ES", 1378072800000, 1642.25, 3.0
    )
    assert tick_from_text("ES", "1378072800000", "1642.25", "").volume is None
    for args, reason in [
        (("ES", "x", "1"), "bad_ts"),
        (("ES", "1", "1"), "bad_ts"),
        (("ES", "1378072800000", "nan"), "bad_price"),
        (("ES", "1378072800000", "abc"), "bad_price"),
        (("ES", "1378072800000", "1", "-2"), "bad_volume"),
        (("", "1378072800000", "1"), "bad_symbol"),
    ]:
        with pytest.raises(InvalidTick) as info:
            tick_from_text(*args)
        assert info.value.reason == reason


DESIGN_FORECASTS = (
    Forecast(1, 0.573, "up", 4180),
    Forecast(5, 0.441, "down", 4176),
    Forecast(20, 0.502, "up", 4161),
)


def one(p_up: float, direction: str = "up") -> tuple[Forecast]:
    return (Forecast(1, p_up, direction, 0),)


def test_prediction_is_the_design_json_and_byte_identical_when_resent():
    args = ("ticks/0/4211", "SPX", 1704205800123, DESIGN_FORECASTS, True)
    first = encode_prediction(*args)
    assert first == encode_prediction(*args)
    assert json.loads(first) == {
        "id": "ticks/0/4211",
        "symbol": "SPX",
        "ts": 1704205800123,
        "horizon": 1,
        "p_up": 0.573,
        "direction": "up",
        "model_version": 4180,
        "features_ready": True,
        "forecasts": [
            {"horizon": 1, "p_up": 0.573, "direction": "up", "model_version": 4180},
            {"horizon": 5, "p_up": 0.441, "direction": "down", "model_version": 4176},
            {"horizon": 20, "p_up": 0.502, "direction": "up", "model_version": 4161},
        ],
    }
    assert b" " not in first
    with pytest.raises(ValueError):
        encode_prediction("i", "S", 1, one(math.nan), True)
    with pytest.raises(ValueError):
        encode_prediction("i", "S", 1, one(0.5, "sideways"), True)
    with pytest.raises(ValueError):
        encode_prediction("i", "S", 1, (*DESIGN_FORECASTS, Forecast(50, math.inf, "up", 0)), True)
    with pytest.raises(ValueError):
        encode_prediction("i", "S", 1, (), True)


def test_p_up_survives_the_round_trip_exactly():
    p = 0.1 + 0.2
    decoded = json.loads(encode_prediction("i", "S", 1, one(p), True))
    assert decoded["p_up"] == p == decoded["forecasts"][0]["p_up"]


def test_dlq_headers_name_reason_and_source():
    headers = dict(dlq_headers("bad_price", "price -1 is not > 0", "ticks", 3, 42))
    assert headers == {
        "tickprop.reason": b"bad_price",
        "tickprop.detail": b"price -1 is not > 0",
        "tickprop.source.topic": b"ticks",
        "tickprop.source.partition": b"3",
        "tickprop.source.offset": b"42",
    }
    long = dict(dlq_headers("not_json", "é" * 1000 + "\ud800", "t", 0, 0))["tickprop.detail"]
    assert len(long) <= codec.MAX_DETAIL_BYTES
    long.decode("utf-8")  # still valid UTF-8 after truncation


def test_dlq_headers_of_a_skipped_batch_end_its_range():
    headers = dict(dlq_headers("unreadable_batch", "why", "ticks", 3, 42, last_offset=97))
    assert headers["tickprop.source.offset"] == b"42"
    assert headers["tickprop.source.last_offset"] == b"97"


def test_keepable_headers_keep_every_header_kafka_allows():
    bad_name = b"\xffname".decode("utf-8", "surrogateescape")
    headers = [("a", b"1"), ("null", None), ("", b""), (bad_name, b"v"), ("a", b"2")]
    kept = codec.keepable_headers(headers)
    assert kept == [
        ("a", b"1"),
        ("null", b""),
        ("", b""),
        ("\\xffname", b"v"),
        ("a", b"2"),  # repeated names stay, in order
        ("tickprop.null_headers", b"1"),
        ("tickprop.escaped_header_names", b"3"),
    ]
    for name, value in kept:  # what kafka-python's producer demands
        assert isinstance(value, bytes)
        name.encode("utf-8")
    assert codec.keepable_headers(None) == []
    many = [(f"h{i}", None if i % 2 else b"x") for i in range(1000)]
    kept = codec.keepable_headers(many)
    assert len(kept) == 1001
    assert (
        dict(kept)["tickprop.null_headers"] == ",".join(str(i) for i in range(1, 1000, 2)).encode()
    )
    assert codec.headers_size(kept[:2]) >= len(b"h0x") + len(b"h1")


# --- fuzzing: whatever the bytes, only InvalidTick or a valid Tick ---------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
tick_like = st.fixed_dictionaries(
    {},
    optional={
        "symbol": json_values | st.text(min_size=1, max_size=70),
        "ts": json_values | st.integers(min_value=-(10**16), max_value=10**16),
        "price": json_values | st.floats(min_value=-1e308, max_value=1e308),
        "volume": json_values,
    },
)


def check(key, value):
    try:
        tick = decode_tick(key, value)
    except InvalidTick as exc:
        assert exc.reason in REASONS
        return
    # Anything accepted satisfies the contract.
    assert isinstance(tick.symbol, str) and 1 <= len(tick.symbol) <= codec.MAX_SYMBOL_CHARS
    assert isinstance(tick.ts_ms, int) and codec.MIN_TS_MS <= tick.ts_ms <= codec.MAX_TS_MS
    assert math.isfinite(tick.price) and tick.price > 0
    assert tick.volume is None or (math.isfinite(tick.volume) and tick.volume >= 0)
    assert key is not None and key == tick.symbol.encode()
    tick.symbol.encode("utf-8")  # usable as a Kafka key and Redis field


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.none() | st.binary(max_size=16), value=st.none() | st.binary(max_size=256))
def test_fuzz_random_bytes_only_raise_invalid_tick(key, value):
    check(key, value)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=tick_like, use_key=st.sampled_from(["none", "symbol", "other"]))
def test_fuzz_tick_shaped_json_only_raises_invalid_tick(data, use_key):
    value = json.dumps(data).encode()
    symbol = data.get("symbol")
    key = None
    if use_key == "symbol" and isinstance(symbol, str):
        key = symbol.encode("utf-8", "surrogatepass")
    elif use_key == "other":
        key = b"OTHER"
    check(key, value)
