"""A real Prometheus scrapes a real `tickprop worker`; every dashboard and alert query runs on it.

The worker runs as a subprocess (`python -m service.cli worker`, the console
script's own entry point) against the session's broker and Redis and is fed
valid, malformed and late ticks, so every labelled series exists. Prometheus is
Debian's binary, started on a free port with a generated config that scrapes
the worker every second and loads deploy/prometheus/alerts.yml; it is stopped
by its PID. The checks:

- every PromQL expression of the Grafana dashboard and of the alert rules is
  evaluated through the HTTP API without error, and each dashboard query
  returns data;
- every metric name those expressions use is in the worker's own /metrics;
- the server loaded every alert rule and evaluates each one without error.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from service.tools.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tickprop.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SYMBOLS = ("AAA", "BBB", "CCC")
TICKS_PER_SYMBOL = 200

# What Grafana substitutes for its variables before sending a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$instance": ".*",
    "$horizon": ".*",  # "All" of the dashboard's horizon variable
}
# PromQL words that look like metric names in the extraction below.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "and", "or",
    "unless", "rate", "increase", "deriv", "delta", "time", "absent", "histogram_quantile",
    "max_over_time", "timestamp", "bool", "group_left", "group_right",
}  # fmt: skip


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def as_sent_by_grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside strings, labels and ranges."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # drop label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # drop label lists
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # drop ranges and subquery steps
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+", w)}


def test_metric_name_extraction() -> None:
    quantile = 'histogram_quantile(0.9, sum by (le) (rate(a_bucket{instance=~"x"}[1m])))'
    assert metric_names(quantile) == {"a_bucket"}
    joined = "time() - max by (instance) (a) > 600 and on (instance) sum(increase(b[10m])) > 0"
    assert metric_names(joined) == {"a", "b"}


# --- servers ------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process by its PID, SIGKILL if it does not exit in `timeout` seconds."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


@dataclass(frozen=True)
class Worker:
    url: str  # http://127.0.0.1:port of its metrics server
    log: Path

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get((name, tuple(sorted(labels.items()))), math.nan)


def ticks(seed: int = 11) -> list[tuple[str, bytes]]:
    """Random-walk ticks for SYMBOLS in time order, then two malformed records and a late tick."""
    rng = random.Random(seed)
    records: list[tuple[str, bytes]] = []
    prices = dict.fromkeys(SYMBOLS, 100.0)
    start_ms = int(time.time() * 1000) - TICKS_PER_SYMBOL * 1000
    for i in range(TICKS_PER_SYMBOL):
        for symbol in SYMBOLS:
            prices[symbol] = round(prices[symbol] * (1 + rng.choice((-1, 1)) * 0.002), 4)
            body = {"symbol": symbol, "ts": start_ms + 1000 * i, "price": prices[symbol]}
            records.append((symbol, json.dumps(body).encode()))
    records.append(("AAA", b"not json at all"))
    records.append(("BBB", json.dumps({"symbol": "BBB", "ts": start_ms, "price": -1}).encode()))
    records.append(("CCC", json.dumps({"symbol": "CCC", "ts": start_ms, "price": 99.0}).encode()))
    return records


@pytest.fixture(scope="module")
def worker(
    broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    workdir = tmp_path_factory.mktemp("deploy-worker")
    port = free_port()
    tag = os.urandom(4).hex()
    env = {
        **os.environ,
        "TICKPROP_KAFKA_BOOTSTRAP_SERVERS": broker,
        "TICKPROP_REDIS_URL": redis_url,
        "TICKPROP_TICKS_TOPIC": f"deploy-ticks-{tag}",
        "TICKPROP_PREDICTIONS_TOPIC": f"deploy-predictions-{tag}",
        "TICKPROP_DLQ_TOPIC": f"deploy-ticks-{tag}.dlq",
        "TICKPROP_GROUP_ID": f"deploy-{tag}",
        "TICKPROP_TOPIC_PARTITIONS": "2",
        "TICKPROP_METRICS_HOST": "127.0.0.1",
        "TICKPROP_METRICS_PORT": str(port),
        "TICKPROP_CHECKPOINT_EVERY_SECONDS": "1",
    }
    log = workdir / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    handle = Worker(url=f"http://127.0.0.1:{port}", log=log)
    try:
        wait_for(
            "the worker's /readyz", lambda: http_get(f"{handle.url}/readyz")[0] == 200, 60, log
        )
        wait_for(
            "a partition assignment",
            lambda: handle.value("tickprop_assigned_partitions") >= 1,
            60,
            log,
        )
        producer = KafkaProducer(bootstrap_servers=[broker], acks="all", linger_ms=5)
        for key, value in ticks():
            producer.send(env["TICKPROP_TICKS_TOPIC"], key=key.encode(), value=value)
        producer.flush(30)
        producer.close(10)
        processed = len(SYMBOLS) * TICKS_PER_SYMBOL
        wait_for(
            f"{processed} processed ticks and a checkpoint",
            lambda: (
                handle.value("tickprop_ticks_total", outcome="processed") >= processed
                and handle.value("tickprop_checkpoints_total") >= 1
                and not math.isnan(
                    handle.value("tickprop_prequential_accuracy", model="ffbpn", horizon="1")
                )
            ),
            90,
            log,
        )
        yield handle
    finally:
        stop(process)


@dataclass(frozen=True)
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", (path, params, reply)
        return dict(reply["data"])


@pytest.fixture(scope="module")
def prometheus(worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: apt-get install prometheus (scripts/test does it as root)"
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "tickprop",  # the job name the alert rules select on
                "static_configs": [{"targets": [worker.url.removeprefix("http://")]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(url=f"http://127.0.0.1:{port}")
    try:
        wait_for(
            "Prometheus /-/ready", lambda: http_get(f"{server.url}/-/ready")[0] == 200, 30, log
        )

        def scraped_a_few_times() -> bool:
            result = server.api("query", query='count_over_time(up{job="tickprop"}[1m])')["result"]
            return bool(result) and float(result[0]["value"][1]) >= 5

        wait_for("five scrapes of the worker", scraped_a_few_times, 30, log)
        yield server
    finally:
        stop(process)


# --- the checks ---------------------------------------------------------------------------


def test_prometheus_scrapes_the_worker_as_up(prometheus: Prometheus) -> None:
    (target,) = prometheus.api("targets")["activeTargets"]
    assert target["labels"]["job"] == "tickprop"
    assert target["health"] == "up", target["lastError"]


@pytest.mark.parametrize("expr", dashboard_expressions())
def test_dashboard_query_runs_and_returns_data(prometheus: Prometheus, expr: str) -> None:
    result = prometheus.api("query", query=as_sent_by_grafana(expr))
    assert result["result"], f"no data for dashboard query {expr!r}"


@pytest.mark.parametrize("expr", alert_expressions())
def test_alert_expression_runs(prometheus: Prometheus, expr: str) -> None:
    # Alerts are silent on a healthy worker: evaluating without error is what is checked here;
    # promtool's unit tests (tests/unit/test_deploy_promtool.py) show each one firing.
    prometheus.api("query", query=expr)


def test_every_metric_the_dashboard_and_alerts_use_is_exported_by_the_worker(
    worker: Worker,
) -> None:
    exported = {name for name, _labels in worker.samples()}
    used: set[str] = set()
    for expr in dashboard_expressions() + alert_expressions():
        used |= metric_names(as_sent_by_grafana(expr) if "$" in expr else expr)
    used.discard("up")  # made by Prometheus for every target, not by the worker
    assert used, "no metric names found"
    assert used <= exported, f"used but not exported: {sorted(used - exported)}"


def test_prometheus_loaded_and_evaluates_every_alert_rule(prometheus: Prometheus) -> None:
    expected = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
                for rule in group["rules"]}  # fmt: skip

    def all_evaluated() -> bool:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return {r["name"] for r in rules} == expected and all(r["health"] == "ok" for r in rules)

    wait_for("every rule evaluated once", all_evaluated, 15)
    for group in prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok" and not rule.get("lastError"), rule
