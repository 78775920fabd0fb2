"""The embedded servers and fixtures themselves: they answer, restart, pause and stop by PID."""

import os

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.tools.embedded import EmbeddedRedis, create_topics, free_port


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_broker_fixture_round_trips_a_record(broker, names):
    create_topics(broker, [names.ticks], partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker)
    producer.send(names.ticks, key=b"ES", value=b"hello").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker)
    consumer.assign([TopicPartition(names.ticks, 0)])
    consumer.seek_to_beginning()
    batches = consumer.poll(timeout_ms=5000)
    consumer.close()
    records = [(r.key, r.value) for batch in batches.values() for r in batch]
    assert records == [(b"ES", b"hello")]


def test_create_topics_is_idempotent(broker, names):
    wanted = [names.ticks, names.predictions, names.dlq]
    assert create_topics(broker, wanted, partitions=3) == dict.fromkeys(wanted, 3)
    assert create_topics(broker, wanted, partitions=6) == dict.fromkeys(wanted, 3)
    admin = KafkaAdminClient(bootstrap_servers=broker)
    assert set(wanted) <= set(admin.list_topics())
    admin.close()


def test_redis_fixture_answers(redis_url):
    assert redis.Redis.from_url(redis_url).ping()


def test_redis_restart_on_the_same_port_keeps_data_only_when_persisting():
    with EmbeddedRedis(persist=True) as server:
        port, first_pid = server.port, server.pid
        redis.Redis.from_url(server.url).set("k", "v")
        server.stop()
        assert not pid_alive(first_pid)
        server.start()
        assert server.port == port and server.pid != first_pid
        assert redis.Redis.from_url(server.url).get("k") == b"v"
    with EmbeddedRedis(persist=False) as server:
        redis.Redis.from_url(server.url).set("k", "v")
        server.restart()
        assert redis.Redis.from_url(server.url).get("k") is None


def test_paused_redis_answers_nothing_until_resumed():
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        assert client.ping()


def test_redis_password_is_required_when_set():
    with EmbeddedRedis(password="s3cret") as server:
        assert redis.Redis.from_url(server.url).ping()
        # AuthenticationError is a ConnectionError to redis-py: no retries, no 4 s back-off.
        anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()


def test_close_stops_the_process_and_frees_the_port():
    server = EmbeddedRedis().start()
    pid, workdir = server.pid, server.workdir
    server.close()
    assert not pid_alive(pid)
    assert not workdir.exists()


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
