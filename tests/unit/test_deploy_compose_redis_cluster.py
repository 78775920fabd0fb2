"""deploy/docker-compose.redis-cluster.yml: a valid Compose override that moves the workers'
state to a 3-master, 3-replica Redis Cluster (no Docker engine runs here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from dev_tools import tool

from service.settings import Settings

OVERRIDE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.redis-cluster.yml"


def test_override_matches_the_compose_spec_schema() -> None:
    run = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(OVERRIDE)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_six_cluster_nodes_formed_with_one_replica_each_and_workers_in_cluster_mode() -> None:
    services = yaml.safe_load(OVERRIDE.read_text())["services"]
    nodes = [f"redis-{n}" for n in range(1, 7)]
    for name in nodes:
        command = " ".join(services[name]["command"])
        assert "--cluster-enabled yes" in command and "--masterauth" in command
        assert "--maxmemory-policy noeviction" in command
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == set(nodes)
    assert "--cluster-replicas 1" in init["command"][-1]
    worker = services["worker"]
    assert worker["depends_on"]["redis-cluster-init"]["condition"] == (
        "service_completed_successfully"
    )
    env = {k.removeprefix("TICKPROP_").lower(): v for k, v in worker["environment"].items()}
    settings = Settings(**env)  # real settings, validated (a URL a Cluster can serve)
    assert settings.redis_cluster and settings.redis_url.startswith("redis://redis-1:")
