"""deploy/k8s: every manifest valid against its schema, and the properties the deploy relies on.

Built-in kinds are checked by kubernetes-validate (schemas shipped in its
wheel, strict: unknown fields fail); KEDA's ScaledObject by a vendored strict
JSON schema (deploy/k8s/schemas/README.md says where it comes from).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dev_tools import tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BUILTIN = ["configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / name).read_text())


def validate_builtin(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True
    )


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_manifest_is_valid_and_strict(name: str) -> None:
    run = validate_builtin(K8S / name)
    assert run.returncode == 0 and "passed" in run.stdout, run.stdout + run.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "deployment.yaml"
    bad.write_text(
        (K8S / "deployment.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFS")
    )
    assert validate_builtin(bad).returncode != 0


@pytest.fixture(scope="module")
def keda_schema() -> dict[str, Any]:
    return json.loads((K8S / "schemas" / "keda.sh_v1alpha1_scaledobject.json").read_text())


def test_scaled_object_is_valid_against_the_keda_schema(keda_schema: dict[str, Any]) -> None:
    jsonschema.validate(load("scaledobject.yaml"), keda_schema)


def test_keda_schema_rejects_a_misspelt_field(keda_schema: dict[str, Any]) -> None:
    doc = load("scaledobject.yaml")
    doc["spec"]["maxReplicas"] = doc["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(doc, keda_schema)


def test_keda_scales_on_the_workers_group_and_topic_up_to_the_partition_count() -> None:
    config = load("configmap.yaml")["data"]
    spec = load("scaledobject.yaml")["spec"]
    assert spec["scaleTargetRef"]["name"] == load("deployment.yaml")["metadata"]["name"]
    assert spec["maxReplicaCount"] == int(config["TICKPROP_TOPIC_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config["TICKPROP_GROUP_ID"]
    assert meta["topic"] == config["TICKPROP_TICKS_TOPIC"]
    assert meta["bootstrapServers"] == config["TICKPROP_KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0


def test_worker_pod_is_probed_bounded_and_unprivileged() -> None:
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = int(load("configmap.yaml")["data"]["TICKPROP_METRICS_PORT"])
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert sources == {
        load("configmap.yaml")["metadata"]["name"],
        load("secret.yaml")["metadata"]["name"],
    }


def test_service_and_pdb_select_the_worker_pods() -> None:
    labels = load("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        load("service.yaml")["spec"]["selector"],
        load("pdb.yaml")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert load("service.yaml")["spec"]["ports"][0]["targetPort"] == "metrics"


def test_configmap_and_secret_hold_real_settings_and_no_real_secret() -> None:
    from service.settings import Settings

    config = load("configmap.yaml")["data"]
    secret = load("secret.yaml")["stringData"]
    for name in [*config, *secret]:
        assert name.startswith("TICKPROP_")
        assert name.removeprefix("TICKPROP_").lower() in Settings.model_fields, name
    assert set(secret.values()) == {"REPLACE-ME"}
    assert not any("password" in name.lower() for name in config)
    Settings(**{k.removeprefix("TICKPROP_").lower(): v for k, v in {**config, **secret}.items()})


def test_kustomization_lists_every_manifest() -> None:
    resources = load("kustomization.yaml")["resources"]
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(resources) == manifests
