"""Build and run the project's Dockerfile with Debian's buildah: no Docker engine needed.

- `stand_in_base()`: a python base image made with debootstrap (Debian bookworm's Python
  3.11.2, pip, venv), built once per recipe and kept as an OCI archive in CACHE.
- `Session`: a buildah storage of its own (vfs driver, chroot isolation, host network)
  for one test session: it loads the base, builds the Dockerfile, runs containers and
  deletes everything but the cached base when closed.
- `ContainerProcess`: a command running in a container, its stderr (the service's JSON
  log lines) in a file, stopped the way `docker stop` does: SIGTERM to the container's
  main process. `buildah run` does not forward signals, so the main process is found
  among its children (chroot isolation shares the host's PID namespace).

Needs root, buildah and debootstrap (Debian packages); `missing()` says which is absent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_kit import ROOT, WorkerProcess

CACHE = Path(os.environ.get("TICKPROP_IMAGE_CACHE", "/var/tmp/tickprop-image-cache"))
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the stand-in for python:3.11-slim-bookworm is made of; its hash names the cached base.
BASE_RECIPE = {
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "variant": "minbase",
    "packages": ["python3", "python3-pip", "python3-venv", "passwd", "ca-certificates"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    "version": 1,  # bump when stand_in_base() changes what it does with the above
}  # fmt: skip


def missing() -> str | None:
    """Why the image tests cannot run here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "building with buildah (vfs storage, chroot isolation) needs root on Linux"
    absent = [tool for tool in ("buildah", "debootstrap", "unshare") if shutil.which(tool) is None]
    if absent:
        return (
            f"{', '.join(absent)} not installed: apt-get install buildah debootstrap "
            "(scripts/test does it when run as root)"
        )
    return None


def run(argv: Sequence[str], timeout: float = 600, **kwargs: Any) -> str:
    """Run a command, return its stdout; fail with its stderr."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )
    return done.stdout


def base_key() -> str:
    recipe = json.dumps(BASE_RECIPE, sort_keys=True).encode() + HOST_CA_BUNDLE.read_bytes()
    return hashlib.sha256(recipe).hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# Run in an image: its Python's version and the distributions it holds, as JSON.
DISTRIBUTIONS = """
import importlib.metadata as m, json, platform
print(json.dumps({"python": platform.python_version(), "distributions": sorted(
    [d.metadata["Name"].lower().replace("_", "-"), d.version] for d in m.distributions())}))
