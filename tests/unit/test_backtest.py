"""`tickprop backtest`: report format, skipped rows, settings, agreement with the learner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.learner import LearnerConfig, OnlineLearner
from service.cli import build_parser, main
from service.settings import ConfigError, load_settings
from service.tools.backtest import Backtest, learner_config, run_rows
from service.tools.ticks_csv import read_ticks

CSV = """ts,symbol,price,volume
1704067201000,AAA,10.0,1
1704067201000,BBB,50.0,1
1704067201001,AAA,10.5,1
not-a-ts,AAA,10.0,1
1704067201002,AAA,-1,1
1704067201003,AAA,nan,1
1704067201002,BBB,50.5,2
1704067201004,AAA,10.0,1
1704067201003,AAA,10.5,1
1704067201005,AAA,11.0,1
1704067201006,AAA,10.5,1
1704067201007,AAA,11.0,1
1704067201008,BBB,50.0,1
"""


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "ticks.csv"
    path.write_text(CSV)
    return path


def test_report_has_the_design_fields_and_counts_skipped_rows(
    small_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    argv = ["backtest", "--csv", str(small_csv), "--json", str(out), "--window", "2"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    for key in ("ticks", "symbols", "scored", "model", "baselines", "per_symbol"):
        assert key in report
    assert set(report["baselines"]) == {"base_rate", "persistence", "reversal"}
    assert report["baselines"]["persistence"]["log_loss"] is None
    assert report["symbols"] == 2 and report["rows"] == 13
    assert report["skipped"]["invalid"] == 3  # bad ts, price <= 0, NaN
    assert report["skipped"]["late"] == 1  # 1003 after 1004
    assert report["ticks"] == 13 - 3 - 1
    assert report["settings"] == LearnerConfig(window=2).as_dict()
    assert report["ticks_per_second"] > 0
    for symbol in ("AAA", "BBB"):
        s = report["per_symbol"][symbol]
        assert {"scored", "accuracy", "model_version", "weights_sha256"} <= set(s)
        assert list(s["horizons"]) == ["1", "5", "20"]


def walk_csv(path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(5)
    prices = 100 + 0.25 * np.cumsum(rng.choice([-1, 0, 0, 1], n))
    t0 = 1_704_067_200_000  # epoch ms
    rows = "".join(f"{t0 + i},W,{p}\n" for i, p in enumerate(prices))
    path.write_text("ts,symbol,price\n" + rows)
    return path


def test_the_report_has_a_section_per_horizon_and_the_top_level_is_the_first(
    tmp_path: Path,
) -> None:
    csv_path = walk_csv(tmp_path / "w.csv")
    out = tmp_path / "r.json"
    argv = ["backtest", "--csv", str(csv_path), "--json", str(out), "--horizons", "5,1"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["horizons"]) == ["5", "1"]
    for key in ("scored", "model", "baselines"):
        assert report[key] == report["horizons"]["5"][key]
    assert report["horizons"]["1"]["scored"] > report["horizons"]["5"]["scored"] * 0.5 > 0
    per = report["per_symbol"]["W"]["horizons"]
    assert per["1"]["scored"] == report["horizons"]["1"]["scored"]
    assert report["settings"]["horizons"] == [5, 1]


def test_the_old_horizon_flag_and_variable_are_refused_with_what_to_use_instead(
    small_csv: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["backtest", "--csv", str(small_csv), "--horizon", "5"]) == 2
    err = capsys.readouterr().err
    assert "--horizon 5 is no longer read: use --horizons" in err
    monkeypatch.setenv("TICKPROP_HORIZON", "5")
    assert main(["backtest", "--csv", str(small_csv)]) == 2
    assert "TICKPROP_HORIZON=5 is no longer read: set TICKPROP_HORIZONS" in capsys.readouterr().err
    monkeypatch.delenv("TICKPROP_HORIZON")
    assert main(["backtest", "--csv", str(small_csv), "--horizons", "1,1"]) == 2
    assert "--horizons" in capsys.readouterr().err


def test_per_symbol_state_equals_a_learner_fed_the_valid_ticks_in_order(small_csv: Path) -> None:
    config = LearnerConfig(window=2, hidden=(4,), learning_rate=0.1)
    bt = run_rows(Backtest(config), read_ticks(small_csv))
    learners: dict[str, OnlineLearner] = {}
    for row in read_ticks(small_csv):
        t = row.tick
        if t is None:
            continue
        if t.symbol not in learners:
            learners[t.symbol] = OnlineLearner(t.symbol, config)
        learner = learners[t.symbol]
        if not learner.is_late(t.ts_ms):
            learner.on_tick(t.ts_ms, t.price)
    for symbol, learner in learners.items():
        assert bt.learners[symbol].to_bytes() == learner.to_bytes()
        assert bt.report()["per_symbol"][symbol]["weights_sha256"] == learner.weights_sha256()


def test_settings_come_from_defaults_then_environment_then_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    args = parser.parse_args(["backtest", "--csv", "x"])
    for name in ("WINDOW", "HIDDEN", "LEARNING_RATE", "SEED", "HORIZONS", "HORIZON"):
        monkeypatch.delenv(f"TICKPROP_{name}", raising=False)
    assert learner_config(args) == LearnerConfig()
    monkeypatch.setenv("TICKPROP_WINDOW", "8")
    monkeypatch.setenv("TICKPROP_HIDDEN", "16,8")
    monkeypatch.setenv("TICKPROP_LEARNING_RATE", "0.01")
    monkeypatch.setenv("TICKPROP_HORIZONS", "2,3")
    assert learner_config(args) == LearnerConfig(
        window=8, hidden=(16, 8), learning_rate=0.01, horizons=(2, 3)
    )
    argv = ["backtest", "--csv", "x", "--window", "4", "--seed", "3", "--horizons", "7"]
    assert learner_config(parser.parse_args(argv)) == LearnerConfig(
        window=4, hidden=(16, 8), learning_rate=0.01, seed=3, horizons=(7,)
    )


def test_learning_settings_are_bounded_as_the_workers_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backtest parses and bounds its settings with the worker's settings code."""
    parser = build_parser()
    for name in ("HIDDEN", "HORIZONS", "HORIZON"):
        monkeypatch.delenv(f"TICKPROP_{name}", raising=False)
    monkeypatch.setenv("TICKPROP_HIDDEN", "a")
    with pytest.raises(ConfigError, match="TICKPROP_HIDDEN"):
        learner_config(parser.parse_args(["backtest", "--csv", "x"]))
    monkeypatch.setenv("TICKPROP_HIDDEN", "5000")  # over the worker's 4096 bound
    with pytest.raises(ConfigError, match="TICKPROP_HIDDEN"):
        learner_config(parser.parse_args(["backtest", "--csv", "x"]))
    monkeypatch.delenv("TICKPROP_HIDDEN")
    with pytest.raises(ConfigError, match="--hidden"):
        learner_config(parser.parse_args(["backtest", "--csv", "x", "--hidden", "0"]))
    for hidden in ("0", "5000", "x"):
        with pytest.raises(ConfigError):
            load_settings(hidden=hidden)


