import json
import os

import pytest
import redis

from service.settings import ConfigError, Settings, load_settings, redact_url

# Explicit learning values, so these tests do not depend on model.learner's defaults.
LEARN = {"window": 16, "horizons": "1", "hidden": "32", "learning_rate": 0.05, "seed": 7}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TICKPROP_"):
            monkeypatch.delenv(name)


def test_design_names_and_defaults():
    s = Settings(**LEARN)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    topics = (s.ticks_topic, s.predictions_topic, s.dlq_topic)
    assert topics == ("ticks", "predictions", "ticks.dlq")
    assert s.group_id == "tickprop"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9108)
    assert s.topic_partitions == 6 and s.replication_factor == 1
    assert s.max_message_bytes == 65536


def test_learning_defaults_come_from_learner_config():
    learner = pytest.importorskip("model.learner")
    default = learner.LearnerConfig()
    s = Settings()
    assert s.window == default.window
    assert s.horizons == default.horizons == (1, 5, 20)
    assert s.hidden == tuple(default.hidden)
    assert s.learning_rate == default.learning_rate
    assert s.seed == default.seed
    assert s.learner_config() == default


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("TICKPROP_WINDOW", "24")
    monkeypatch.setenv("TICKPROP_HIDDEN", "32,16")
    monkeypatch.setenv("TICKPROP_KAFKA_BOOTSTRAP_SERVERS", "a:1,b:2")
    monkeypatch.setenv("TICKPROP_LOG_LEVEL", "debug")
    monkeypatch.setenv("TICKPROP_HORIZONS", "20, 1,5")
    s = Settings(learning_rate=0.1, seed=1)
    assert s.horizons == (20, 1, 5)
    assert s.learner_config().horizons == (20, 1, 5)
    assert s.window == 24
    assert s.hidden == (32, 16)
    assert s.bootstrap_servers() == ["a:1", "b:2"]
    assert s.log_level == "DEBUG"


def test_settings_are_frozen():
    s = Settings(**LEARN)
    with pytest.raises(ValueError):
        s.window = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("TICKPROP_WINDOW", "abc"),
        ("TICKPROP_WINDOW", "1"),
        ("TICKPROP_HORIZON", "0"),
        ("TICKPROP_HIDDEN", "32,,16"),
        ("TICKPROP_HIDDEN", "0"),
        ("TICKPROP_LEARNING_RATE", "nan"),
        ("TICKPROP_LEARNING_RATE", "-1"),
        ("TICKPROP_METRICS_PORT", "70000"),
        ("TICKPROP_KAFKA_BOOTSTRAP_SERVERS", "localhost"),
        ("TICKPROP_TICKS_TOPIC", "bad topic"),
        ("TICKPROP_REDIS_URL", "http://x"),
        ("TICKPROP_SECURITY_PROTOCOL", "TLS"),
        ("TICKPROP_SSL_CAFILE", "/no/such/file.pem"),
        ("TICKPROP_MAX_SYMBOLS", "0"),
        ("TICKPROP_CHECKPOINT_EVERY_SECONDS", "0"),
    ],
)
def test_bad_value_stops_startup_naming_the_variable(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=env):
        load_settings(**{k: v for k, v in LEARN.items() if f"TICKPROP_{k.upper()}" != env})


def test_rules_across_fields_name_the_variables(monkeypatch):
    monkeypatch.setenv("TICKPROP_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="TICKPROP_SASL_MECHANISM"):
        load_settings(**LEARN)
    monkeypatch.setenv("TICKPROP_SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(ConfigError, match="TICKPROP_SASL_PASSWORD"):
        load_settings(**LEARN)
    monkeypatch.delenv("TICKPROP_SECURITY_PROTOCOL")
    monkeypatch.setenv("TICKPROP_DLQ_TOPIC", "ticks")
    with pytest.raises(ConfigError, match="TICKPROP_DLQ_TOPIC"):
        load_settings(**LEARN)


def test_kafka_security_settings_reach_the_client_kwargs(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = Settings(
        **LEARN,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="s3cret",
        ssl_cafile=ca,
    )
    kw = s.kafka_client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kw["sasl_plain_username"] == "svc"
    assert kw["sasl_plain_password"] == "s3cret"
    assert kw["ssl_cafile"] == str(ca)
    consumer = s.kafka_consumer_kwargs()
    assert consumer["enable_auto_commit"] is False
    assert consumer["group_id"] == "tickprop"
    assert consumer["isolation_level"] == "read_committed"  # never learn from aborted ticks
    assert Settings(**LEARN).kafka_client_kwargs() == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "security_protocol": "PLAINTEXT",
    }


def test_redis_password_and_tls_reach_a_real_client_object(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = Settings(**LEARN, redis_password="pw", redis_ssl=True, redis_ssl_cafile=ca)
    kw = s.redis_client_kwargs()
    assert kw["password"] == "pw" and kw["ssl_ca_certs"] == str(ca)
    client = redis.Redis.from_url(s.redis_url, **kw)  # builds the pool; connects lazily
    conn_kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert conn_kwargs["password"] == "pw"
    default = Settings(**LEARN)
    plain = redis.Redis.from_url(default.redis_url, **default.redis_client_kwargs())
    assert plain.connection_pool.connection_class is redis.Connection


def test_redacted_dump_hides_every_secret():
    s = Settings(
        **LEARN,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password="kafka-secret",
        redis_url="redis://user:url-secret@redis.example:6380/2",
        redis_password="redis-secret",
    )
    text = json.dumps(s.redacted_dump())
    for secret in ("kafka-secret", "url-secret", "redis-secret"):
        assert secret not in text
        assert secret not in repr(s) and secret not in str(s)
    dump = s.redacted_dump()
    assert dump["redis_url"] == "redis://user:**********@redis.example:6380/2"
    assert dump["sasl_username"] == "svc"
    assert dump["hidden"] == [32]


def test_password_values_are_not_echoed_in_errors(monkeypatch):
    monkeypatch.setenv("TICKPROP_REDIS_PASSWORD", "")  # empty is accepted, not echoed
    monkeypatch.setenv("TICKPROP_WINDOW", "x")
    with pytest.raises(ConfigError) as info:
        load_settings(horizons="1", hidden="8", learning_rate=0.1, seed=1)
    assert "TICKPROP_WINDOW" in str(info.value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", "1 to 1000"),
        ("1001", "1 to 1000"),
        ("1,2,3,4,5,6,7,8,9", "between 1 and 8"),
        ("5,5", "distinct"),
        ("1;5", "tick counts"),
        ("", "tick counts"),
    ],
)
def test_bad_horizons_stop_start_up_naming_the_variable(monkeypatch, value, why):
    monkeypatch.setenv("TICKPROP_HORIZONS", value)
    with pytest.raises(ConfigError, match="TICKPROP_HORIZONS") as info:
        load_settings()
    assert why in str(info.value)


def test_the_old_single_horizon_setting_is_refused_with_what_to_use_instead(monkeypatch):
    monkeypatch.setenv("TICKPROP_HORIZON", "5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "TICKPROP_HORIZON=5 is no longer read" in message
    assert 'TICKPROP_HORIZONS="5"' in message


def test_redact_url_leaves_passwordless_urls_alone():
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("rediss://:pw@h:1/0") == "rediss://:**********@h:1/0"


def test_docs_settings_table_is_current():
    pytest.importorskip("model.learner")
    from pathlib import Path

    from service.settings import settings_table

    doc = (Path(__file__).parents[2] / "docs" / "settings.md").read_text()
    assert settings_table() in doc, "regenerate docs/settings.md's table from settings_table()"
