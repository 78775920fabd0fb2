"""The read-only query API served beside /metrics: which symbols a worker holds, and each one's
latest forecasts, scorecard and drift state (docs/openapi.yaml describes it).

- ``GET /symbols?offset=0&limit=100`` -> ``{"symbols": [{"symbol", "partition",
  "model_version"}], "total": N, "offset": o, "limit": l}``, sorted by symbol;
- ``GET /symbols/{symbol}`` -> the symbol's query object (`query_object`), the same
  object `tickprop inspect --symbol` prints from Redis and the backtest report holds
  under per_symbol[SYM].scorecard for the scorecard part;
- a symbol this worker does not hold: 404 with a JSON body saying so; a malformed or
  oversized path or query: 400 (414 beyond MAX_TARGET_BYTES), never a 500 and never a
  traceback; every body is JSON.

The HTTP server runs in its own thread; a `Directory` answers under the worker's lock and
returns plain copies, so a reply never sees a learner half-way through a tick.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote, unquote_to_bytes

from service.codec import MAX_SYMBOL_CHARS

log = logging.getLogger("tickprop.query_api")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 10**9
MAX_TARGET_BYTES = 2048  # path + query; a symbol is at most 64 characters
PREFIX = "/symbols"
JSON = "application/json"


class Directory(Protocol):
    """What the API reads: the symbols held, and one symbol's query object (None: not held)."""

    def symbols(self) -> list[tuple[str, int, int]]:
        """(symbol, partition, model_version) of every symbol held, in any order."""
        ...

    def symbol(self, symbol: str) -> dict[str, Any] | None: ...

    def partitions(self) -> list[int]:
        """The input partitions this worker holds state for."""
        ...


class BadRequest(ValueError):
    """The request is malformed: answered with `status` and the message, never a 500."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def query_object(learner: Any, partition: int) -> dict[str, Any]:
    """The query object of one symbol: what the learner's state says, nothing else."""
    return {
        "symbol": learner.symbol,
        "partition": partition,
        "model_version": learner.model_version,
        "ts": learner.last_ts,
        "forecasts": learner.forecasts(),
        "scorecard": learner.scorecards(),
        "drift": learner.drift_states(),
    }


def handles(path: str) -> bool:
    """True for the paths this API answers (everything under /symbols)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def answer(target: str, directory: Directory) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for a GET of `target` (the raw path and query string)."""
    try:
        status, body = _route(target, directory)
    except BadRequest as exc:
        status, body = exc.status, {"error": str(exc)}
    except Exception:  # a bug must not leak a traceback to the client; it is logged here
        log.exception("query API failed", extra={"event": "query_api_failed"})
        status, body = 500, {"error": "internal error; see the worker's log"}
    return status, json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _route(target: str, directory: Directory) -> tuple[int, dict[str, Any]]:
    if len(target) > MAX_TARGET_BYTES:
        raise BadRequest(f"request target longer than {MAX_TARGET_BYTES} bytes", status=414)
    if not target.isascii():  # http.server hands over the raw bytes as latin-1
        raise BadRequest("the request target must be ASCII; percent-encode the rest")
    path, _, query = target.partition("?")
    if path in (PREFIX, PREFIX + "/"):
        offset, limit = _page(query)
        return 200, _listing(directory, offset, limit)
    symbol = _symbol(path[len(PREFIX) + 1 :])
    if query:
        raise BadRequest("GET /symbols/{symbol} takes no query parameters")
    found = directory.symbol(symbol)
    if found is None:
        held = directory.partitions()
        return 404, {
            "error": f"symbol {symbol!r} is not held by this worker: it is unknown, or its "
            f"partition belongs to another worker (this one holds partitions {held})"
        }
    return 200, found


def _listing(directory: Directory, offset: int, limit: int) -> dict[str, Any]:
    rows = sorted(directory.symbols())
    page = rows[offset : offset + limit]
    return {
        "symbols": [{"symbol": s, "partition": p, "model_version": v} for s, p, v in page],
        "total": len(rows),
        "offset": offset,
        "limit": limit,
    }


def _page(query: str) -> tuple[int, int]:
    values = {"offset": 0, "limit": DEFAULT_LIMIT}
    seen: set[str] = set()
    for item in query.split("&") if query else []:
        name, eq, raw = item.partition("=")
        name, raw = unquote(name, errors="replace"), unquote(raw, errors="replace")
        if name not in values:
            raise BadRequest(f"unknown query parameter {_clip(name)!r}; known: offset, limit")
        if name in seen:
            raise BadRequest(f"query parameter {name!r} given twice")
        seen.add(name)
        if not eq or not raw.isascii() or not raw.isdigit() or len(raw) > 10:
            raise BadRequest(f"{name} must be a non-negative integer, got {_clip(raw)!r}")
        values[name] = int(raw)
    offset, limit = values["offset"], values["limit"]
    if offset > MAX_OFFSET:
        raise BadRequest(f"offset must be <= {MAX_OFFSET}, got {offset}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
    return offset, limit


def _symbol(segment: str) -> str:
    """The symbol of a percent-encoded path segment, or BadRequest."""
    if "/" in segment:  # a "/" inside a symbol comes percent-encoded (%2F)
        raise BadRequest(f"no such route: /symbols/{_clip(segment)}", status=404)
    try:
        symbol = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the symbol is not valid UTF-8 once percent-decoded") from None
    if not 1 <= len(symbol) <= MAX_SYMBOL_CHARS:
        raise BadRequest(f"a symbol has 1..{MAX_SYMBOL_CHARS} characters, got {len(symbol)}")
    if not symbol.isprintable() or symbol != symbol.strip():
        # Well-formed, but no tick can carry it (the codec refuses such symbols): unknown.
        raise BadRequest(
            f"no such symbol {_clip(symbol)!r}: a symbol has no unprintable characters "
            "and no outer space",
            status=404,
        )
    return symbol


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


class LockedDirectory:
    """A `Directory` over live learners: `held()` maps partition -> {symbol: learner}.

    Every call runs under `lock` (the worker's, held while it processes a batch), and
    builds plain dicts and tuples there, so the HTTP thread never reads a learner the
    worker loop is changing.
    """

    def __init__(self, lock: Any, held: Callable[[], dict[int, dict[str, Any]]]) -> None:
        self._lock = lock
        self._held = held

    def symbols(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [
                (symbol, partition, learner.model_version)
                for partition, learners in self._held().items()
                for symbol, learner in learners.items()
            ]

    def symbol(self, symbol: str) -> dict[str, Any] | None:
        with self._lock:
            # A symbol split over partitions answers with its highest partition's copy, as
            # `tickprop inspect` does.
            for partition, learners in sorted(self._held().items(), reverse=True):
                learner = learners.get(symbol)
                if learner is not None:
                    return query_object(learner, partition)
        return None

    def partitions(self) -> list[int]:
        with self._lock:
            return sorted(self._held())

    def spread(self) -> list[tuple[int, tuple[float, float | None, float | None]]]:
        """(horizon, `Scorecard.recent()`) of every symbol's every horizon: the metrics'
        spread across symbols (`service.metrics.SpreadCollector`)."""
        with self._lock:
            return [
                (hz.h, hz.card.recent())
                for learners in self._held().values()
                for learner in learners.values()
                for hz in learner.horizons
            ]
