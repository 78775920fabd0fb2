"""deploy/grafana's dashboard read by Grafana's own model (grafana-foundation-sdk).

The SDK's classes are generated from the schema of the Grafana the compose file
runs (11.2). Its decoder ignores fields it does not know instead of failing, so
the check is a round trip: every field of our dashboard must come back out of
Dashboard.from_json -> to_json unchanged, each panel's options and field config
decoded by its panel plugin's model and each query by the Prometheus one. A
misspelt or misplaced field (`gridpos`, `legend` outside `options`, ...) would
be dropped by the model and fail here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog import runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tickprop.json"
# Fields the 11.2 schema does not model but Grafana itself writes and reads:
# `definition` is the query text Grafana's variable editor shows for a query variable.
WRITTEN_BY_GRAFANA = {"templating.list[].definition"}


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="module")
def model(source: dict[str, Any]) -> Dashboard:
    register_default_plugins()  # panel options and queries decode with their plugins' models
    return Dashboard.from_json(source)


def lost_fields(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Paths of values in `ours` missing from or different in `theirs` (defaults added are fine)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            lost
            for key, value in ours.items()
            for lost in (
                lost_fields(value, theirs[key], f"{path}.{key}".lstrip("."))
                if key in theirs
                else [f"{path}.{key}".lstrip(".")]
            )
        ]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [
            lost
            for a, b in zip(ours, theirs, strict=True)
            for lost in lost_fields(a, b, f"{path}[]")
        ]
    return [] if ours == theirs else [f"{path} ({ours!r} became {theirs!r})"]


def test_every_field_of_the_dashboard_survives_grafanas_model(
    source: dict[str, Any], model: Dashboard
) -> None:
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    lost = sorted(set(lost_fields(source, again)) - WRITTEN_BY_GRAFANA)
    assert not lost, (
        f"fields Grafana 11.2's dashboard model does not know or reads differently: {lost}"
    )


def test_panels_are_plugins_grafana_ships_and_queries_are_prometheus_queries(
    model: Dashboard,
) -> None:
    panels = model.panels or []
    graphs = [p for p in panels if isinstance(p, Panel)]
    assert graphs and len(graphs) + sum(isinstance(p, RowPanel) for p in panels) == len(panels)
    for panel in graphs:
        assert runtime.panelcfg_config(panel.type_val) is not None, panel.type_val
        assert panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), (panel.title, type(target))
            assert target.expr, panel.title


def test_model_reads_the_provisioned_datasource_and_the_schema_version(
    source: dict[str, Any], model: Dashboard
) -> None:
    provisioned = yaml.safe_load(
        (
            ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
        ).read_text()
    )
    (datasource,) = provisioned["datasources"]
    assert model.schema_version == source["schemaVersion"]
    for panel in model.panels or []:
        if isinstance(panel, Panel):
            assert panel.datasource is not None and panel.datasource.uid == datasource["uid"]
