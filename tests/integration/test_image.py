"""The real Dockerfile, built with buildah and run: the worker image and the compose services.

The image is built once per session (on a stand-in for python:3.11-slim-bookworm made
with debootstrap and cached across sessions, see image_kit). Its containers share the
host's network, so they reach the session's broker and Redis on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import backtest_symbols, check_predictions, http_status, metric, on_broker
from harness import valid_positions as valid_indexes
from image_kit import (
    CACHE,
    DISTRIBUTIONS,
    Base,
    ContainerProcess,
    ImageConfig,
    Session,
    missing,
    stand_in_base,
)
from packaging.markers import Marker
from worker_kit import (
    ROOT,
    Names,
    mixed_ticks,
    produce,
    stored_offsets,
    stored_symbols,
    tick_records,
    wait_until,
)

from service.tools.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from service.topics import create_topics

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
LOCK = ROOT / "deploy" / "requirements.lock"
# Run in the image: prints any compiler, pip cache, build leftover or test file of ours.
LEFTOVERS = """
import importlib.metadata as m, os, shutil
found = [t for t in ("gcc", "cc", "c++", "g++", "make") if shutil.which(t)]
found += [p for p in ("/root/.cache", "/nonexistent/.cache", "/tmp/wheels", "/src")
          if os.path.exists(p)]
found += [str(f) for f in m.files("tickprop") if str(f).startswith("tests")]
print("\\n".join(found))
"""
CODECS = """
from kafka import codec
for name in ("gzip", "snappy", "lz4", "zstd"):
    data = b"tick " * 1000
    encoded = getattr(codec, name + "_encode")(data)
    assert getattr(codec, name + "_decode")(encoded) == data, name
"""


class Built:
    """The session's buildah storage, the image built in it and one container of it."""

    def __init__(self, session: Session, base: Base, image: str) -> None:
        self.session, self.base, self.image = session, base, image
        self.config: ImageConfig = session.config(image)
        # One working container, shared by the tests: with the vfs driver a container is
        # a full copy of its image's files (seconds and hundreds of MB each).
        self.container = session.container(image)
        self.size = session.size(self.container)


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    started = time.monotonic()
    base = stand_in_base()
    cached = time.monotonic()
    with Session.for_this_process(CACHE) as session:
        image = session.build(session.load_base(base))
        print(f"\nimage: base ready in {cached - started:.0f} s, "
              f"loaded and built in {time.monotonic() - cached:.0f} s")  # fmt: skip
        yield Built(session, base, image)


def host_env() -> dict[str, str]:
    return dict(os.environ)


# ---------------------------------------------------------------- the worker image
def test_image_worker_publishes_matches_the_backtest_and_stops_on_sigterm(
    built: Built, broker: str, redis_url: str, names: Names, tmp_path: Path
) -> None:
    """The image's own command, as its own non-root user, over real ticks."""
    config = built.config
    uid, _, gid = config.user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), config.user
    produced = produce(broker, names.ticks, tick_records(mixed_ticks(n_stocks=600, n_es=900)))
    port = free_port()
    env = {
        **names.env(),
        "TICKPROP_KAFKA_BOOTSTRAP_SERVERS": broker,
        "TICKPROP_REDIS_URL": redis_url,
        "TICKPROP_METRICS_PORT": str(port),
        # No checkpoint is due before SIGTERM: what Redis holds at the end is the final one.
        "TICKPROP_CHECKPOINT_EVERY_TICKS": "10000000",
        "TICKPROP_CHECKPOINT_EVERY_SECONDS": "3600",
    }
    container = built.container
    argv = built.session.command(container, config.entrypoint + config.cmd, env)
    worker = ContainerProcess(argv, tmp_path / "worker.log")
    try:
        wait_until(lambda: http_status(port, "/readyz") == 200, 90, "/readyz 200")
        ready = time.monotonic() - worker.started
        status = Path(f"/proc/{worker.main_pid()}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s", status, re.M), status  # not root
        wait_until(
            lambda: (metric(port, "tickprop_predictions_total") or 0) > 0, 60, "a prediction"
        )
        first = time.monotonic() - worker.started
        expected = len(valid_indexes(produced))
        wait_until(
            lambda: metric(port, "tickprop_predictions_total") == expected,
            120,
            f"{expected} predictions",
        )
        assert stored_offsets(redis_url, names.group) == {}, "a checkpoint before SIGTERM"
        health = built.session.exec(container, config.healthcheck, env)
        assert health.returncode == 0, health.stderr
        nobody = {**env, "TICKPROP_METRICS_PORT": str(free_port())}
        assert built.session.exec(container, config.healthcheck, nobody).returncode != 0
        assert worker.terminate(timeout=60) == 0, worker.tail()
    finally:
        if worker.process.poll() is None:
            worker.kill()
    print(f"\nimage worker: /readyz 200 {ready:.1f} s, first prediction {first:.1f} s after start")
    assert worker.events("stopped")[-1]["final_checkpoints_ok"] is True, worker.tail()
    assert stored_offsets(redis_url, names.group) == produced.end_offsets()
    check_predictions(broker, names.predictions, names.ticks, produced)
    assert stored_symbols(redis_url, names.group) == backtest_symbols(
        produced, tmp_path, host_env()
    )


