"""The dev extra's command-line tools, found for the deploy checks (tests/unit/test_deploy_*)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def tool(name: str) -> str:
    """A console script of the dev extra: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: install the dev extra (pip install -e '.[dev]')"
    return found
