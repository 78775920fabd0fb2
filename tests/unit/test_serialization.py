"""Networks as bytes: exact round trip, optimiser state included; anything malformed refused."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import Network
from model.errors import FormatError


def trained(momentum: float = 0.9, l2: float = 0.001) -> Network:
    net = Network([4, 6, 3, 1], ["tanh", "sigmoid", "sigmoid"], "log", 0.1, momentum, l2, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        net.learn_one(rng.normal(size=4), float(rng.integers(0, 2)))
    return net


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<I", blob, 4)
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return b"TPNN" + struct.pack("<I", len(head)) + head + body


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 0.001)])
def test_round_trip_is_exact_and_the_next_step_is_bit_identical(momentum, l2):
    net = trained(momentum, l2)
    blob = net.to_bytes()
    copy = Network.from_bytes(blob)
    assert copy.to_bytes() == blob
    assert copy.steps == net.steps == 20
    x = np.array([0.3, -0.1, 2.0, 0.5])
    assert net.learn_one(x, 1.0) == copy.learn_one(x, 1.0)
    assert net.to_bytes() == copy.to_bytes()
    if momentum:
        assert any(np.abs(v).max() > 0 for v in copy.velocity)


def test_header_is_json_with_the_documented_fields():
    header, body = split(trained().to_bytes())
    assert header["version"] == 1 and header["dtype"] == "<f8"
    assert header["sizes"] == [4, 6, 3, 1]
    assert header["activations"] == ["tanh", "sigmoid", "sigmoid"]
    assert header["loss"] == "log"
    assert header["optimizer"] == {
        "name": "sgd",
        "learning_rate": 0.1,
        "momentum": 0.9,
        "l2": 0.001,
    }
    assert len(body) == 8 * 2 * (5 * 6 + 7 * 3 + 4 * 1)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, b: (h, b[:-8]), "array data"),
        (lambda h, b: (h, b + b"\0" * 8), "array data"),
        (lambda h, b: (h, b + b"\0"), "array data"),
        (lambda h, b: ({**h, "version": 2}, b), "version"),
        (lambda h, b: ({**h, "sizes": [4, 6, 4, 1]}, b), "array data"),
        (lambda h, b: ({**h, "sizes": [4, 6, 3]}, b), "activations"),
        (lambda h, b: ({**h, "sizes": [4, -6, 3, 1]}, b), "sizes"),
        (lambda h, b: ({**h, "sizes": [10**6, 10**6]}, b), "parameters"),
        (lambda h, b: ({**h, "activations": ["tanh", "x", "sigmoid"]}, b), "activations"),
        (lambda h, b: ({**h, "loss": "hinge"}, b), "loss"),
        (lambda h, b: ({**h, "dtype": "<f4"}, b), "dtype"),
        (lambda h, b: ({**h, "optimizer": {**h["optimizer"], "learning_rate": -1}}, b), "header"),
        (lambda h, b: ({**h, "optimizer": {**h["optimizer"], "momentum": "0.9"}}, b), "momentum"),
        (lambda h, b: ({**h, "steps": -1}, b), "steps"),
        (lambda h, b: (h, np.full(len(b) // 8, np.nan).tobytes()), "non-finite"),
    ],
)
def test_malformed_blobs_are_refused_with_a_clear_value_error(mutate, message):
    header, body = split(trained().to_bytes())
    with pytest.raises(ValueError, match=message):
        Network.from_bytes(join(*mutate(header, body)))


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"", "too short"),
        (b"TPNN", "too short"),
        (b"PK\x03\x04" + b"\0" * 20, "magic"),
        (b"\x80\x04\x95" + b"\0" * 20, "magic"),  # a pickle never gets near pickle.loads
        (b"TPNN" + struct.pack("<I", 10**6) + b"{}", "header length"),
        (b"TPNN" + struct.pack("<I", 2) + b"[]", "JSON object"),
        (b"TPNN" + struct.pack("<I", 3) + b"\xff\xfe{", "not valid JSON"),
        (b"TPNN" + struct.pack("<I", 4000) + b"[" * 4000, "not valid JSON"),
    ],
)
def test_garbage_is_refused(blob, message):
    with pytest.raises(FormatError, match=message):
        Network.from_bytes(blob)
    assert issubclass(FormatError, ValueError)


REFERENCE = trained().to_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_blobs_either_load_validly_or_raise_value_error(data):
    blob = bytearray(REFERENCE)
    action = data.draw(st.sampled_from(["flip", "truncate", "pad", "splice", "random"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif action == "pad":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    elif action == "splice":
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        blob = bytearray(data.draw(st.binary(max_size=256)))
    try:
        net = Network.from_bytes(bytes(blob))
    except ValueError:
        return
    # a flip inside the float data (or in the header: a digit, or a digit turned into
    # JSON whitespace) can leave a valid network: then it is whole and finite, holds
    # exactly the blob's header values and arrays, and serialises to the canonical form
    assert all(np.isfinite(w).all() for w in net.weights)
    header, body = split(bytes(blob))
    canonical_header, canonical_body = split(net.to_bytes())
    assert (canonical_header, canonical_body) == (header, body)
    assert Network.from_bytes(net.to_bytes()).to_bytes() == net.to_bytes()
