"""The fast paths of service.codec give exactly what the generic json paths give."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.learner import Forecast
from service.codec import _dumps, encode_prediction


def reference(id: str, symbol: str, ts: int, forecasts: list[Forecast], ready: bool) -> bytes:
    """The prediction as the generic encoder writes it (the format before the fast path)."""
    entries = [
        {
            "horizon": int(f.horizon),
            "p_up": float(f.p_up),
            "direction": f.direction,
            "model_version": int(f.model_version),
        }
        for f in forecasts
    ]
    return _dumps(
        {
            "id": id,
            "symbol": symbol,
            "ts": int(ts),
            **entries[0],
            "features_ready": bool(ready),
            "forecasts": entries,
        }
    )


forecast = st.builds(
    Forecast,
    horizon=st.integers(1, 1000),
    p_up=st.floats(0.0, 1.0) | st.floats(allow_nan=False, allow_infinity=False),
    direction=st.sampled_from(["up", "down"]),
    model_version=st.integers(0, 2**63),
)


# The arguments of a prediction: every id, symbol, ts and set of forecasts the codec takes.
prediction_args = given(
    id=st.text(max_size=80),
    symbol=st.text(min_size=1, max_size=64),
    ts=st.integers(0, 253_402_300_799_999),
    forecasts=st.lists(forecast, min_size=1, max_size=8),
    ready=st.booleans(),
)


@prediction_args
def test_encode_prediction_equals_the_generic_encoder(
    id: str, symbol: str, ts: int, forecasts: list[Forecast], ready: bool
) -> None:
    encoded = encode_prediction(id, symbol, ts, forecasts, ready)
    assert encoded == reference(id, symbol, ts, forecasts, ready)
    assert json.loads(encoded)["symbol"] == symbol  # escaped properly


def test_encode_prediction_escapes_quotes_backslashes_and_controls() -> None:
    symbol = 'a"b\\c\nd\x00é'
    one = [Forecast(1, 0.25, "up", 3)]
    encoded = encode_prediction("t/0/1", symbol, 1, one, True)
    assert json.loads(encoded) == {
        "id": "t/0/1", "symbol": symbol, "ts": 1, "horizon": 1, "p_up": 0.25,
        "direction": "up", "model_version": 3, "features_ready": True,
        "forecasts": [{"horizon": 1, "p_up": 0.25, "direction": "up", "model_version": 3}],
    }  # fmt: skip
    assert encoded == reference("t/0/1", symbol, 1, one, True)


@pytest.mark.parametrize("p_up", [math.nan, math.inf, -math.inf])
def test_encode_prediction_refuses_non_finite(p_up: float) -> None:
    with pytest.raises(ValueError):
        encode_prediction("t/0/1", "ES", 1, [Forecast(1, p_up, "up", 0)], True)


def test_encode_prediction_refuses_a_bad_direction() -> None:
    with pytest.raises(ValueError):
        encode_prediction("t/0/1", "ES", 1, [Forecast(1, 0.5, "sideways", 0)], True)


def full_checks(key: bytes | None, value: bytes) -> object:
    """decode_tick with the common-body fast path switched off: the verdict of the
    field-by-field checks, a Tick or the InvalidTick's (reason, detail)."""
    from service import codec

    saved = codec._common_tick
    codec._common_tick = lambda body: None
    try:
        return codec.decode_tick(key, value)
    except codec.InvalidTick as exc:
        return (exc.reason, exc.detail)
    finally:
        codec._common_tick = saved


def verdict(key: bytes | None, value: bytes) -> object:
    from service import codec

    try:
        return codec.decode_tick(key, value)
    except codec.InvalidTick as exc:
        return (exc.reason, exc.detail)


json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70)


@given(
    symbol=json_values | st.sampled_from(["ES", " ES", "E\nS", "x" * 65, ""]),
    ts=json_values | st.integers(-5, 253_402_300_800_001),
    price=json_values | st.floats(-1.0, 5000.0),
    volume=json_values | st.just(...),
    key=st.none() | st.sampled_from([b"ES", b"XX", b"\xff"]),
)
def test_decode_fast_path_agrees_with_the_full_checks(
    symbol: object, ts: object, price: object, volume: object, key: bytes | None
) -> None:
    body = {"symbol": symbol, "ts": ts, "price": price}
    if volume is not ...:
        body["volume"] = volume
    try:
        value = json.dumps(body).encode()
    except ValueError:
        return
    assert verdict(key, value) == full_checks(key, value)


def loads_outcome(load: object, value: bytes) -> object:
    """What `load(value)` gives: the value, or the exception's type and message."""
    try:
        return ("ok", load(value))  # type: ignore[operator]
    except (ValueError, RecursionError) as exc:
        return (type(exc), str(exc))


json_texts = st.recursive(
    json_values, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=5), inner)
).map(lambda v: json.dumps(v, allow_nan=True))


@given(
    text=json_texts | st.text(max_size=40),
    cut=st.integers(0, 3),
    outer=st.sampled_from(["", " ", "\n", "{", "}", "\x00"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"]),
    raw=st.none() | st.binary(max_size=40),
)
def test_loads_fast_path_agrees_with_json_loads(
    text: str, cut: int, outer: str, encoding: str, raw: bytes | None
) -> None:
    from service.codec import _loads

    if raw is not None:
        value = b"{" + raw + b"}"
    else:
        value = (outer + text[: len(text) - cut] + outer).encode(encoding, "surrogatepass")
    assert loads_outcome(_loads, value) == loads_outcome(json.loads, value)


@prediction_args
def test_a_packed_prediction_is_written_as_encode_prediction_writes_it(
    id: str, symbol: str, ts: int, forecasts: list[Forecast], ready: bool
) -> None:
    from service.codec import encode_packed_prediction, pack_prediction

    packed = pack_prediction(id, symbol, ts, forecasts, ready)
    assert encode_packed_prediction(packed) == encode_prediction(id, symbol, ts, forecasts, ready)


@pytest.mark.parametrize(
    "forecasts",
    [[], [Forecast(1, math.nan, "up", 0)], [Forecast(1, 0.5, "sideways", 0)],
     [Forecast(1, 0.5, "up", -1)]],
)  # fmt: skip
def test_pack_prediction_refuses_what_cannot_be_written(forecasts: list[Forecast]) -> None:
    from service.codec import pack_prediction

    with pytest.raises(ValueError):
        pack_prediction("t/0/1", "ES", 1, forecasts, True)


@pytest.mark.parametrize("packed", [b"", b"\x01\x01", b"\x01" + bytes(20), b"\x00" + bytes(15)])
def test_bytes_that_are_no_packed_prediction_raise_value_error(packed: bytes) -> None:
    from service.codec import encode_packed_prediction

    with pytest.raises(ValueError):
        encode_packed_prediction(packed)