def test_image_carries_the_locked_runtime_and_no_build_tools(built: Built) -> None:
    """Compared with its base, the image adds tickprop and the lock's packages, nothing else."""
    done = built.session.exec(built.container, ["python3", "-c", DISTRIBUTIONS])
    assert done.returncode == 0, done.stderr
    added = {(n, v) for n, v in json.loads(done.stdout)["distributions"]} - built.base.distributions
    version = built.base.python
    python = {"python_full_version": version, "python_version": version.rsplit(".", 1)[0]}
    locked = set()
    for line in re.sub(r"\\\n", " ", LOCK.read_text()).splitlines():
        if line.strip() and not line.startswith("#"):
            pin, _, marker = line.split("--hash")[0].partition(";")
            if not marker.strip() or Marker(marker).evaluate(python):
                name, _, version = pin.strip().partition("==")
                locked.add((name, version))
    tickprop = {(n, v) for n, v in added if n == "tickprop"}
    assert added - tickprop == locked and len(tickprop) == 1
    probe = built.session.exec(built.container, ["python3", "-c", LEFTOVERS])
    assert probe.returncode == 0 and probe.stdout.strip() == "", probe.stdout + probe.stderr
    # Every compression codec Kafka may use decodes in the image (native wheels load here).
    codecs = built.session.exec(built.container, ["python3", "-c", CODECS])
    assert codecs.returncode == 0, codecs.stderr
    print(f"\nimage: {built.size / 1e6:.0f} MB, of which base {built.base.size / 1e6:.0f} MB")


# ---------------------------------------------------------------- the compose services
def interpolate(value: Any) -> str:
    """Compose's ${VAR:-default} with no variable set (the laptop defaults), and $$ -> $."""
    text = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))
    return text.replace("$$", "$")


def tickprop_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services `docker compose up` starts from the image the Dockerfile builds."""
    images = {
        s["image"]
        for s in services.values()
        if (s.get("build") or {}).get("dockerfile") == "Dockerfile"
    }
    return {
        name: s
        for name, s in services.items()
        if s.get("image") in images and not s.get("profiles")
    }


def point_at(env: dict[str, str], hosts: dict[str, str]) -> dict[str, str]:
    """env with each compose `host:port` replaced by its local server's address."""
    out = {}
    for key, value in env.items():
        for host, local in hosts.items():
            value = value.replace(host, local)
        assert not re.search(r"\b(kafka|redis):\d", value), f"compose host not mapped: {value}"
        out[key] = value
    return out


