"""The query API of a live worker: it agrees with `inspect --symbol` and the backtest report after a
crash and restart, and schemathesis finds nothing docs/openapi.yaml does not allow."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import schemathesis
from harness import metrics_port, tickprop, write_valid_csv
from hypothesis import HealthCheck, given, settings
from worker_kit import (
    ROOT,
    Names,
    WorkerProcess,
    mixed_ticks,
    produce,
    stored_offsets,
    tick_records,
    wait_until,
    worker_env,
)

OPENAPI = ROOT / "docs" / "openapi.yaml"


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_inspect_and_backtest_agree_after_a_crash_and_the_api_keeps_its_contract(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    names = Names.fresh()
    records = tick_records(mixed_ticks(n_stocks=1500, n_es=3000))
    env = worker_env(broker, redis_url, names, checkpoint_every_ticks=50, session_timeout_ms=3000)
    produced = produce(broker, names.ticks, records[:2500])
    first = WorkerProcess(env, tmp_path / "first.log")
    wait_until(
        lambda: sum(stored_offsets(redis_url, names.group).values()) > 0,
        timeout=60,
        what="a checkpoint of the first worker",
        step=0.02,
    )
    first.kill()  # mid-stream: the second worker resumes from the last checkpoint
    assert sum(stored_offsets(redis_url, names.group).values()) < len(produced.records)
    produce(broker, names.ticks, records[2500:], into=produced)
    worker = WorkerProcess(env, tmp_path / "second.log")
    try:
        port = metrics_port(worker)
        wait_until(
            lambda: stored_offsets(redis_url, names.group) == produced.end_offsets(),
            timeout=120,
            what="every record processed and checkpointed",
        )
        status, listing = get(port, "/symbols?limit=1000")
        assert status == 200
        symbols = [row["symbol"] for row in listing["symbols"]]
        assert listing["total"] == len(symbols) >= 3
        assert set(symbols) == {key.decode() for key, _, _ in records}

        csv_path, report_path = tmp_path / "ticks.csv", tmp_path / "report.json"
        write_valid_csv(produced, csv_path)
        backtest = ["backtest", "--csv", str(csv_path), "--json", str(report_path), "--no-progress"]
        tickprop(backtest, env)
        report = json.loads(report_path.read_text())
        for symbol in symbols:
            status, live = get(port, f"/symbols/{symbol}")
            assert status == 200
            stored = json.loads(tickprop(["inspect", "--symbol", symbol], env))
            assert live == stored
            assert live["scorecard"] == report["per_symbol"][symbol]["scorecard"]
            assert live["scorecard"][str(live["forecasts"][0]["horizon"])]["scored"] > 0
        status, body = get(port, "/symbols/NOT-HERE")
        assert status == 404 and "not held by this worker" in body["error"]

        schema = schemathesis.openapi.from_path(OPENAPI)
        schema.config.update(base_url=f"http://127.0.0.1:{port}")
        # A target over the server's 2,048-byte limit is refused with 414 URI Too Long (the
        # fitting status, documented in openapi.yaml), which schemathesis does not count
        # among the refusals of invalid data by default.
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "414"]
        for operation in schema.get_all_operations():
            check_operation(operation.ok())
    finally:
        worker.terminate()


def check_operation(operation: Any) -> None:
    """Schema-valid requests answered as documented, schema-invalid ones refused with a 4xx."""
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate()

        run()
