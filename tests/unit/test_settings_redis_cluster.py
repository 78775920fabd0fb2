"""TICKPROP_REDIS_CLUSTER: which URLs it takes, and the TLS options the cluster client gets."""

import pytest

from service.settings import ConfigError, load_settings


@pytest.mark.parametrize("url", ["redis://h:6379/1", "unix:///tmp/redis.sock"])
def test_cluster_refuses_a_url_a_cluster_cannot_serve_naming_the_variables(monkeypatch, url):
    monkeypatch.setenv("TICKPROP_REDIS_CLUSTER", "true")
    monkeypatch.setenv("TICKPROP_REDIS_URL", url)
    with pytest.raises(ConfigError, match="TICKPROP_REDIS_CLUSTER=true needs .*TICKPROP_REDIS_URL"):
        load_settings()


def test_cluster_with_tls_asks_the_cluster_client_for_ssl_not_a_connection_class(monkeypatch):
    monkeypatch.setenv("TICKPROP_REDIS_CLUSTER", "true")
    monkeypatch.setenv("TICKPROP_REDIS_SSL", "true")
    monkeypatch.setenv("TICKPROP_REDIS_URL", "redis://h:6379/0")
    kwargs = load_settings().redis_client_kwargs()
    assert kwargs["ssl"] is True and "connection_class" not in kwargs
    assert kwargs["ssl_cert_reqs"] == "required"
