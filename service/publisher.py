"""The worker's publisher: a kafka-python producer in a child process, fed through a pipe.

Why a process: kafka-python is pure Python. Its `send()` costs ~20 µs of interpreter
time per record and its sender thread more, all under the one GIL the learner needs;
measured in one process (benchmarks/bench_worker.py) the worker ran at ~0.39x a bare
relay, and replacing `send()` with a no-op more than doubled it. In a child process the
producer has an interpreter (and a core) of its own; the worker only appends each
record to a buffer (~1 µs) and ships the buffer every few dozen records.

What the worker relies on (and tests/integration/test_publisher.py checks):

- `send()` queues a record; the records of one topic-partition reach Kafka in send
  order (one pipe, one producer).
- `flush(timeout)` returns once every record sent before it is acknowledged by Kafka
  or has failed; then `take_failures()` holds, per tag, why a record failed since the
  last take (the worker tags each record with its input partition), and
  `take_offsets()` the highest offset of the records sent with `want_offset`.
  It raises KafkaTimeoutError when Kafka does not answer within `timeout`.
- Records not confirmed by a flush when the child dies count as failed, and the next
  call starts a new child.
- `close()` lets the child deliver what it holds (up to `EXIT_FLUSH_SECONDS`) and exit.
  When the worker dies without it (killed, even by SIGKILL) the child exits as soon
  as it sees so — at its next frame, or the pipe's end — and drops what it holds, as
  an in-process producer would have died with the worker: whoever takes the
  partitions over re-makes those outputs from the last checkpoint, and finds the
  dead letters already in Kafka by reading them back, so one published late, after
  that read, would be published twice. The child ignores SIGINT and SIGTERM: a
  signal to the process group stops the worker, which then flushes and closes the
  child itself.

The child runs under Linux's SCHED_BATCH policy, so that the pipe's wake-ups do not make
it preempt the worker on the worker's core (see `_child_main`).

Frames, both ways (no pickle): u32 LE length, one type byte, payload.
  parent -> child: C config (JSON: client kwargs, producer options, log level), R records
  (see `_REC`; a record flagged PACKED_PREDICTION carries a packed prediction as its
  value, which the child writes as JSON), F flush (f64 timeout), P partitions_for (topic), Q close.
  child -> parent: one JSON reply per F or P: {"ok", "error", "failures", "offsets",
  "partitions"}.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from service import codec
from service.backoff import backoff

log = logging.getLogger("tickprop.publisher")

EXIT_FLUSH_SECONDS = 10.0
SHIP_BYTES = 1 << 16  # ship the buffer to the child once it holds this much
PIPE_BYTES = 1 << 20  # asked-for pipe capacity (Linux), so a burst does not block the worker
REPLY_GRACE_SECONDS = 5.0  # the child's answer may take this much longer than its own timeout

_LEN = struct.Struct("<I")
# tag, flags (1 = report the offset), partition (-1: the producer's partitioner),
# topic length, key length (-1: None), value length (-1: None), header count. Lengths are
# 32-bit: a dead letter carries a hostile record's headers as they came. A header name is
# sent as UTF-8 with "surrogateescape" (a name read from Kafka that is not UTF-8 keeps its
# bytes), a header value's length is -1 for a null value.
_REC = struct.Struct("<IBiIiiI")
_REC_SIZE = _REC.size
_HEADER_NAME = struct.Struct("<I")
_HEADER_VALUE = struct.Struct("<i")
_TIMEOUT = struct.Struct("<d")
WANT_OFFSET = 1
PACKED_PREDICTION = 2  # the value is `codec.pack_prediction`'s: the child writes the JSON
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder holding service/


class ProcessPublisher:
    """The KafkaProducer of the worker, running in a child process (see the module doc)."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        producer_options: dict[str, Any],
        send_timeout: float = 15.0,
        log_level: str = "INFO",
    ) -> None:
        self._config = json.dumps(
            {"client": client_kwargs, "options": producer_options, "log_level": log_level}
        ).encode()
        # How long a full pipe may block the worker: longer than the child's own
        # max_block_ms, so a broker outage surfaces as the producer's error, not ours.
        self._send_timeout = send_timeout
        self._buffer = bytearray()
        self._topics: dict[str, bytes] = {}
        self._unconfirmed: set[int] = set()  # tags of records not yet covered by a flush
        self._failures: dict[int, str] = {}
        self._offsets: dict[int, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._read_buffer = bytearray()
        self._losses = 0  # children lost in a row (no good flush since): the restart backoff
        self._restart_at = 0.0
        self._start()

    # ------------------------------------------------------------------ the API
    @property
    def pid(self) -> int | None:
        """The child's process id (None between a lost child and the next start)."""
        return self._proc.pid if self._proc is not None else None

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        partition: int | None = None,
        tag: int = 0,
        want_offset: bool = False,
        packed_prediction: bool = False,
    ) -> None:
        """Queue one record; KafkaError if the child cannot take the buffer when it ships.

        Any header Kafka allows passes the pipe; kafka-python's producer then sends a null
        header value as empty and refuses a name that is not UTF-8 (a failure reported
        for `tag`), so callers who must keep such headers use codec.keepable_headers.
        With `packed_prediction`, `value` is `codec.pack_prediction`'s and the child sends
        `codec.encode_packed_prediction(value)` (the same bytes as encode_prediction's):
        the worker leaves the JSON formatting to the child's core."""
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = topic.encode()
        buf = self._buffer
        buf += _REC.pack(
            tag,
            (WANT_OFFSET if want_offset else 0) | (PACKED_PREDICTION if packed_prediction else 0),
            -1 if partition is None else partition,
            len(t),
            -1 if key is None else len(key),
            -1 if value is None else len(value),
            len(headers) if headers else 0,
        )
        buf += t
        if key is not None:
            buf += key
        if value is not None:
            buf += value
        if headers:
            for name, header_value in headers:
                name_bytes = name.encode("utf-8", "surrogateescape")
                buf += _HEADER_NAME.pack(len(name_bytes))
                buf += name_bytes
                if header_value is None:
                    buf += _HEADER_VALUE.pack(-1)
                else:
                    buf += _HEADER_VALUE.pack(len(header_value))
                    buf += header_value
        self._unconfirmed.add(tag)
        if len(buf) >= SHIP_BYTES:
            self.ship()

    def ship(self) -> None:
        """Hand the queued records to the child (the worker: every 64 predictions and at
        the end of each poll batch; `send` itself once the buffer holds SHIP_BYTES)."""
        if not self._buffer:
            return
        data, self._buffer = self._buffer, bytearray()
        self._request(b"R", data)

    def flush(self, timeout: float) -> None:
        """Wait until every record sent so far is delivered or failed (see the module doc)."""
        self.ship()
        reply = self._call(b"F", _TIMEOUT.pack(timeout), timeout)
        if not reply["ok"]:
            raise KafkaTimeoutError(f"flush: {reply['error']}")
        self._unconfirmed.clear()
        self._losses = 0

    def take_failures(self) -> dict[int, str]:
        """Tags with a failed record since the last take -> the first error."""
        failures, self._failures = self._failures, {}
        return failures

    def take_offsets(self) -> dict[int, int]:
        """Tags -> the highest offset of their `want_offset` records since the last take."""
        offsets, self._offsets = self._offsets, {}
        return offsets

    def partitions_for(self, topic: str) -> set[int] | None:
        """The topic's partition ids as the producer knows them (KafkaError if unknown)."""
        reply = self._call(b"P", topic.encode(), self._send_timeout)
        if not reply["ok"]:
            raise KafkaTimeoutError(f"partitions_for {topic!r}: {reply['error']}")
        partitions = reply["partitions"]
        return None if partitions is None else set(partitions)

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> None:
        """Ship what is queued, let the child flush and exit (killed after `timeout`)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(KafkaError):
            self.ship()
            if self._proc is not None:  # not lost while shipping
                self._write(_LEN.pack(1) + b"Q")
        self._stop(timeout)

    # ------------------------------------------------------------------ the child
    def _start(self) -> None:
        # The child imports this very package: -P keeps the working directory off its
        # sys.path (a `service/` folder there would shadow ours), PYTHONPATH names ours.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "service.publisher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        for stream in (proc.stdin, proc.stdout):
            os.set_blocking(stream.fileno(), False)
            with contextlib.suppress(OSError, AttributeError):  # not Linux, or capped: fine
                fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._proc = proc
        self._read_buffer.clear()
        self._write(_LEN.pack(1 + len(self._config)) + b"C" + self._config)
        log.info("publisher process started", extra={"event": "publisher_started", "pid": proc.pid})

    def _stop(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF: the child flushes and exits
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def _lost(self, reason: str) -> None:
        """The child died or the pipe broke: everything unconfirmed counts as failed."""
        self._fail_unconfirmed(f"publisher process lost: {reason}")
        self._losses += 1
        delay = backoff(self._losses + 1)  # 0.5 s after the first loss, ... 5 s
        self._restart_at = time.monotonic() + delay
        log.error(
            "publisher process lost; unconfirmed outputs count as failed",
            extra={"event": "publisher_lost", "error": reason, "restart_in": delay},
        )
        self._stop(timeout=0)

    def _fail_unconfirmed(self, reason: str) -> None:
        for tag in self._unconfirmed:
            self._failures.setdefault(tag, reason)
        self._unconfirmed.clear()
        self._buffer.clear()

    def _request(self, kind: bytes, payload: bytes | bytearray) -> None:
        if self._proc is None:
            if time.monotonic() < self._restart_at:
                self._fail_unconfirmed("publisher process lost, restart pending")
                raise KafkaConnectionError("publisher process lost; restarting shortly")
            try:
                self._start()
            except OSError as exc:
                self._lost(f"cannot start: {exc!r}")
                raise KafkaConnectionError(f"publisher process: {exc!r}") from exc
        self._write(_LEN.pack(1 + len(payload)) + kind + payload)

    def _call(self, kind: bytes, payload: bytes, timeout: float) -> dict[str, Any]:
        self._request(kind, payload)
        reply = self._read_frame(time.monotonic() + timeout + REPLY_GRACE_SECONDS)
        for tag, error in reply.get("failures", {}).items():
            self._failures.setdefault(int(tag), error)
        for tag, offset in reply.get("offsets", {}).items():
            tag = int(tag)
            if offset > self._offsets.get(tag, -1):
                self._offsets[tag] = offset
        return reply

    def _write(self, data: bytes) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        fd = proc.stdin.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + self._send_timeout
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                pass
            except OSError as exc:  # BrokenPipeError: the child is gone
                self._lost(repr(exc))
                raise KafkaConnectionError(f"publisher process: {exc!r}") from exc
            if view:
                left = deadline - time.monotonic()
                if left <= 0:
                    # Part of a frame is written: the stream cannot be resumed.
                    self._lost(f"pipe full for {self._send_timeout} s")
                    raise KafkaTimeoutError("publisher process took no records in time")
                select.select([], [fd], [], left)

    def _read_frame(self, deadline: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = self._read_buffer
        while True:
            if len(buf) >= 4:
                (size,) = _LEN.unpack_from(buf)
                if len(buf) >= 4 + size:
                    frame = bytes(buf[4 : 4 + size])
                    del buf[: 4 + size]
                    reply: dict[str, Any] = json.loads(frame)
                    return reply
            left = deadline - time.monotonic()
            if left <= 0:
                self._lost("no answer in time")
                raise KafkaTimeoutError("publisher process did not answer in time")
            select.select([fd], [], [], left)
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._lost(repr(exc))
                raise KafkaConnectionError(f"publisher process: {exc!r}") from exc
            if not chunk:
                code = proc.poll()
                self._lost(f"exited with {code}" if code is not None else "closed its pipe")
                raise KafkaConnectionError("publisher process exited")
            buf += chunk


def _read_headers(data: bytes, offset: int, count: int) -> tuple[list[tuple[str, bytes]], int]:
    """`count` headers of a record in an R frame from `offset` on, and the offset after them."""
    headers = []
    for _ in range(count):
        (name_len,) = _HEADER_NAME.unpack_from(data, offset)
        offset += _HEADER_NAME.size
        name = data[offset : offset + name_len].decode("utf-8", "surrogateescape")
        offset += name_len
        (header_len,) = _HEADER_VALUE.unpack_from(data, offset)
        offset += _HEADER_VALUE.size
        if header_len < 0:  # null: kafka-python's send() takes bytes only
            headers.append((name, b""))
            continue
        headers.append((name, data[offset : offset + header_len]))
        offset += header_len
    return headers, offset


# ---------------------------------------------------------------------- child side
class _Child:
    """Runs in the child: reads frames from stdin, drives a KafkaProducer."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.lock = threading.Lock()
        self.failures: dict[int, str] = {}
        self.offsets: dict[int, int] = {}
        self.topics: dict[bytes, str] = {}  # a topic's name as sent -> as the producer takes it
        self.errbacks: dict[int, Callable[[BaseException], None]] = {}  # tag -> failed(tag, ...)
        self.producer: Any = None
        self.parent = os.getppid()

    def read_exactly(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(self.read_fd, left)
            if not chunk:
                return None  # EOF: the worker is gone or closed us
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read_frame(self) -> bytes | None:
        head = self.read_exactly(4)
        if head is None:
            return None
        (size,) = _LEN.unpack(head)
        return self.read_exactly(size)

    def reply(self, body: dict[str, Any]) -> None:
        with self.lock:
            body["failures"], self.failures = self.failures, {}
            body["offsets"], self.offsets = self.offsets, {}
        data = json.dumps(body).encode()
        view = memoryview(_LEN.pack(len(data)) + data)
        while view:  # a blocking pipe: returns short only if interrupted
            view = view[os.write(self.write_fd, view) :]

    def failed(self, tag: int, exc: BaseException) -> None:
        with self.lock:
            self.failures.setdefault(tag, repr(exc)[:500])

    def delivered(self, tag: int, metadata: Any) -> None:
        with self.lock:
            if metadata.offset > self.offsets.get(tag, -1):
                self.offsets[tag] = metadata.offset

    def send_all(self, data: bytes) -> None:
        """Hand each record of an R frame's payload to the producer, in order.

        With the producer's own send(), most of the process's CPU per record
        (benchmarks/prof_publisher.py): topic names and the tags' errbacks are made once
        and kept, not per record, and headers are read only for records that have some."""
        offset, end, send = 0, len(data), self.producer.send
        topics, errbacks = self.topics, self.errbacks
        while offset < end:
            tag, flags, partition, topic_len, key_len, value_len, n_headers = _REC.unpack_from(
                data, offset
            )
            offset += _REC_SIZE
            topic_end = offset + topic_len
            topic_bytes = data[offset:topic_end]
            topic = topics.get(topic_bytes)
            if topic is None:
                topic = topics[topic_bytes] = topic_bytes.decode()
            offset = topic_end
            if key_len < 0:
                key = None
            else:
                key = data[offset : offset + key_len]
                offset += key_len
            if value_len < 0:
                value = None
            else:
                value = data[offset : offset + value_len]
                offset += value_len
            headers = None
            if n_headers:
                headers, offset = _read_headers(data, offset, n_headers)
            try:
                if flags & PACKED_PREDICTION:
                    value = codec.encode_packed_prediction(value or b"")
                future = send(
                    topic,
                    key=key,
                    value=value,
                    headers=headers,
                    partition=None if partition < 0 else partition,
                )
            except (KafkaError, ValueError, TypeError) as exc:  # no metadata in time; refused;
                # not a packed prediction after all
                self.failed(tag, exc)
                continue
            errback = errbacks.get(tag)
            if errback is None:
                errback = errbacks[tag] = functools.partial(self.failed, tag)
            future.add_errback(errback)
            if flags & WANT_OFFSET:
                future.add_callback(self.delivered, tag)

    def run(self) -> int:
        from kafka import KafkaProducer

        from service import logs

        config = self.read_frame()
        if config is None or config[:1] != b"C":
            return 2
        settings = json.loads(config[1:])
        logs.configure(settings["log_level"])
        try:
            self.producer = KafkaProducer(**settings["client"], **settings["options"])
        except KafkaError as exc:  # the worker sees the pipe close, and starts another later
            log.error(
                "publisher cannot create its producer",
                extra={"event": "publisher_start_failed", "error": repr(exc)},
            )
            return 1
        try:
            while True:
                frame = self.read_frame()
                if frame is None or os.getppid() != self.parent:
                    os._exit(0)  # the worker is gone without closing us: drop it all
                if frame[:1] == b"Q":
                    return 0
                kind, payload = frame[:1], frame[1:]
                if kind == b"R":
                    self.send_all(payload)
                elif kind == b"F":
                    (timeout,) = _TIMEOUT.unpack(payload)
                    try:
                        self.producer.flush(timeout=timeout)
                    except KafkaError as exc:
                        self.reply({"ok": False, "error": repr(exc)})
                    else:
                        self.reply({"ok": True, "error": None})
                elif kind == b"P":
                    try:
                        partitions = self.producer.partitions_for(payload.decode())
                    except KafkaError as exc:
                        self.reply({"ok": False, "error": repr(exc), "partitions": None})
                    else:
                        found = None if partitions is None else sorted(partitions)
                        self.reply({"ok": True, "error": None, "partitions": found})
                else:
                    log.error("unknown frame %r", kind, extra={"event": "publisher_bad_frame"})
                    return 2
        finally:
            self.producer.close(timeout=EXIT_FLUSH_SECONDS)


def _child_main() -> int:
    # The worker stops us by closing the pipe, after its own graceful shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Each shipment wakes us; as an ordinary process we would then preempt the worker on
    # its own core (Linux puts a woken pipe reader beside its writer) and the two would
    # take turns instead of running side by side. A SCHED_BATCH process never preempts on
    # waking: it waits for a free core (same priority, no privilege needed; not Linux: as is).
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    # The protocol owns the original stdout; anything printed goes to stderr instead.
    write_fd = os.dup(1)
    os.dup2(2, 1)
    return _Child(0, write_fd).run()


if __name__ == "__main__":
    sys.exit(_child_main())
