"""Helpers of the reliability tests (chaos, outages, hostile input), on top of worker_kit.

worker_kit has the basics (real data slices, producing, `tickprop worker` subprocesses,
the in-process reference learner); this module adds what the reliability tests share:
a seed from the environment, a producer that paces a stream over time in a thread, the
real `tickprop inspect` / `tickprop backtest` commands, the worker's /readyz and /metrics,
and the prediction-topic checks (one id per valid tick, re-sent ones identical).
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from worker_kit import ROOT, Produced, WorkerProcess, read_topic

from service.codec import DEFAULT_MAX_BYTES, TOO_LARGE, InvalidTick, Tick, decode_tick
from service.tools.embedded import create_topics

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


def seed_from_env(name: str) -> int:
    """The seed in $name, or a fresh random one; printed so a failure can be replayed."""
    text = os.environ.get(name)
    seed = int(text) if text else random.SystemRandom().randrange(2**32)
    print(f"{name}={seed}  (export it to replay this run)")
    return seed


class PacedProducer(threading.Thread):
    """Sends `records` to `topic` at about `rate` records/s from a background thread.

    With `gated=True` it sends only as many records as `allow(n)` calls have released,
    so a test can tie the stream to its own steps (e.g. one chunk per worker lifetime,
    whatever the machine's speed). `sent` counts records handed to the producer so far.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        rate: float,
        partitions: int = 6,
        batch: int = 50,
        gated: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        create_topics(bootstrap, [topic], partitions=partitions)
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = records
        self.rate = rate
        self.batch = batch
        self.produced = Produced()
        self.sent = 0
        self.allowed = 0 if gated else len(records)
        self.error: BaseException | None = None

    def allow(self, n: int | None = None) -> None:
        """Release `n` more records (all the rest when None)."""
        total = len(self.records)
        self.allowed = total if n is None else min(total, self.allowed + n)

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        futures = []
        try:
            while self.sent < len(self.records):
                if self.sent >= self.allowed:
                    time.sleep(0.01)
                    continue
                started = time.monotonic()
                batch = self.records[self.sent : min(self.sent + self.batch, self.allowed)]
                for key, value, headers in batch:
                    self.produced.records.append((key, value, list(headers or [])))
                    futures.append(
                        producer.send(self.topic, key=key, value=value, headers=headers or None)
                    )
                self.sent = len(futures)
                delay = started + len(batch) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            producer.flush(timeout=120)
            for future in futures:
                meta = future.get(timeout=120)
                self.produced.positions.append((meta.partition, meta.offset))
        except BaseException as exc:  # re-raised by finish() in the test's thread
            self.error = exc
        finally:
            producer.close(timeout=30)

    def finish(self, timeout: float = 180) -> Produced:
        """Release and send the rest, wait for every acknowledgement; what the topic holds."""
        self.allow()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"producer still running after {timeout} s")
        if self.error is not None:
            raise self.error
        held = on_broker(self.bootstrap, self.topic)
        acked = set(self.produced.positions)
        assert acked <= set(held.positions), "acknowledged records missing from the topic"
        return held


def on_broker(bootstrap: str, topic: str) -> Produced:
    """What the topic really holds, in partition and offset order.

    The reference for the final checks: the producer's acknowledgements can miss records
    a retry wrote twice (kafka-python retries after a broker stall; Tansu does not
    de-duplicate), and the worker rightly processes every record that is there.
    """
    out = Produced()
    records = sorted(read_topic(bootstrap, topic), key=lambda r: (r.partition, r.offset))
    for r in records:
        headers = [(k, None if v is None else bytes(v)) for k, v in r.headers or []]
        out.records.append((r.key, r.value, headers))
        out.positions.append((r.partition, r.offset))
    return out


