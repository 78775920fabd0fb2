import math
import random
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.codec import REASONS
from service.metrics import LATENCY_BUCKETS, Metrics, TickHistogram, serve

DESIGN_NAMES = {
    "tickprop_ticks": "counter",
    "tickprop_predictions": "counter",
    "tickprop_learn_steps": "counter",
    "tickprop_refused_updates": "counter",
    "tickprop_checkpoints": "counter",
    "tickprop_checkpoint_failures": "counter",
    "tickprop_checkpoint_seconds": "histogram",
    "tickprop_step_seconds": "histogram",
    "tickprop_process_seconds": "histogram",
    "tickprop_event_lag_seconds": "histogram",
    "tickprop_prequential_accuracy": "gauge",
    "tickprop_prequential_log_loss": "gauge",
    "tickprop_consumer_lag": "gauge",
    "tickprop_assigned_partitions": "gauge",
    "tickprop_symbols": "gauge",
}


@pytest.fixture
def metrics():
    return Metrics(CollectorRegistry())


def test_every_design_metric_is_exposed_with_help_and_type(metrics):
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    for name, kind in DESIGN_NAMES.items():
        assert families[name].type == kind, name
        assert families[name].documentation, name


def test_design_label_values_exist_from_start(metrics):
    r = metrics.registry
    for outcome in ("processed", "invalid", "late"):
        assert r.get_sample_value("tickprop_ticks_total", {"outcome": outcome}) == 0
    for model in ("ffbpn", "base_rate", "persistence", "reversal"):
        for h in ("1", "5", "20"):  # LearnerConfig's default horizons
            labels = {"model": model, "horizon": h}
            assert math.isnan(r.get_sample_value("tickprop_prequential_accuracy", labels))
            assert math.isnan(r.get_sample_value("tickprop_prequential_log_loss", labels))
    for h in ("1", "5", "20"):
        assert r.get_sample_value("tickprop_drift_alarms_total", {"horizon": h}) == 0
    for reason in REASONS:
        assert r.get_sample_value("tickprop_dlq_total", {"reason": reason}) == 0


def test_the_horizon_label_takes_the_configured_horizons_only():
    r = Metrics(CollectorRegistry(), horizons=(2, 50)).registry
    labels = {"model": "ffbpn", "horizon": "50"}
    assert math.isnan(r.get_sample_value("tickprop_prequential_accuracy", labels))
    labels = {"model": "ffbpn", "horizon": "1"}
    assert r.get_sample_value("tickprop_prequential_accuracy", labels) is None


def test_counters_and_histograms_record(metrics):
    r = metrics.registry
    metrics.ticks.labels(outcome="processed").inc(3)
    metrics.predictions.inc()
    metrics.step_seconds.observe(40e-6)
    metrics.consumer_lag.labels(partition="2").set(17)
    assert r.get_sample_value("tickprop_ticks_total", {"outcome": "processed"}) == 3
    assert r.get_sample_value("tickprop_predictions_total") == 1
    assert r.get_sample_value("tickprop_step_seconds_count") == 1
    assert r.get_sample_value("tickprop_step_seconds_bucket", {"le": "5e-05"}) == 1
    assert r.get_sample_value("tickprop_step_seconds_bucket", {"le": "2.5e-05"}) == 0
    assert r.get_sample_value("tickprop_consumer_lag", {"partition": "2"}) == 17


def test_tick_histogram_exposes_what_prometheus_clients_histogram_does():
    rng = random.Random(5)
    values = [rng.choice([0.0, *LATENCY_BUCKETS, 20.0]) for _ in range(300)]  # bounds exactly
    values += [10 ** rng.uniform(-7, 2) for _ in range(3000)]
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = TickHistogram("x_seconds", "doc", LATENCY_BUCKETS, ours_registry)
    theirs = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=theirs_registry)
    for v in values:
        ours.observe(v)
        theirs.observe(v)

    def samples(registry):
        text = generate_latest(registry).decode()
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == "x_seconds"]
        return family.type, {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in family.samples
            if not s.name.endswith("_created")
        }

    kind, got = samples(ours_registry)
    assert (kind, got) == samples(theirs_registry)
    assert got[("x_seconds_count", ())] == len(values)
    with pytest.raises(ValueError):  # the duplicate name is refused like any collector's
        TickHistogram("x_seconds", "doc", LATENCY_BUCKETS, ours_registry)


def test_tick_histogram_observe_many_counts_like_observe_repeated():
    one, many = (
        TickHistogram("x_seconds", "doc", LATENCY_BUCKETS, CollectorRegistry()) for _ in "ab"
    )
    for value, count in [(0.003, 7), (LATENCY_BUCKETS[2], 3), (20.0, 1), (0.0, 2)]:
        many.observe_many(value, count)
        for _ in range(count):
            one.observe(value)
    assert many._counts == one._counts
    assert many._sum == pytest.approx(one._sum, rel=1e-12)


def test_two_instances_do_not_collide():
    Metrics(CollectorRegistry())
    Metrics(CollectorRegistry())  # duplicate names would raise in a shared registry


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_endpoints_answer_metrics_health_and_readiness(metrics):
    state = {"ready": False, "alive": True}
    server = serve(
        metrics, "127.0.0.1", 0, ready=lambda: state["ready"], alive=lambda: state["alive"]
    )
    base = f"http://127.0.0.1:{server.port}"
    try:
        metrics.predictions.inc(5)
        status, body = get(base + "/metrics")
        assert status == 200 and b"tickprop_predictions_total 5.0" in body
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz")[0] == 503
        state["ready"] = True
        assert get(base + "/readyz")[0] == 200
        state["alive"] = False
        assert get(base + "/healthz")[0] == 503
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_a_probe_that_raises_reports_not_ready(metrics):
    def broken():
        raise RuntimeError("boom")

    server = serve(metrics, "127.0.0.1", 0, ready=broken)
    try:
        assert get(f"http://127.0.0.1:{server.port}/readyz")[0] == 503
    finally:
        server.stop()


def test_spread_across_symbols_counts_judged_and_beating_symbols_and_bins_kappa(metrics):
    points = [
        (1, (500.0, 0.30, 0.05)),  # judged, beats its best baseline
        (1, (500.0, -0.20, -0.01)),  # judged, trails
        (1, (500.0, None, 0.02)),  # judged, beats; persistence perfect: no kappa
        (1, (50.0, 0.9, 0.3)),  # too few recent scores to judge
        (5, (0.0, None, None)),  # nothing scored yet
    ]
    metrics.watch_spread(lambda: points)
    r = metrics.registry
    assert r.get_sample_value("tickprop_symbols_judged", {"horizon": "1"}) == 3
    assert r.get_sample_value("tickprop_symbols_beating_baselines", {"horizon": "1"}) == 2
    assert r.get_sample_value("tickprop_symbols_judged", {"horizon": "5"}) == 0
    bucket = "tickprop_symbol_kappa_temporal_bucket"
    assert r.get_sample_value(bucket, {"horizon": "1", "le": "-0.25"}) == 0
    assert r.get_sample_value(bucket, {"horizon": "1", "le": "-0.1"}) == 1
    assert r.get_sample_value(bucket, {"horizon": "1", "le": "0.5"}) == 2
    assert r.get_sample_value(bucket, {"horizon": "1", "le": "+Inf"}) == 2
    assert r.get_sample_value("tickprop_symbol_kappa_temporal_gsum", {"horizon": "1"}) == (
        pytest.approx(0.1)
    )
    points.clear()  # computed at each scrape: nothing held, nothing exposed
    assert r.get_sample_value("tickprop_symbols_judged", {"horizon": "1"}) is None
