"""Bytes on Kafka <-> Python values: tick decoding and validation, prediction encoding.

A bad tick is an expected event: `decode_tick` raises `InvalidTick` with a short
snake_case `reason` (one of `REASONS`, used as a metric label and DLQ header)
and a human `detail`, and never any other exception, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any, NamedTuple, Protocol

# Reason codes: bounded, so they can label metrics. "late" (OnlineLearner.is_late)
# and "too_many_symbols" are decided by the worker, not here, but belong to the set.
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
BAD_SYMBOL = "bad_symbol"
BAD_TS = "bad_ts"
BAD_PRICE = "bad_price"
BAD_VOLUME = "bad_volume"
KEY_MISMATCH = "key_mismatch"
TOO_LARGE = "too_large"
LATE = "late"
TOO_MANY_SYMBOLS = "too_many_symbols"  # decided by the worker (settings.max_symbols)
MISSING_KEY = "missing_key"
# Not a tick at all: the marker the worker dead-letters for a record batch it skipped
# because the consumer cannot read it (TICKPROP_SKIP_UNREADABLE_BATCHES).
UNREADABLE_BATCH = "unreadable_batch"
REASONS: tuple[str, ...] = (
    NOT_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    BAD_SYMBOL,
    BAD_TS,
    BAD_PRICE,
    BAD_VOLUME,
    KEY_MISMATCH,
    TOO_LARGE,
    LATE,
    TOO_MANY_SYMBOLS,
    MISSING_KEY,
    UNREADABLE_BATCH,
)

DEFAULT_MAX_BYTES = 65536
MAX_SYMBOL_CHARS = 64
# Below 10^11 ms (1973-03-03T09:46:40Z) a ts is far likelier epoch seconds (10^11 s is
# the year 5138) than a trade from before 1973: refused, so it cannot train as a 1970 date.
MIN_TS_MS = 100_000_000_000
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime can hold
MAX_DETAIL_BYTES = 512
# JSON nested deeper than this is not_json on every Python: json's own limit moves with the
# version (CPython 3.11 gives up near 1,000 levels, 3.13 past 1,000, 3.14 past 10,000), so
# without one of our own the same record would be dead-lettered by one worker and learned
# from by another, say during an upgrade.
MAX_NESTING = 100

# Headers a dead letter carries on top of the record's own (docs/messages.md).
REASON_HEADER = "tickprop.reason"
DETAIL_HEADER = "tickprop.detail"
SOURCE_TOPIC_HEADER = "tickprop.source.topic"
SOURCE_PARTITION_HEADER = "tickprop.source.partition"
SOURCE_OFFSET_HEADER = "tickprop.source.offset"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class Tick(NamedTuple):
    """One valid trade: `ts_ms` epoch milliseconds, `price` finite > 0, `volume` finite >= 0.

    A NamedTuple, not a frozen dataclass: as immutable, and made for every record the worker
    reads at ~0.25 µs instead of ~0.6 µs (a frozen dataclass sets each field through
    object.__setattr__)."""

    symbol: str
    ts_ms: int
    price: float
    volume: float | None = None


class InvalidTick(Exception):
    """A record that is not a valid tick; `reason` is a code from REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_tick(key: bytes | None, value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Tick:
    """The Tick in a Kafka record (docs/messages.md), or InvalidTick saying why not."""
    if value is None:
        raise InvalidTick(NOT_JSON, "record value is null")
    if len(value) > max_bytes:
        raise InvalidTick(TOO_LARGE, f"value is {len(value)} bytes, limit {max_bytes}")
    try:
        body = _loads(value)
    except RecursionError:
        raise InvalidTick(NOT_JSON, "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int too long
        raise InvalidTick(NOT_JSON, f"not JSON: {exc}") from None
    if type(body) is dict:
        tick = _common_tick(body)
        if (
            tick is not None
            and key is not None
            and key == tick.symbol.encode()
            and len(body) == (3 if tick.volume is None else 4)  # nothing else: no nesting
        ):
            return tick
    if _nested_deeper(body, MAX_NESTING):
        raise InvalidTick(NOT_JSON, f"JSON nested deeper than {MAX_NESTING} levels")
    if not isinstance(body, dict):
        raise InvalidTick(NOT_OBJECT, f"JSON {type(body).__name__}, expected an object")
    for name in ("symbol", "ts", "price"):
        if name not in body:
            raise InvalidTick(MISSING_FIELD, f"no {name!r} field")
    tick = make_tick(body["symbol"], body["ts"], body["price"], body.get("volume"))
    if key is None:
        raise InvalidTick(
            MISSING_KEY,
            "record has no key: ticks must be keyed by symbol, so that a symbol's ticks "
            "stay in order on one partition",
        )
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTick(KEY_MISMATCH, "key is not UTF-8") from None
    if key_text != tick.symbol:
        raise InvalidTick(KEY_MISMATCH, f"key {_clip(key_text)!r} != symbol {_clip(tick.symbol)!r}")
    return tick


# The scanner json.loads itself ends in (a JSONDecoder with the default options).
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(value: bytes) -> Any:
    """`json.loads(value)`, its usual case without json.loads's steps around the scanner.

    The usual case is a UTF-8 object with no whitespace around it: a value that starts
    with "{" followed by a non-zero byte is UTF-8 to json.loads too (it guesses UTF-16 or
    32 only from zero bytes among the first ones, or a BOM), and with no whitespace to
    skip its result is the scanner's when the scan ends at the last character. Anything
    else, errors included, is json.loads's own doing (tests/unit/test_codec_fast_paths.py
    checks the two agree)."""
    if type(value) is bytes and value[:1] == b"{" and value[-1:] == b"}" and value[1:2] != b"\x00":
        try:
            text = value.decode("utf-8", "surrogatepass")
            body, end = _scan(text, 0)
        except (ValueError, StopIteration):  # UnicodeDecodeError, JSONDecodeError
            pass
        else:
            if end == len(text):
                return body
    return json.loads(value)


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests objects and arrays more than `limit` levels deep (a
    scalar is level 0, `[]` level 1). Without recursion: this must not fail where json did not."""
    level = [value]  # the values `depth` levels down, after `depth` rounds
    for _ in range(limit):
        level = [
            child
            for container in level
            if type(container) is dict or type(container) is list
            for child in (container.values() if type(container) is dict else container)
        ]
        if not level:
            return False
    return any(type(v) is dict or type(v) is list for v in level)


def _common_tick(body: dict[str, Any]) -> Tick | None:
    """The Tick of the usual body (str symbol, int ts, float price, float, int or no
    volume) when it is valid, else None, leaving every verdict and reason to the full
    checks. Accepts nothing they would refuse; the worker decodes every record, and this
    skips their per-field calls."""
    symbol, ts, price, volume = (
        body.get("symbol"), body.get("ts"), body.get("price"), body.get("volume")
    )  # fmt: skip
    if not (
        type(symbol) is str
        and type(ts) is int
        and type(price) is float
        and MIN_TS_MS <= ts <= MAX_TS_MS
        and 0.0 < price < math.inf  # False for NaN
        and 1 <= len(symbol) <= MAX_SYMBOL_CHARS
        and symbol.isprintable()
        and symbol == symbol.strip()
    ):
        return None
    if volume is None:
        return Tick(symbol, ts, price, None)
    if (type(volume) is float and 0.0 <= volume < math.inf) or (
        type(volume) is int and 0 <= volume < 2**53
    ):
        return Tick(symbol, ts, price, float(volume))
    return None


def make_tick(symbol: Any, ts: Any, price: Any, volume: Any = None) -> Tick:
    """A Tick from JSON-typed values, validated as docs/messages.md fixes, or InvalidTick.

    `ts` is an int (or integral float) of epoch ms, or a string: ISO-8601 or decimal
    digits of epoch ms; in every form from 10^11 (1973-03-03) to MAX_TS_MS (year 9999).
    `price` and `volume` must be numbers (not strings, not bools);
    `volume` None means absent.
    """
    return Tick(_symbol(symbol), _ts_ms(ts), _price(price), _volume(volume))


def tick_from_text(symbol: str, ts: str, price: str, volume: str | None = None) -> Tick:
    """A Tick from CSV text fields, by the same rules as `make_tick`; empty volume = absent."""
    return make_tick(
        symbol,
        ts,
        _text_number(price, BAD_PRICE, "price"),
        None
        if volume is None or not volume.strip()
        else _text_number(volume, BAD_VOLUME, "volume"),
    )


def _text_number(text: str, reason: str, name: str) -> float:
    if len(text) > 64:
        raise InvalidTick(reason, f"{name} text longer than 64 characters")
    try:
        return float(text)
    except ValueError:
        raise InvalidTick(reason, f"{name} {_clip(text)!r} is not a number") from None


def _symbol(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidTick(BAD_SYMBOL, f"symbol is {type(value).__name__}, expected a string")
    if not 1 <= len(value) <= MAX_SYMBOL_CHARS:
        raise InvalidTick(
            BAD_SYMBOL, f"symbol has {len(value)} characters, need 1..{MAX_SYMBOL_CHARS}"
        )
    if not value.isprintable() or value != value.strip():
        raise InvalidTick(BAD_SYMBOL, f"symbol {_clip(value)!r} has unprintable or outer space")
    return value


def _ts_ms(value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidTick(BAD_TS, "ts is a boolean")
    if isinstance(value, float):
        if 0 <= value < MIN_TS_MS:  # 1704205800.123: seconds with a fraction
            raise _looks_like_seconds(value)
        if not (math.isfinite(value) and value.is_integer()):
            raise InvalidTick(BAD_TS, f"ts {value!r} is not a whole number of milliseconds")
        value = int(value)
    if isinstance(value, str):
        value = _parse_ts_text(value)
    if not isinstance(value, int):
        raise InvalidTick(BAD_TS, f"ts is {type(value).__name__}, expected epoch ms or ISO-8601")
    if 0 <= value < MIN_TS_MS:
        raise _looks_like_seconds(value)
    if not MIN_TS_MS <= value <= MAX_TS_MS:
        raise InvalidTick(BAD_TS, f"ts {_clip(repr(value))} outside {MIN_TS_MS}..{MAX_TS_MS}")
    return value


def _looks_like_seconds(value: float) -> InvalidTick:
    return InvalidTick(
        BAD_TS,
        f"ts {value!r} is below 10^11 (before 1973-03-03 in epoch ms): it looks like "
        "epoch seconds; ts must be epoch milliseconds",
    )


def _parse_ts_text(text: str) -> int:
    text = text.strip()
    if 0 < len(text) <= 20 and text.isdigit() and text.isascii():
        return int(text)  # epoch ms written as text (CSV)
    if not 0 < len(text) <= 64:
        raise InvalidTick(BAD_TS, "ts string is empty or longer than 64 characters")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # no zone given: UTC, as Kafka timestamps are
        return (moment - _EPOCH) // _MS
    except (ValueError, OverflowError) as exc:
        raise InvalidTick(BAD_TS, f"ts {_clip(text)!r} is not ISO-8601: {exc}") from None


def _number(value: Any, reason: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTick(reason, f"{name} is {type(value).__name__}, expected a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise InvalidTick(reason, f"{name} is too large") from None
    if not math.isfinite(number):
        raise InvalidTick(reason, f"{name} {number} is not finite")
    return number


def _price(value: Any) -> float:
    price = _number(value, BAD_PRICE, "price")
    if price <= 0:
        raise InvalidTick(BAD_PRICE, f"price {price!r} is not > 0")
    return price


def _volume(value: Any) -> float | None:
    if value is None:
        return None
    volume = _number(value, BAD_VOLUME, "volume")
    if volume < 0:
        raise InvalidTick(BAD_VOLUME, f"volume {volume!r} is negative")
    return volume


def encode_tick(tick: Tick) -> bytes:
    """The tick JSON (docs/messages.md) of `tick` (what `tickprop produce` sends)."""
    body: dict[str, Any] = {"symbol": tick.symbol, "ts": tick.ts_ms, "price": tick.price}
    if tick.volume is not None:
        body["volume"] = int(tick.volume) if tick.volume.is_integer() else tick.volume
    return _dumps(body)


class ForecastLike(Protocol):
    """One horizon's forecast (`model.learner.Forecast` is one)."""

    @property
    def horizon(self) -> int: ...
    @property
    def p_up(self) -> float: ...
    @property
    def direction(self) -> str: ...
    @property
    def model_version(self) -> int: ...


def encode_prediction(
    id: str,
    symbol: str,
    ts: int,
    forecasts: Sequence[ForecastLike],
    features_ready: bool,
) -> bytes:
    """The prediction JSON (docs/messages.md); the same arguments always give the same bytes.

    `forecasts` holds every horizon in order; the top-level horizon, p_up, direction
    and model_version repeat the first. Byte for byte what `_dumps` makes of the same
    dict (fixed key order, no spaces, strings escaped by the json module's own C
    escaper, floats as `repr`, NaN refused), formatted directly by `_prediction_json`
    (tests/unit/test_codec_fast_paths.py checks the two agree).
    """
    return _prediction_json(id, symbol, int(ts), _forecast_values(forecasts), features_ready)


def _forecast_values(forecasts: Sequence[ForecastLike]) -> list[Any]:
    """horizon, p_up, up (direction == "up"), model_version of each forecast, in one flat
    list; ValueError for what a prediction may not carry."""
    if not forecasts:
        raise ValueError("a prediction needs at least one forecast")
    values: list[Any] = []
    for f in forecasts:
        direction = f.direction
        if direction != "up" and direction != "down":
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        values += (int(f.horizon), _finite(float(f.p_up)), direction == "up", int(f.model_version))
    return values


def _finite(p: float) -> float:
    """`p`, or ValueError if it is NaN or infinite."""
    if p - p != 0.0:  # inf - inf and NaN - NaN are NaN: not valid JSON
        raise ValueError(f"p_up must be finite, got {p!r}")
    return p


def _prediction_json(
    id: str, symbol: str, ts: int, values: Sequence[Any], features_ready: bool
) -> bytes:
    """The prediction JSON of `_forecast_values`' list (or `pack_prediction`'s numbers read
    back): the publisher process writes one per tick, so the JSON is formatted directly
    (the generic encoder cost ~4x more), the floats by the `repr` json itself uses."""
    if not values:
        raise ValueError("a prediction needs at least one forecast")
    parts = []
    for i in range(0, len(values), 4):
        h, p, up, v = values[i : i + 4]
        p_json = _float_repr(_finite(p))  # a packed prediction's number is checked again
        parts.append(
            f'{{"horizon":{h},"p_up":{p_json},"direction":"{"up" if up else "down"}",'
            f'"model_version":{v}}}'
        )
    return (
        f'{{"id":{_escape(id)},"symbol":{_escape(symbol)},"ts":{ts},'
        f"{parts[0][1:-1]},"
        f'"features_ready":{"true" if features_ready else "false"},'
        f'"forecasts":[{",".join(parts)}]}}'
    ).encode()


_escape = encode_basestring  # the C escaper json itself uses when ensure_ascii=False
_float_repr = float.__repr__  # what json uses for a float


# A prediction can cross to the publisher process as its numbers, packed, and be written
# as JSON there (`encode_packed_prediction`): formatting it, mostly the floats' repr, is
# ~3 µs per tick with three horizons, which then run beside the learner, not before it.
# Packed: forecast count, features_ready, ts, id length (bytes); per forecast horizon,
# p_up, up (direction == "up"), model_version; the id's UTF-8, then the symbol's.
_PACKED_HEAD = struct.Struct("<B?qI")
_PACKED_FORECASTS: dict[int, struct.Struct] = {}  # forecast count -> its struct


def _forecasts_struct(k: int) -> struct.Struct:
    packer = _PACKED_FORECASTS.get(k)
    if packer is None:
        packer = _PACKED_FORECASTS[k] = struct.Struct("<" + "qd?Q" * k)
    return packer


def pack_prediction(
    id: str,
    symbol: str,
    ts: int,
    forecasts: Sequence[ForecastLike],
    features_ready: bool,
) -> bytes:
    """`encode_prediction`'s arguments packed, for `encode_packed_prediction` to give the
    same bytes; ValueError for what encode_prediction refuses, and for a horizon or ts
    outside signed 64 bits or a model_version outside unsigned 64 bits."""
    values = _forecast_values(forecasts)
    id_bytes = id.encode()
    try:
        head = _PACKED_HEAD.pack(len(forecasts), features_ready, int(ts), len(id_bytes))
        body = _forecasts_struct(len(forecasts)).pack(*values)
    except struct.error as exc:
        raise ValueError(f"cannot pack the prediction: {exc}") from None
    return b"".join((head, body, id_bytes, symbol.encode()))


def encode_packed_prediction(packed: bytes) -> bytes:
    """The prediction JSON of a `pack_prediction` result: byte for byte what
    `encode_prediction` makes of the same arguments. ValueError if `packed` is not one."""
    try:
        k, ready, ts, id_length = _PACKED_HEAD.unpack_from(packed)
        body = _forecasts_struct(k)
        values = body.unpack_from(packed, _PACKED_HEAD.size)
    except struct.error as exc:
        raise ValueError(f"not a packed prediction: {exc}") from None
    start = _PACKED_HEAD.size + body.size
    if start + id_length > len(packed):
        raise ValueError("not a packed prediction: its id runs past the end")
    id = packed[start : start + id_length].decode()
    symbol = packed[start + id_length :].decode()
    return _prediction_json(id, symbol, ts, values, ready)


# Fixed key order, no spaces, no NaN (ValueError instead): deterministic and strict JSON.
# One encoder object: json.dumps with options builds a new one per call (~2x slower).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _dumps(body: dict[str, Any]) -> bytes:
    return _ENCODER.encode(body).encode()


# Names of the headers a dead letter gets (after the record's own).
REASON_HEADER = "tickprop.reason"
DETAIL_HEADER = "tickprop.detail"
SOURCE_TOPIC_HEADER = "tickprop.source.topic"
SOURCE_PARTITION_HEADER = "tickprop.source.partition"
SOURCE_OFFSET_HEADER = "tickprop.source.offset"
SOURCE_LAST_OFFSET_HEADER = "tickprop.source.last_offset"  # markers of skipped batches only
NULL_HEADERS_HEADER = "tickprop.null_headers"
ESCAPED_HEADERS_HEADER = "tickprop.escaped_header_names"
HEADER_OVERHEAD_BYTES = 10  # a header's length fields in a record batch, at most


def dlq_headers(
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    last_offset: int | None = None,
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-lettered record: why, and where it came from (for the
    marker of a skipped batch, `last_offset` ends the range that starts at `offset`)."""
    headers = [
        (REASON_HEADER, reason.encode()),
        (DETAIL_HEADER, _truncate_utf8(detail, MAX_DETAIL_BYTES)),
        (SOURCE_TOPIC_HEADER, topic.encode()),
        (SOURCE_PARTITION_HEADER, str(partition).encode()),
        (SOURCE_OFFSET_HEADER, str(offset).encode()),
    ]
    if last_offset is not None:
        headers.append((SOURCE_LAST_OFFSET_HEADER, str(last_offset).encode()))
    return headers


def keepable_headers(
    headers: list[tuple[str, bytes | None]] | None,
) -> list[tuple[str, bytes]]:
    """A record's headers as a producer can send them again, nothing dropped.

    Kafka allows a null header value and any bytes as a header name; kafka-python's
    producer takes neither. A null value becomes empty and its position (0-based, among
    the record's headers) is listed in `tickprop.null_headers`; a name that is not UTF-8
    (read with "surrogateescape") is written with its bad bytes as `\\xNN` escapes and
    its position listed in `tickprop.escaped_header_names`. Both lists are
    comma-separated and present only when needed.
    """
    out: list[tuple[str, bytes]] = []
    nulls: list[str] = []
    escaped: list[str] = []
    for i, (name, value) in enumerate(headers or ()):
        try:
            name.encode()
        except UnicodeEncodeError:
            name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            escaped.append(str(i))
        if value is None:
            value = b""
            nulls.append(str(i))
        out.append((name, bytes(value)))
    if nulls:
        out.append((NULL_HEADERS_HEADER, ",".join(nulls).encode()))
    if escaped:
        out.append((ESCAPED_HEADERS_HEADER, ",".join(escaped).encode()))
    return out


def headers_size(headers: list[tuple[str, bytes]]) -> int:
    """Bytes `headers` take in a record batch, at most."""
    return sum(len(name.encode()) + len(value) + HEADER_OVERHEAD_BYTES for name, value in headers)


def _truncate_utf8(text: str, limit: int) -> bytes:
    """At most `limit` bytes of valid UTF-8 (unencodable characters replaced)."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode()


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
