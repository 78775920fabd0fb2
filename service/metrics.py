"""Every Prometheus metric of the service, defined once, and the /metrics, /healthz, /readyz server.

The same server answers the read-only query API (`service.query_api`, GET /symbols...)
when it is given a directory of the symbols held.

Names follow docs/metrics.md (prefix `tickprop_`, base units, counters ending in
`_total`); labels are bounded: outcomes, reason codes, model names, partitions.
Tests pass a fresh `CollectorRegistry()` and read values with `get_sample_value`.
"""

from __future__ import annotations

import itertools
import math
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from model.learner import MODELS
from service import query_api
from service.codec import REASONS

OUTCOMES = ("processed", "invalid", "late")
DEPENDENCIES = ("kafka", "redis")

# 10 µs .. 10 s: one backprop step is microseconds, a checkpoint or a stalled poll seconds.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# 1 ms .. 1 day: live ticks lag milliseconds, replayed history lags days or years (+Inf).
EVENT_LAG_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
)  # fmt: skip


class TickHistogram:
    """A label-less histogram for values observed on every tick, from one thread.

    prometheus_client's `Histogram.observe` takes two locks and scans the buckets in
    Python (~1.5 µs); the worker observes up to three histograms per tick. Here `observe`
    is a bisect and two additions, with no lock: only the worker's loop thread observes.
    A scrape (another thread) copies the counts in one step, so the buckets it exposes
    agree with each other and with `_count`; `_sum` may miss an observation made during
    the copy. The exposition is prometheus_client's (`_bucket`, `_count`, `_sum`), less
    the optional `_created` sample.
    """

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        bounds = tuple(float(b) for b in buckets if b != float("inf"))
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must increase, got {buckets}")
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); last: +Inf
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count `value` (seconds) in the first bucket whose upper bound is >= it."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def observe_many(self, value: float, count: int) -> None:
        """`observe(value)` `count` times in one step (the sum gains value · count)."""
        self._counts[bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts = self._counts.copy()  # one step under the GIL: a consistent snapshot
        total = self._sum
        cumulative = itertools.accumulate(counts)
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(self._les, cumulative, strict=True)),
            sum_value=total,
        )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