def test_a_missing_file_or_bad_setting_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backtest", "--csv", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text(CSV)
    assert main(["backtest", "--csv", str(tmp_path / "t.csv"), "--window", "1"]) == 2
    assert "window" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "out.png"
    csv_path = walk_csv(tmp_path / "w.csv")
    assert main(["backtest", "--csv", str(csv_path), "--window", "2", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_help_and_run_in_a_fresh_process(small_csv: Path, tmp_path: Path) -> None:
    """The CLI end to end, in its own interpreter (no servers needed)."""
    cmd = [sys.executable, "-m", "service.cli", "backtest"]
    root = Path(__file__).resolve().parents[2]
    help_text = subprocess.run(
        [*cmd, "--help"], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    for flag in (
        "--csv",
        "--json",
        "--plot",
        "--window",
        "--horizons",
        "--hidden",
        "--learning-rate",
    ):
        assert flag in help_text
    out = tmp_path / "r.json"
    done = subprocess.run(
        [*cmd, "--csv", str(small_csv), "--json", str(out), "--window", "2", "--progress"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    assert "ffbpn" in done.stdout and "reversal" in done.stdout
    assert "ticks/s" in done.stderr  # --progress forces the bar on a pipe
    assert json.loads(out.read_text())["ticks"] == 9


def test_a_file_without_one_valid_tick_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Epoch seconds where milliseconds belong: every row is invalid. The backtest must not
    print an empty report and exit 0 as if it had run; it names the reason and fails."""
    seconds = tmp_path / "seconds.csv"
    seconds.write_text("ts,symbol,price\n" + "".join(
        f"{1_580_000_000 + 60 * i},X,{100 + i % 3}\n" for i in range(50)
    ))  # fmt: skip
    report = tmp_path / "r.json"
    assert main(["backtest", "--csv", str(seconds), "--json", str(report), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no valid tick" in err and "all 50 rows are invalid" in err
    assert "bad_ts=50" in err and "epoch seconds" in err  # the reason, and an example
    assert json.loads(report.read_text())["skipped"]["invalid"] == 50
    (tmp_path / "empty.csv").write_text("ts,symbol,price\n")
    assert main(["backtest", "--csv", str(tmp_path / "empty.csv"), "--no-progress"]) == 1
    assert "no data rows" in capsys.readouterr().err


def test_invalid_rows_are_listed_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = walk_csv(tmp_path / "w.csv")
    with path.open("a") as f:
        f.write("1700000000000,W,-5\n")  # a negative price among valid ticks
    assert main(["backtest", "--csv", str(path), "--window", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 bad rows" in err and "bad_price" in err


def test_each_horizon_states_its_lead_over_the_best_baseline_and_its_log_loss_excess(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two figures a horizon is judged by, printed from the report's own numbers."""
    path, out = walk_csv(tmp_path / "w.csv", n=2000), tmp_path / "r.json"
    argv = ["backtest", "--csv", str(path), "--json", str(out), "--no-progress"]
    assert main([*argv, "--horizons", "1,5"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "against the best" in ln]
    report = json.loads(out.read_text())
    assert len(lines) == 2
    for line, section in zip(lines, report["horizons"].values(), strict=True):
        accs = {name: m["accuracy"] for name, m in section["baselines"].items()}
        best = max(accs, key=lambda name: accs[name])
        lead = 100 * (section["model"]["accuracy"] - accs[best])
        excess = section["model"]["log_loss"] - section["baselines"]["base_rate"]["log_loss"]
        assert f"{lead:+.2f} points" in line and f"({best})" in line
        assert f"log loss {excess:+.4f}" in line


def test_each_symbol_has_its_own_baselines_per_horizon(tmp_path: Path) -> None:
    """Every series is judged against its own base rate: the per-symbol sections carry
    the baselines, and with one symbol they are the whole report's."""
    bt = Backtest(LearnerConfig(window=2, horizons=(1, 5)))
    run_rows(bt, read_ticks(walk_csv(tmp_path / "w.csv", n=1000)))
    report = bt.report()
    mine = report["per_symbol"]["W"]["horizons"]
    for h, section in report["horizons"].items():
        assert mine[h]["baselines"] == section["baselines"]
        assert mine[h]["baselines"]["base_rate"]["log_loss"] is not None