# ---------------------------------------------------------------- the real commands
def tickprop(args: Sequence[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run `tickprop ARGS` (python -m service.cli) and return its stdout; fail loudly."""
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"tickprop {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def inspect_symbols(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`tickprop inspect`'s symbols: {SYM: {"model_version": N, "weights_sha256": HEX}}."""
    return dict(json.loads(tickprop(["inspect"], env))["symbols"])


def as_tick(key: bytes | None, value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Tick:
    """The worker's validity rule for one record: key and value within max_bytes, decodes."""
    if key is not None and len(key) > max_bytes:
        raise InvalidTick(TOO_LARGE, f"key is {len(key)} bytes")
    return decode_tick(key, value, max_bytes=max_bytes)


def valid_positions(produced: Produced, max_bytes: int = DEFAULT_MAX_BYTES) -> list[int]:
    """Indexes of the records the worker must process: valid and not late for their symbol."""
    last_ts: dict[str, int] = {}
    out = []
    for i, (key, value, _) in enumerate(produced.records):
        try:
            tick = as_tick(key, value, max_bytes)
        except InvalidTick:
            continue
        if tick.ts_ms >= last_ts.get(tick.symbol, -1):
            last_ts[tick.symbol] = tick.ts_ms
            out.append(i)
    return out


def expected_dead_letters(
    produced: Produced, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[tuple[int, int], str]:
    """(partition, offset) -> reason for every record the worker must dead-letter."""
    valid = set(valid_positions(produced, max_bytes))
    expected = {}
    for i, ((key, value, _), position) in enumerate(
        zip(produced.records, produced.positions, strict=True)
    ):
        if i in valid:
            continue
        try:
            as_tick(key, value, max_bytes)
            expected[position] = "late"
        except InvalidTick as exc:
            expected[position] = exc.reason
    return expected


def write_valid_csv(produced: Produced, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """The records that decode as ticks, in produced order, as a backtest CSV; their count.

    Each symbol lives in one partition (key = symbol), so its ticks' order in the file is
    the order the worker read them. Prices are written with repr(), which round-trips.
    """
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["ts", "symbol", "price", "volume"])
        for key, value, _ in produced.records:
            try:
                tick = as_tick(key, value, max_bytes)
            except InvalidTick:
                continue
            volume = "" if tick.volume is None else repr(tick.volume)
            out.writerow([tick.ts_ms, tick.symbol, repr(tick.price), volume])
            count += 1
    return count


def backtest_symbols(
    produced: Produced, tmp_path: Path, env: dict[str, str], max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, dict[str, Any]]:
    """`tickprop backtest` over the valid records: {SYM: {model_version, weights_sha256}}.

    Late ticks stay in the file: the backtest skips them as the worker dead-letters them.
    """
    csv_path, report_path = tmp_path / "valid_ticks.csv", tmp_path / "backtest.json"
    write_valid_csv(produced, csv_path, max_bytes)
    tickprop(["backtest", "--csv", str(csv_path), "--json", str(report_path), "--no-progress"], env)
    report = json.loads(report_path.read_text())
    return {
        symbol: {"model_version": s["model_version"], "weights_sha256": s["weights_sha256"]}
        for symbol, s in report["per_symbol"].items()
    }


# ---------------------------------------------------------------- outputs
def check_predictions(
    bootstrap: str,
    topic: str,
    ticks_topic: str,
    produced: Produced,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> int:
    """Assert one prediction id per valid tick and identical re-sends; the number re-sent."""
    by_id: dict[str, list[bytes]] = defaultdict(list)
    for record in read_topic(bootstrap, topic):
        by_id[json.loads(record.value)["id"]].append(record.value)
    expected = {
        f"{ticks_topic}/{p}/{o}"
        for p, o in (produced.positions[i] for i in valid_positions(produced, max_bytes))
    }
    missing, extra = expected - set(by_id), set(by_id) - expected
    assert not missing and not extra, (
        f"{len(missing)} valid ticks without a prediction (e.g. {sorted(missing)[:3]}), "
        f"{len(extra)} predictions for no valid tick (e.g. {sorted(extra)[:3]})"
    )
    differing = [i for i, values in by_id.items() if len(set(values)) > 1]
    assert not differing, f"re-sent predictions differ from the first: {differing[:3]}"
    return sum(len(values) - 1 for values in by_id.values())


# ---------------------------------------------------------------- the worker's HTTP side
def metrics_port(worker: WorkerProcess, timeout: float = 30) -> int:
    """The port the worker's metrics server bound (TICKPROP_METRICS_PORT=0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = worker.events("metrics_server")
        if events:
            return int(events[-1]["port"])
        if worker.process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the worker never served metrics:\n{worker.tail()}")


def http_status(port: int, path: str) -> int | None:
    """HTTP status of GET path on the worker, None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def metric(port: int, name: str, labels: str = "") -> float | None:
    """One sample of the worker's /metrics, e.g. metric(p, "tickprop_ticks_total",
    'outcome="processed"'); None when absent."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