# Per-symbol kappa-temporal (faded): below 0 the model trails persistence, 1 is perfect.
KAPPA_BUCKETS = (-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# A symbol is judged once its faded scorecard holds this much weight (~ recent scores).
SPREAD_MIN_WEIGHT = 100.0

# (horizon, (faded weight, faded kappa_temporal, faded accuracy minus the best baseline's))
SpreadPoint = tuple[int, tuple[float, float | None, float | None]]


class SpreadCollector:
    """The spread of the per-symbol scorecards across symbols, computed at scrape time.

    No label per symbol: per horizon, how many symbols are judged (faded weight >=
    SPREAD_MIN_WEIGHT), how many of those beat their best baseline's faded accuracy, and
    a gauge histogram of their faded kappa-temporal. `points()` is called on the scrape
    thread and must take the worker's lock itself.
    """

    def __init__(self, points: Callable[[], Iterator[SpreadPoint] | list[SpreadPoint]]) -> None:
        self.points = points

    def collect(self) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        judged: dict[int, int] = {}
        beating: dict[int, int] = {}
        kappas: dict[int, list[float]] = {}
        for horizon, (weight, kappa_t, lead) in self.points():
            judged.setdefault(horizon, 0)
            beating.setdefault(horizon, 0)
            kappas.setdefault(horizon, [])
            if weight < SPREAD_MIN_WEIGHT or lead is None:
                continue
            judged[horizon] += 1
            beating[horizon] += lead > 0.0
            if kappa_t is not None:
                kappas[horizon].append(kappa_t)
        yield from self._families(judged, beating, kappas)

    def _families(
        self, judged: dict[int, int], beating: dict[int, int], kappas: dict[int, list[float]]
    ) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        n = GaugeMetricFamily(
            "tickprop_symbols_judged",
            f"Symbols whose faded scorecard holds >= {SPREAD_MIN_WEIGHT:g} weight, by horizon.",
            labels=["horizon"],
        )
        b = GaugeMetricFamily(
            "tickprop_symbols_beating_baselines",
            "Judged symbols whose faded accuracy beats every baseline's, by horizon.",
            labels=["horizon"],
        )
        k = GaugeHistogramMetricFamily(
            "tickprop_symbol_kappa_temporal",
            "Judged symbols by faded kappa-temporal (model vs persistence), by horizon.",
            labels=["horizon"],
        )
        for horizon in sorted(judged):
            label = [str(horizon)]
            n.add_metric(label, judged[horizon])
            b.add_metric(label, beating[horizon])
            values = sorted(kappas[horizon])
            buckets = [(floatToGoString(le), bisect_right(values, le)) for le in KAPPA_BUCKETS]
            k.add_metric(label, [*buckets, ("+Inf", len(values))], gsum_value=math.fsum(values))
        yield from (n, b, k)

    def describe(self) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        return iter(())  # label values are only known at scrape time


class Metrics:
    """The service's metrics, registered in `registry` (a fresh one when None)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, horizons: Sequence[int] | None = None
    ) -> None:
        """`horizons`: the configured horizons (TICKPROP_HORIZONS), whose label values are
        created at start; LearnerConfig's default when None."""
        self.registry = registry if registry is not None else CollectorRegistry()
        if horizons is None:
            from model.learner import LearnerConfig

            horizons = LearnerConfig().horizons
        self.horizons = tuple(horizons)
        r = self.registry

        # --- the fixed names (docs/metrics.md) ---------------------------------------------
        self.ticks = Counter(
            "tickprop_ticks_total", "Ticks read, by outcome (processed, invalid, late).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.predictions = Counter(
            "tickprop_predictions_total", "Predictions published.", registry=r
        )
        self.learn_steps = Counter(
            "tickprop_learn_steps_total", "Backprop steps taken.", registry=r
        )
        self.refused_updates = Counter(
            "tickprop_refused_updates_total",
            "Backprop steps refused because a weight would have become non-finite.",
            registry=r,
        )
        self.checkpoints = Counter(
            "tickprop_checkpoints_total", "Checkpoints written to Redis.", registry=r
        )
        self.checkpoint_failures = Counter(
            "tickprop_checkpoint_failures_total",
            "Checkpoints that failed (Redis error or fenced off).",
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "tickprop_checkpoint_seconds", "Time to write one checkpoint.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # Observed on every tick by the worker's loop thread alone: see TickHistogram.
        self.step_seconds = TickHistogram(
            "tickprop_step_seconds", "One forward + backward pass + weight update.",
            LATENCY_BUCKETS, r,
        )  # fmt: skip
        self.process_seconds = TickHistogram(
            "tickprop_process_seconds",
            "Per tick, from poll to its prediction handed to the producer.",
            LATENCY_BUCKETS, r,
        )  # fmt: skip
        self.event_lag_seconds = TickHistogram(
            "tickprop_event_lag_seconds", "Wall-clock now minus the tick's ts, at processing.",
            EVENT_LAG_BUCKETS, r,
        )  # fmt: skip
        self.prequential_accuracy = Gauge(
            "tickprop_prequential_accuracy",
            "Rolling accuracy of scored predictions, by model (ffbpn and the baselines) and "
            "horizon (ticks ahead).",
            ["model", "horizon"], registry=r,
        )  # fmt: skip
        self.prequential_log_loss = Gauge(
            "tickprop_prequential_log_loss",
            "Rolling log loss of scored predictions, by model and horizon (NaN where a model "
            "has none).",
            ["model", "horizon"], registry=r,
        )  # fmt: skip
        self.drift_alarms = Counter(
            "tickprop_drift_alarms_total",
            "Drift alarms raised by the per-symbol Page-Hinkley detectors, by horizon.",
            ["horizon"], registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "tickprop_consumer_lag", "Records behind: end offset minus position, by partition.",
            ["partition"], registry=r,
        )  # fmt: skip
        self.unreadable_partition = Gauge(
            "tickprop_unreadable_partition",
            "1 for a held partition stopped at a record batch the consumer cannot read "
            "(missing codec, corrupt record; see TICKPROP_SKIP_UNREADABLE_BATCHES), else 0.",
            ["partition"], registry=r,
        )  # fmt: skip
        self.skipped_records = Counter(
            "tickprop_skipped_records_total",
            "Offsets skipped unread in unreadable batches (each batch: one unreadable_batch "
            "dead letter).", registry=r,
        )  # fmt: skip
        self.assigned_partitions = Gauge(
            "tickprop_assigned_partitions", "Input partitions this worker owns.", registry=r
        )
        self.symbols = Gauge(
            "tickprop_symbols", "Symbols whose state this worker holds.", registry=r
        )

        # --- extras ---------------------------------------------------------------
        self.dlq = Counter(
            "tickprop_dlq_total", "Records sent to the dead-letter topic, by reason code.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.refused_symbols = Counter(
            "tickprop_refused_symbols_total",
            "Ticks of new symbols refused (dead-lettered too_many_symbols) because the worker "
            "holds TICKPROP_MAX_SYMBOLS symbols already.",
            registry=r,
        )
        self.fenced_checkpoints = Counter(
            "tickprop_fenced_checkpoints_total",
            "Checkpoints refused because another worker claimed the partition since.",
            registry=r,
        )
        self.last_checkpoint_timestamp_seconds = Gauge(
            "tickprop_last_checkpoint_timestamp_seconds",
            "Unix time of the last successful checkpoint (0: none yet).",
            registry=r,
        )
        self.ready = Gauge(
            "tickprop_ready", "1 when the worker can make progress (Kafka and Redis reachable).",
            registry=r,
        )  # fmt: skip
        self.dependency_up = Gauge(
            "tickprop_dependency_up", "1 when the last call to the dependency succeeded.",
            ["dependency"], registry=r,
        )  # fmt: skip
        self.dependency_errors = Counter(
            "tickprop_dependency_errors_total",
            "Failed calls to a dependency (each followed by a back-off and retry).",
            ["dependency"], registry=r,
        )  # fmt: skip
        self.rebalances = Counter(
            "tickprop_rebalances_total", "Partitions assigned to or revoked from this worker.",
            ["event"], registry=r,
        )  # fmt: skip

        # Every bounded label value exists from start, so dashboards and rate() see 0s.
        for outcome in OUTCOMES:
            self.ticks.labels(outcome=outcome)
        for model in MODELS:
            for h in self.horizons:
                self.prequential_accuracy.labels(model=model, horizon=str(h)).set(float("nan"))
                self.prequential_log_loss.labels(model=model, horizon=str(h)).set(float("nan"))
        for h in self.horizons:
            self.drift_alarms.labels(horizon=str(h))
        for reason in REASONS:
            self.dlq.labels(reason=reason)
        for dependency in DEPENDENCIES:
            self.dependency_up.labels(dependency=dependency)
            self.dependency_errors.labels(dependency=dependency)
        for event in ("assigned", "revoked"):
            self.rebalances.labels(event=event)

    def watch_spread(self, points: Callable[[], Iterator[SpreadPoint] | list[SpreadPoint]]) -> None:
        """Expose the spread across symbols (`SpreadCollector`) of what `points()` yields."""
        self.registry.register(SpreadCollector(points))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class MetricsServer(ThreadingHTTPServer):
    """HTTP server for /metrics, /healthz, /readyz and /symbols; runs in a daemon thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        metrics: Metrics,
        ready: Callable[[], bool],
        alive: Callable[[], bool],
        directory: query_api.Directory | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.ready = ready
        self.alive = alive
        self.directory = directory
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    _send_body = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, self.server.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._probe(self.server.alive, "alive", "not alive")
        elif path == "/readyz":
            self._probe(self.server.ready, "ready", "not ready")
        elif query_api.handles(path) and self.server.directory is not None:
            status, body = query_api.answer(self.path, self.server.directory)
            self._reply(status, body, query_api.JSON)
        else:
            self._reply(404, b"not found: try /metrics, /healthz, /readyz or /symbols\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self._send_body = False
        self.do_GET()

    def __getattr__(self, name: str) -> Any:
        # http.server answers a method it has no do_X for with 501, a server error; a
        # read-only API refuses POST, PUT, DELETE... with 405 instead.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        body = b'{"error":"read-only: only GET and HEAD are allowed"}'
        self.close_connection = True  # a body the client sent is not read
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", query_api.JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _probe(self, check: Callable[[], bool], yes: str, no: str) -> None:
        try:
            ok = bool(check())
        except Exception:  # a probe that cannot answer is a failing probe
            ok = False
        self._reply(200 if ok else 503, f"{yes if ok else no}\n".encode())

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self._send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the service's own log


def serve(
    metrics: Metrics,
    host: str,
    port: int,
    ready: Callable[[], bool],
    alive: Callable[[], bool] = lambda: True,
    directory: query_api.Directory | None = None,
) -> MetricsServer:
    """Start the metrics HTTP server in a daemon thread; port 0 picks a free port.

    /metrics: Prometheus text; /healthz: 200 while `alive()` (the worker loop runs),
    else 503; /readyz: 200 while `ready()`, else 503; /symbols...: the query API over
    `directory` (absent when None). Call `.stop()` to shut it down.
    """
    server = MetricsServer((host, port), metrics, ready, alive, directory)
    server.thread = threading.Thread(
        target=server.serve_forever, name="tickprop-metrics", daemon=True
    )
    server.thread.start()
    return server
