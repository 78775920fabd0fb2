"""Security pass, the parts a unit test can prove: code, dependencies and settings.

- no pickle, marshal, eval/exec, shell or unsafe YAML anywhere in model/ and service/
  (state comes from Redis and records from Kafka: whoever writes there must not be able
  to run code in the worker);
- every dependency in pyproject.toml has an upper bound;
- TLS and SASL settings reach the Redis and Kafka client arguments;
- secrets never appear in the settings dump, repr or the worker's start-up log line;
- the metrics server binds the configured address.
"""

from __future__ import annotations

import ast
import json
import logging
import tomllib
from pathlib import Path

import pytest
import redis
from packaging.requirements import Requirement

from service import logs
from service.metrics import Metrics, serve
from service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("model/**/*.py"), *ROOT.glob("service/**/*.py")])
LEARN = {"window": 16, "horizons": "1", "hidden": "32", "learning_rate": 0.05, "seed": 7}

FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _findings(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in FORBIDDEN_CALLS:
            found.append(f"{where}: calls {name}")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{where}: {name} (use yaml.safe_load)")
        for kw in node.keywords:
            truthy = not (isinstance(kw.value, ast.Constant) and not kw.value.value)
            if kw.arg == "shell" and truthy:
                found.append(f"{where}: {name}(shell=...)")
            if kw.arg == "allow_pickle" and truthy:
                found.append(f"{where}: {name}(allow_pickle=...)")
    return found


def test_sources_are_scanned() -> None:
    assert len(SOURCES) >= 20
    assert ROOT / "service" / "worker.py" in SOURCES


def test_no_pickle_eval_exec_or_shell_in_model_and_service() -> None:
    found = [f for path in SOURCES for f in _findings(path)]
    assert found == []


def test_the_scanner_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nfrom marshal import loads\nimport subprocess, os, numpy as np\n"
        "eval('1')\nsubprocess.run('ls', shell=True)\nos.system('ls')\n"
        "np.load('f', allow_pickle=True)\n"
    )
    assert len(_findings(bad, root=tmp_path)) == 6


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return reqs


def test_every_dependency_has_an_upper_bound() -> None:
    unbounded = []
    for text in _requirements():
        req = Requirement(text)
        if req.name == "tickprop":  # the project's own extras
            continue
        if not any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier):
            unbounded.append(text)
    assert unbounded == []
    assert len(_requirements()) >= 10


def test_redis_tls_and_password_settings_reach_the_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    s = Settings(
        **LEARN,
        redis_url="rediss://redis.example:6380/1",
        redis_username="svc",
        redis_password="pw-1",
        redis_ssl_cafile=ca,
    )
    kwargs = s.redis_client_kwargs()
    assert kwargs["username"] == "svc" and kwargs["password"] == "pw-1"
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_ca_certs"] == str(ca)
    pool = redis.Redis.from_url(s.redis_url, **kwargs).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)


def test_kafka_ssl_and_sasl_settings_reach_the_consumer(tmp_path: Path) -> None:
    pem = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in pem.values():
        path.write_text("x")
    s = Settings(
        **LEARN,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="pw-2",
        ssl_cafile=pem["ca"],
        ssl_certfile=pem["cert"],
        ssl_keyfile=pem["key"],
    )
    consumer = s.kafka_consumer_kwargs()
    assert consumer["security_protocol"] == "SASL_SSL"
    assert consumer["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (consumer["sasl_plain_username"], consumer["sasl_plain_password"]) == ("svc", "pw-2")
    assert consumer["ssl_certfile"] == str(pem["cert"]) and consumer["ssl_keyfile"] == str(
        pem["key"]
    )
    plain = Settings(**LEARN, security_protocol="SSL", ssl_cafile=pem["ca"])
    assert "sasl_plain_password" not in plain.kafka_client_kwargs()


def test_startup_log_line_never_contains_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {
        "TICKPROP_SASL_PASSWORD": "sasl-Secret-1",
        "TICKPROP_REDIS_PASSWORD": "redis-Secret-2",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TICKPROP_REDIS_URL", "redis://u:url-Secret-3@127.0.0.1:1/0")
    monkeypatch.setenv("TICKPROP_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("TICKPROP_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("TICKPROP_SASL_USERNAME", "svc")
    settings = load_settings()
    logs.configure("INFO")
    try:
        # The very line service.main logs at start-up.
        logging.getLogger("tickprop.main").info(
            "starting", extra={"event": "starting", "settings": settings.redacted_dump()}
        )
        logging.getLogger("tickprop.main").info("settings %s / %r", settings, settings)
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    line = json.loads(err.splitlines()[0])
    assert line["settings"]["sasl_password"] == "**********"
    for secret in [*secrets.values(), "url-Secret-3"]:
        assert secret not in err


def test_metrics_server_binds_the_configured_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(**LEARN).metrics_host == "0.0.0.0"  # reachable by Prometheus in a pod
    monkeypatch.setenv("TICKPROP_METRICS_HOST", "127.0.0.1")
    settings = load_settings(**LEARN)
    server = serve(Metrics(), settings.metrics_host, 0, ready=lambda: True)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.stop()
    main_source = (ROOT / "service" / "main.py").read_text()
    assert "settings.metrics_host" in main_source  # the worker passes the setting, not a literal