def start_service(
    built: Built, name: str, service: dict[str, Any], hosts: dict[str, str], log_dir: Path
) -> tuple[ContainerProcess, int]:
    """Run one compose service in the image, read-only as compose says; its metrics port.

    Its command, user and environment come from the YAML, host names pointed at local
    servers; TICKPROP_METRICS_PORT gets a free port (on the host network all replicas
    share one port space, where compose gives each container its own).
    """
    assert service.get("read_only") is True, f"{name} is not read-only in compose"
    env = point_at({k: interpolate(v) for k, v in service["environment"].items()}, hosts)
    port = free_port()
    env["TICKPROP_METRICS_PORT"] = str(port)
    volumes = []
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        volumes.append(((COMPOSE.parent / source).resolve(), target))
    argv = built.session.read_only_command(
        built.container,
        service.get("user", built.config.user),
        (service.get("entrypoint") or built.config.entrypoint) + service["command"],
        {**built.config.env, **env},
        volumes,
    )
    return ContainerProcess(argv, log_dir / f"{name}.log"), port


def test_compose_services_run_in_the_image_read_only(built: Built, tmp_path: Path) -> None:
    """Each tickprop service of deploy/docker-compose.yml with its own command and environment,
    on a read-only root filesystem; the compose file's tmpfs on /tmp is left out, which
    shows the services need no writable path at all."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    ours = tickprop_services(services)
    workers = {n: s for n, s in ours.items() if s.get("command", built.config.cmd)[0] == "worker"}
    producers = {n: s for n, s in ours.items() if n not in workers}
    assert workers and producers, sorted(ours)
    names = next(iter(workers.values()))["environment"]
    ticks, group = names["TICKPROP_TICKS_TOPIC"], names["TICKPROP_GROUP_ID"]
    password = interpolate(services["redis"]["environment"]["REDIS_PASSWORD"])
    init = " ".join(services["kafka-init"]["command"])
    topics = re.search(r"for topic in ([^;]+);", init).group(1).split()  # type: ignore[union-attr]
    partitions = int(re.search(r"--partitions (\d+)", init).group(1))  # type: ignore[union-attr]
    with EmbeddedBroker() as broker, EmbeddedRedis(password=password) as redis_server:
        create_topics(broker.bootstrap, topics, partitions=partitions)
        hosts = {"kafka:9092": broker.bootstrap, "redis:6379": f"127.0.0.1:{redis_server.port}"}
        running: dict[str, ContainerProcess] = {}
        ports: dict[str, int] = {}

        def start(name: str, service: dict[str, Any]) -> None:
            running[name], ports[name] = start_service(built, name, service, hosts, tmp_path)

        worker_names = []
        try:
            for name, service in workers.items():
                for replica in range(int((service.get("deploy") or {}).get("replicas", 1))):
                    worker_names.append(f"{name}-{replica + 1}")
                    start(worker_names[-1], service)
            for name in worker_names:
                wait_until(lambda: http_status(ports[name], "/readyz") == 200, 90, f"{name} ready")
            for name, service in producers.items():
                start(name, service)
            wait_until(
                lambda: (
                    sum(
                        metric(ports[n], "tickprop_ticks_total", 'outcome="processed"') or 0
                        for n in worker_names
                    )
                    >= 2500
                ),
                120,
                "2,500 ticks from the producers processed",
            )
            for name in producers:  # their files take minutes at the compose file's rates
                assert running[name].terminate(timeout=60) == 0, running[name].tail()
                assert "produced" in running[name].tail(), running[name].tail()
            held = on_broker(broker.bootstrap, ticks)
            wait_until(
                lambda: stored_offsets(redis_server.url, group) == held.end_offsets(),
                120,
                "every tick checkpointed",
            )
            for name in worker_names:
                assert running[name].terminate(timeout=60) == 0, running[name].tail()
        finally:
            for process in running.values():
                if process.process.poll() is None:
                    process.kill()
        symbols = {json.loads(value)["symbol"] for _, value, _ in held.records}
        assert "ES" in symbols and len(symbols) > 1, symbols  # both producers' files
        check_predictions(broker.bootstrap, names["TICKPROP_PREDICTIONS_TOPIC"], ticks, held)
        assert stored_symbols(redis_server.url, group) == backtest_symbols(
            held, tmp_path, host_env()
        )
