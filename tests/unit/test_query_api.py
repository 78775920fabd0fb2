"""The query API's routing and refusals, over HTTP on the metrics server, with a fixed directory.

The worker-backed API (live learners, schemathesis against docs/openapi.yaml) is tested in
tests/integration/test_query_api_worker.py.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from service import query_api
from service.metrics import Metrics, MetricsServer, serve
from service.query_api import LockedDirectory


class Learner:
    """The attributes `query_object` reads, fixed."""

    def __init__(self, symbol: str, version: int) -> None:
        self.symbol, self.model_version, self.last_ts = symbol, version, 1_700_000_000_000

    def forecasts(self) -> list[dict[str, Any]]:
        return [{"horizon": 1, "p_up": 0.5, "direction": "up", "model_version": 0}]

    def scorecards(self) -> dict[str, Any]:
        return {}

    def drift_states(self) -> dict[str, Any]:
        return {}


HELD = {
    0: {f"S{i:03d}": Learner(f"S{i:03d}", i) for i in range(0, 250, 2)},
    3: {f"S{i:03d}": Learner(f"S{i:03d}", i) for i in range(1, 250, 2)}
    | {"EUR/USD": Learner("EUR/USD", 7)},
}


@pytest.fixture(scope="module")
def server() -> Iterator[MetricsServer]:
    lock = threading.RLock()
    srv = serve(
        Metrics(), "127.0.0.1", 0, ready=lambda: True, directory=LockedDirectory(lock, lambda: HELD)
    )
    yield srv
    srv.stop()


def request(server: MetricsServer, target: str, method: str = "GET") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    ctype = response.getheader("Content-Type", "")
    return response.status, json.loads(body) if ctype == query_api.JSON and body else body


def test_listing_pages_through_every_symbol_in_name_order(server: MetricsServer) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        status, page = request(server, f"/symbols?offset={offset}&limit=40")
        assert status == 200 and page["total"] == 251 and page["limit"] == 40
        if not page["symbols"]:
            break
        seen += [row["symbol"] for row in page["symbols"]]
        offset += 40
    assert seen == sorted(s for held in HELD.values() for s in held)
    status, first = request(server, "/symbols")
    assert status == 200 and len(first["symbols"]) == query_api.DEFAULT_LIMIT
    assert first["symbols"][0] == {"symbol": "EUR/USD", "partition": 3, "model_version": 7}
    assert request(server, "/symbols?limit=%31")[1]["limit"] == 1  # query values are decoded


def test_a_held_symbol_answers_its_object_and_an_encoded_slash_is_part_of_the_name(
    server: MetricsServer,
) -> None:
    status, body = request(server, "/symbols/S004")
    assert status == 200 and body["symbol"] == "S004" and body["partition"] == 0
    assert set(body) == {
        "symbol",
        "partition",
        "model_version",
        "ts",
        "forecasts",
        "scorecard",
        "drift",
    }
    status, body = request(server, "/symbols/EUR%2FUSD")
    assert status == 200 and body["partition"] == 3


def test_a_symbol_not_held_is_a_404_that_says_so(server: MetricsServer) -> None:
    status, body = request(server, "/symbols/NOPE")
    assert status == 404
    assert "'NOPE' is not held by this worker" in body["error"] and "[0, 3]" in body["error"]


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/symbols?limit=0", 400),
        ("/symbols?limit=1001", 400),
        ("/symbols?limit=-1", 400),
        ("/symbols?offset=1e3", 400),
        ("/symbols?offset=99999999999999999999", 400),
        ("/symbols?limit=", 400),
        ("/symbols?limit", 400),
        ("/symbols?limit=5&limit=6", 400),
        ("/symbols?sort=desc", 400),
        ("/symbols?&", 400),
        ("/symbols?limit=%D9%A1", 400),  # an Arabic-Indic digit: isdigit(), not ASCII
        ("/symbols?limit=%FF", 400),
        ("/symbols/S004?x=1", 400),
        ("/symbols/" + "A" * 65, 400),
        ("/symbols/%FF%FE", 400),
        ("/symbols/%00", 404),
        ("/symbols/%20ES", 404),
        ("/symbols/%E2%80%8B", 404),  # a zero-width space: not printable
        ("/symbols/a/b", 404),
        ("/symbols/../metrics", 404),
        ("/symbols//", 404),
        ("/symbols/%ZZ", 404),  # not an escape: the symbol is literally "%ZZ"
        ("/symbols/" + "A" * 3000, 414),
        ("/symbols?" + "offset=1&" * 300, 414),
    ],
)
def test_malformed_or_oversized_requests_get_a_4xx_json_error(
    server: MetricsServer, target: str, status: int
) -> None:
    got, body = request(server, target)
    assert got == status
    assert isinstance(body, dict) and isinstance(body["error"], str)
    assert "Traceback" not in body["error"]


def test_raw_non_ascii_and_write_methods_are_refused_with_4xx(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.sock = None
    conn.connect()
    assert conn.sock is not None
    conn.sock.sendall(b"GET /symbols/\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    head = conn.sock.recv(4096)
    conn.close()
    assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        status, body = request(server, "/symbols/S004", method)
        assert status == 405 and "read-only" in body["error"]
    status, body = request(server, "/symbols/S004", "HEAD")
    assert status == 200 and body == b""


def test_without_a_directory_the_routes_do_not_exist() -> None:
    srv = serve(Metrics(), "127.0.0.1", 0, ready=lambda: True)
    try:
        status, _ = request(srv, "/symbols")
        assert status == 404
    finally:
        srv.stop()


def test_a_failing_directory_is_a_500_json_without_a_traceback() -> None:
    class Broken(LockedDirectory):
        def symbols(self) -> list[tuple[str, int, int]]:
            raise RuntimeError("secret internals")

    status, body = query_api.answer("/symbols", Broken(threading.Lock(), dict))
    assert status == 500 and b"secret" not in body and b"Traceback" not in body
