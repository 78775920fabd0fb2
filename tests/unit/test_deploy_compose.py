"""deploy/docker-compose.yml: valid against the Compose Specification and wired as documented.

The schema is the compose-spec JSON schema vendored inside check-jsonschema
(`--builtin-schema vendor.compose-spec`); no Docker engine runs here, so the
stack itself is never started by the suite.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dev_tools import tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec_schema() -> None:
    run = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("    deploy:\n", "    deploy_typo:\n", 1))
    run = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "deploy_typo" in run.stdout


def test_kafka_is_the_official_image_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) == set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert advertised["PLAINTEXT"] == "kafka:9092"
    # KRaft's cluster id is 16 bytes in unpadded base64url.
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def test_topics_get_the_partition_count_the_workers_assume(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    partitions = compose["x-tickprop-env"]["TICKPROP_TOPIC_PARTITIONS"]
    assert f"--partitions {partitions}" in script
    for topic in ("ticks", "predictions", "ticks.dlq"):
        assert topic in script


def test_two_worker_replicas_share_one_group_and_redis_needs_a_password(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker and "ports" not in worker  # would break replicas
    env = worker["environment"]
    assert env["TICKPROP_GROUP_ID"] == "tickprop"
    assert env["TICKPROP_REDIS_PASSWORD"].startswith("${REDIS_PASSWORD")
    assert "@" not in env["TICKPROP_REDIS_URL"]  # the password is not in the URL
    redis = compose["services"]["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert redis["environment"]["REDIS_PASSWORD"] == env["TICKPROP_REDIS_PASSWORD"]
    assert worker["read_only"] is True and worker["cap_drop"] == ["ALL"]


def test_producers_replay_files_that_exist_in_data(compose: dict[str, Any]) -> None:
    producers = [
        s for s in compose["services"].values() if s.get("command", [None])[0] == "produce"
    ]
    assert producers
    for producer in producers:
        assert "../data:/data:ro" in producer["volumes"]
        csv = producer["command"][producer["command"].index("--csv") + 1]
        assert (ROOT / "data" / Path(csv).name).is_file(), csv


def test_prometheus_and_grafana_mount_the_files_in_this_repository(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), (name, source)
    prometheus_args = " ".join(services["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus_args
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tickprop")
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    assert job["dns_sd_configs"][0]["port"] == int(
        compose["x-tickprop-env"]["TICKPROP_METRICS_PORT"]
    )


def test_every_tickprop_setting_in_compose_is_a_real_setting(compose: dict[str, Any]) -> None:
    from service.settings import Settings

    for name in compose["x-tickprop-env"]:
        assert name.removeprefix("TICKPROP_").lower() in Settings.model_fields, name
