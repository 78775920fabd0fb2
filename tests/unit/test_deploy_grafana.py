"""deploy/grafana: a well-formed dashboard on the provisioned datasource, showing what is asked.

Whether each expression runs against a real Prometheus scraping a real worker
is tests/integration/test_deploy_prometheus.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "tickprop.json").read_text())


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]


def test_dashboard_has_a_recent_schema_unique_ids_and_a_stable_uid(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "tickprop-overview"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in graph_panels(dashboard):
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_every_panel_queries_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = provisioned["datasources"]
    for panel in graph_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]


def test_dashboard_provider_loads_the_mounted_folder() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "tickprop.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize(
    "needed",
    [
        "sum by (outcome) (rate(tickprop_ticks_total",
        "sum by (reason) (rate(tickprop_dlq_total",
        "tickprop_prequential_accuracy",
        "tickprop_prequential_log_loss",
        "histogram_quantile(0.5, sum by (le) (rate(tickprop_step_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(tickprop_step_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(tickprop_process_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(tickprop_process_seconds_bucket",
        "tickprop_event_lag_seconds_bucket",
        "max by (partition) (tickprop_consumer_lag",
        "tickprop_checkpoints_total",
        "tickprop_checkpoint_failures_total",
        "time() - (tickprop_last_checkpoint_timestamp_seconds",
        "tickprop_checkpoint_seconds_bucket",
        "tickprop_refused_updates_total",
        "tickprop_assigned_partitions",
        "tickprop_symbols",
        "tickprop_symbols_beating_baselines",
        "tickprop_symbol_kappa_temporal_bucket",
        "tickprop_drift_alarms_total",
    ],
)
def test_dashboard_shows(dashboard: dict[str, Any], needed: str) -> None:
    assert any(needed in expr for expr in expressions(dashboard)), needed


def test_worker_variable_filters_every_tickprop_query(dashboard: dict[str, Any]) -> None:
    variable, horizon = dashboard["templating"]["list"]
    assert variable["name"] == "instance" and variable["includeAll"]
    for expr in expressions(dashboard):
        assert 'instance=~"$instance"' in expr, expr


def test_horizon_variable_splits_every_model_quality_query(dashboard: dict[str, Any]) -> None:
    horizon = dashboard["templating"]["list"][1]
    assert horizon["name"] == "horizon" and horizon["includeAll"] and horizon["multi"]
    assert "label_values(tickprop_prequential_accuracy" in horizon["query"]["query"]
    quality = [e for e in expressions(dashboard) if "tickprop_prequential" in e]
    assert len(quality) == 3
    for expr in quality:
        assert expr.count('horizon=~"$horizon"') == expr.count("tickprop_prequential"), expr
