"""Networks as bytes without pickle: a JSON header, then raw little-endian float64 arrays.

    b"TPNN" | u32 little-endian header length | header (UTF-8 JSON) | arrays

The header names the format version, sizes, activations, loss, dtype, the
optimiser settings and counters. The arrays follow in a fixed order: for each
layer its (n_l + 1, n_{l+1}) weight-and-bias matrix (bias last row), then for each
layer its momentum velocity of the same shape. Loading checks every field, every
shape and the exact total length, and refuses anything else with a ValueError
that says what was expected and what was found.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from model.activations import ACTIVATIONS
from model.errors import FormatError
from model.losses import LOSSES

if TYPE_CHECKING:
    from model.network import Network

MAGIC = b"TPNN"
VERSION = 1
DTYPE = "<f8"
MAX_PARAMETERS = 50_000_000  # refuse headers that would allocate absurd memory
_LEN = struct.Struct("<I")


def network_to_bytes(net: Network) -> bytes:
    return network_bytes(
        net.sizes,
        [a.name for a in net.activations],
        net.loss.name,
        (net.learning_rate, net.momentum, net.l2),
        (net.steps, net.refused_updates),
        net._wb,
        net.velocity,
    )


def network_bytes(
    sizes: list[int],
    activations: list[str],
    loss: str,
    optimizer: tuple[float, float, float],
    counters: tuple[int, int],
    wbs: Sequence[np.ndarray],
    velocities: Sequence[np.ndarray],
) -> bytes:
    """The bytes of a network given as data: optimizer = (learning_rate, momentum, l2),
    counters = (steps, refused_updates), one weight-and-bias matrix and one velocity per
    layer (model.stacked writes its K networks this way, without building `Network`s)."""
    learning_rate, momentum, l2 = optimizer
    header = {
        "format": "tickprop.network",
        "version": VERSION,
        "dtype": DTYPE,
        "sizes": sizes,
        "activations": activations,
        "loss": loss,
        "optimizer": {
            "name": "sgd",
            "learning_rate": learning_rate,
            "momentum": momentum,
            "l2": l2,
        },
        "steps": counters[0],
        "refused_updates": counters[1],
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    arrays = [wb.astype(DTYPE, copy=False).tobytes() for wb in wbs]
    arrays += [v.astype(DTYPE, copy=False).tobytes() for v in velocities]
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *arrays])


def network_from_bytes(blob: bytes) -> Network:
    from model.network import Network

    header, values = parse_network(blob)
    sizes = header["sizes"]
    opt = header["optimizer"]
    try:
        net = Network(
            sizes,
            activations=header["activations"],
            loss=header["loss"],
            learning_rate=opt["learning_rate"],
            momentum=opt["momentum"],
            l2=opt["l2"],
            seed=0,
        )
    except ValueError as exc:
        raise FormatError(f"invalid network header: {exc}") from None
    offset = 0
    for target in [*net._wb, *net.velocity]:
        count = target.size
        target[...] = values[offset : offset + count].reshape(target.shape)
        offset += count
    net.steps = header["steps"]
    net.refused_updates = header["refused_updates"]
    net._bound = [float(np.abs(wb).max()) for wb in net._wb]
    return net


def parse_network(blob: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """(checked header, every weight then every velocity value as one float64 array) of
    `network_bytes` output; FormatError on anything malformed."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise FormatError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < len(MAGIC) + _LEN.size:
        raise FormatError(f"network blob too short: {len(blob)} bytes")
    if blob[:4] != MAGIC:
        raise FormatError(f"not a tickprop network: magic {blob[:4]!r} != {MAGIC!r}")
    (head_len,) = _LEN.unpack_from(blob, 4)
    start = 4 + _LEN.size
    if head_len > len(blob) - start:
        raise FormatError(f"header length {head_len} exceeds the {len(blob) - start} bytes left")
    header = _parse_header(blob[start : start + head_len])
    sizes = header["sizes"]
    shapes = [(n + 1, m) for n, m in zip(sizes[:-1], sizes[1:], strict=False)]
    n_values = 2 * sum(r * c for r, c in shapes)
    body = blob[start + head_len :]
    if len(body) != 8 * n_values:
        raise FormatError(
            f"array data is {len(body)} bytes, expected {8 * n_values} for sizes {sizes}"
        )
    values = np.frombuffer(body, dtype=DTYPE).astype(np.float64)
    if not np.isfinite(values).all():
        raise FormatError("weights or optimiser state contain non-finite values")
    return header, values


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FormatError(f"header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != "tickprop.network":
        raise FormatError(f"header format {header.get('format')!r} != 'tickprop.network'")
    if header.get("version") != VERSION:
        raise FormatError(f"unsupported version {header.get('version')!r}; this reads {VERSION}")
    if header.get("dtype") != DTYPE:
        raise FormatError(f"dtype {header.get('dtype')!r} != {DTYPE!r}")
    sizes = header.get("sizes")
    if (
        not isinstance(sizes, list)
        or len(sizes) < 2
        or not all(type(n) is int and 0 < n <= 1_000_000 for n in sizes)
    ):
        raise FormatError(f"sizes must be a list of >= 2 positive ints, got {sizes!r}")
    if sum((n + 1) * m for n, m in zip(sizes[:-1], sizes[1:], strict=False)) > MAX_PARAMETERS:
        raise FormatError(f"sizes {sizes} exceed {MAX_PARAMETERS} parameters")
    acts = header.get("activations")
    if (
        not isinstance(acts, list)
        or len(acts) != len(sizes) - 1
        or not all(isinstance(a, str) and a in ACTIVATIONS for a in acts)
    ):
        raise FormatError(f"activations must name {len(sizes) - 1} known activations: {acts!r}")
    if header.get("loss") not in LOSSES:
        raise FormatError(f"unknown loss {header.get('loss')!r}")
    opt = header.get("optimizer")
    if not isinstance(opt, dict) or opt.get("name") != "sgd":
        raise FormatError(f"optimizer must be an 'sgd' object, got {opt!r}")
    for key in ("learning_rate", "momentum", "l2"):
        value = opt.get(key)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise FormatError(f"optimizer.{key} must be a finite number, got {value!r}")
    for key in ("steps", "refused_updates"):
        value = header.get(key)
        if type(value) is not int or value < 0:
            raise FormatError(f"{key} must be a non-negative int, got {value!r}")
    return header
