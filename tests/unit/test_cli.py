"""The console script imports only the module of the command it runs, and turns a bad
setting into one line and exit code 2 for every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import COMMANDS, main


def test_only_the_chosen_commands_module_is_imported() -> None:
    code = (
        "import sys; from service.cli import COMMANDS, build_parser; build_parser('inspect'); "
        "print(sorted(m for m, _ in COMMANDS.values() if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['service.tools.inspect']"


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["inspect"],
        ["dev"],
        ["produce", "--synthetic", "10"],
        ["repartition", "--partitions", "6"],
    ],
)
def test_a_bad_setting_stops_every_command_with_exit_2_naming_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command[0] in COMMANDS
    monkeypatch.setenv("TICKPROP_METRICS_PORT", "not-a-port")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tickprop {command[0]}: ") and "TICKPROP_METRICS_PORT" in err