"""


@dataclass(frozen=True)
class Base:
    """The cached stand-in base: its OCI archive and what it holds."""

    archive: Path
    python: str
    distributions: set[tuple[str, str]]
    size: int  # bytes of its root filesystem


def stand_in_base() -> Base:
    """The cached base image (an OCI archive), made first if its recipe changed.

    debootstrap's minbase of bookworm plus Python; the machine's CA bundle copied in (pip
    must trust what this machine trusts to reach the index); EXTERNALLY-MANAGED removed
    and no apt lists or .debs kept, as in the official python images.
    """
    archive = CACHE / f"stand-in-python-{base_key()}.tar"
    facts = archive.with_suffix(".json")
    with locked(CACHE / "base.lock"):
        if not (archive.exists() and facts.exists()):
            make_base(archive, facts)
        archive.touch()  # in use: kept while any checkout's recipe uses it
        for old in CACHE.glob("stand-in-python-*.tar"):
            if time.time() - old.stat().st_mtime > 7 * 86400:  # another recipe's, unused for long
                old.unlink()
                old.with_suffix(".json").unlink(missing_ok=True)
    known = json.loads(facts.read_text())
    return Base(
        archive, known["python"], {(n, v) for n, v in known["distributions"]}, known["size"]
    )


def make_base(archive: Path, facts: Path) -> None:
    """debootstrap, adjust, import into buildah, save as an OCI archive plus its facts."""
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        recipe = BASE_RECIPE
        run(["debootstrap", f"--variant={recipe['variant']}",
             f"--include={','.join(recipe['packages'])}",
             recipe["suite"], str(rootfs), recipe["mirror"]])  # fmt: skip
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        for junk in ("var/cache/apt", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk)
            (rootfs / junk).mkdir()
        known = json.loads(run(["chroot", str(rootfs), "python3", "-c", DISTRIBUTIONS]))
        known["size"] = int(run(["du", "-sb", str(rootfs)]).split()[0])
        with Session(Path(tmp) / "storage") as session:
            container = session.buildah("from", "scratch").strip()
            mount = Path(session.buildah("mount", container).strip())
            run(["cp", "-a", f"{rootfs}/.", f"{mount}/"])
            session.buildah("umount", container)
            env = [arg for pair in recipe["env"] for arg in ("--env", pair)]
            session.buildah("config", *env, "--cmd", '["python3"]', container)
            session.buildah("commit", "--rm", container, "localhost/stand-in-python")
            partial = archive.with_suffix(".partial")
            session.buildah("push", "localhost/stand-in-python", f"oci-archive:{partial}")
            partial.rename(archive)
    facts.write_text(json.dumps(known))


@dataclass(frozen=True)
class ImageConfig:
    """What `docker run IMAGE` would use: entry point, command, user, environment, health check."""

    entrypoint: list[str]
    cmd: list[str]
    user: str
    env: dict[str, str]
    healthcheck: list[str]


class Session:
    """A buildah storage of its own under `root`, deleted (base archive aside) on close."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = ["--storage-driver", "vfs", "--root", str(root / "storage"),
                        "--runroot", str(root / "run")]  # fmt: skip

    @classmethod
    def for_this_process(cls, cache: Path) -> Session:
        """A session under `cache`, after deleting those of processes that died before closing."""
        for old in cache.glob("session-*"):
            if not Path("/proc", old.name.removeprefix("session-")).exists():
                cls(old).close()
        return cls(cache / f"session-{os.getpid()}")

    def buildah(self, *args: str, timeout: float = 600) -> str:
        return run(["buildah", *self.storage, *args], timeout=timeout)

    def load_base(self, base: Base, name: str = "localhost/stand-in-python:cached") -> str:
        image_id = self.buildah("pull", "--quiet", f"oci-archive:{base.archive}").split()
        self.buildah("tag", image_id[-1], name)
        return name

    def build(self, base: str, tag: str = "localhost/tickprop:test") -> str:
        """`buildah bud` of the Dockerfile on `base` (docker format: OCI has no HEALTHCHECK)."""
        self.buildah("bud", "--isolation", "chroot", "--network", "host", "--format", "docker",
                     "--layers=false", "--build-arg", f"PYTHON_IMAGE={base}", "--tag", tag,
                     str(ROOT), timeout=900)  # fmt: skip
        return tag

    def config(self, image: str) -> ImageConfig:
        docker = json.loads(self.buildah("inspect", "--type", "image", image))["Docker"]["config"]
        test = (docker.get("Healthcheck") or {}).get("Test") or []
        return ImageConfig(
            entrypoint=list(docker.get("Entrypoint") or []),
            cmd=list(docker.get("Cmd") or []),
            user=str(docker.get("User") or "0"),
            env=dict(pair.split("=", 1) for pair in docker.get("Env") or []),
            healthcheck=list(test[1:]) if test[:1] == ["CMD"] else [],
        )

    def container(self, image: str) -> str:
        """A fresh working container of `image` (deleted with the storage on close)."""
        return self.buildah("from", "--pull-never", image).strip()

    def size(self, container: str) -> int:
        """Bytes of a container's root filesystem (du of its files)."""
        root = self.buildah("mount", container).strip()
        return int(run(["du", "-sb", root]).split()[0])

    def command(
        self, container: str, argv: Sequence[str], env: dict[str, str], options: Sequence[str] = ()
    ) -> list[str]:
        """`buildah run` of argv in the container, on the host network, with extra env."""
        pairs = [arg for k, v in env.items() for arg in ("--env", f"{k}={v}")]
        return ["buildah", *self.storage, "run", "--isolation", "chroot", "--network", "host",
                *pairs, *options, container, "--", *argv]  # fmt: skip

    def exec(
        self, container: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(container, argv, env or {}), capture_output=True, text=True, timeout=120
        )

    def read_only_command(
        self,
        container: str,
        user: str,
        argv: Sequence[str],
        env: dict[str, str],
        volumes: Sequence[tuple[Path, str]] = (),
    ) -> list[str]:
        """argv run as `user` on the container's root filesystem mounted read-only.

        buildah run has no --read-only: this is what `docker run --read-only` does, by
        hand. In a private mount namespace the container's root is bind-mounted read-only,
        /proc and /dev are mounted, each (host path, container path) volume bound read-only;
        then chroot, drop to `user`, a clean environment (the image's plus `env`), exec.
        The main process is this command's own PID (every step execs the next).
        """
        root = Path(self.buildah("mount", container).strip())
        for _, target in volumes:
            (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)  # as docker does
        steps = [f"mount --bind -o ro {shlex.quote(str(root))} {shlex.quote(str(root))}",
                 f"mount -t proc proc {shlex.quote(str(root / 'proc'))}",
                 f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}"]  # fmt: skip
        for source, target in volumes:
            where = shlex.quote(str(root / target.lstrip("/")))
            steps.append(f"mount --bind -o ro {shlex.quote(str(source))} {where}")
        uid, _, gid = user.partition(":")
        pairs = [f"{k}={v}" for k, v in env.items()]
        steps.append(shlex.join(["exec", "chroot", f"--userspec={uid}:{gid or uid}",
                                 f"--groups={gid or uid}", str(root), "/usr/bin/env", "-i",
                                 "-C", "/tmp", *pairs, *argv]))  # fmt: skip
        return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", " && ".join(steps)]

    def close(self) -> None:
        """Delete the storage (containers, images) with `rm -rf`: faster than buildah rm each."""
        with open("/proc/self/mountinfo") as f:
            held = [line.split()[4] for line in f if str(self.root) in line.split()[4]]
        if held:  # never delete through a mount that points elsewhere
            raise AssertionError(f"mounts left under {self.root}: {held}")
        run(["rm", "-rf", "--one-file-system", str(self.root)])

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def descendants(pid: int) -> list[int]:
    """PIDs below `pid`, breadth first (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    out, queue = [], [pid]
    while queue:
        for child in sorted(children.get(queue.pop(0), [])):
            out.append(child)
            queue.append(child)
    return out


def argv0(pid: int) -> str:
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


class ContainerProcess(WorkerProcess):
    """A service in a container (`buildah run` or read-only chroot), stopped like `docker stop`."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in wait/kill)
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=self._log)

    def main_pid(self, timeout: float = 30) -> int:
        """The container's first process (the image's ENTRYPOINT), not buildah's helpers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in [self.process.pid, *descendants(self.process.pid)]:
                name = Path(argv0(pid)).name
                if (
                    name
                    and name not in ("unshare", "sh", "mount", "chroot", "env")
                    and not name.startswith("buildah")
                ):
                    return pid
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no container process under {self.process.pid}:\n{self.tail()}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the container's main process; the container's exit code."""
        os.kill(self.main_pid(), signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            for pid in reversed(descendants(self.process.pid)):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        super().kill()
