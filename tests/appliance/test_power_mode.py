"""The Jetson power-mode choice, run on the recorded board sysroots (DRY_RUN: no nvpmodel)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.env import REPO, clean_env

SCRIPT = REPO / "firmware/jetson/power-mode.sh"
SYSROOTS = REPO / "tests/fixtures/sysroots"


@pytest.mark.parametrize(
    ("board", "expected"),
    [
        # This recording predates the Super firmware: no 25W mode, so 15W, never MAXN.
        ("jetson-orin-nano-8gb", "power mode 15W (id 0)"),
        ("jetson-agx-orin-64gb", "power mode MODE_50W (id 3)"),
    ],
)
def test_power_mode_by_board(cli_wrapper: Path, board: str, expected: str) -> None:
    env = clean_env(
        MONGARS_SYSROOT=str(SYSROOTS / board), MONGARS_BIN=str(cli_wrapper), DRY_RUN="1"
    )
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_power_mode_prefers_25w_on_an_orin_nano_super(tmp_path: Path, cli_wrapper: Path) -> None:
    # The recorded Orin Nano plus the mode table of JetPack 6.2 ("Super"), which adds 25W.
    root = tmp_path / "nano-super"
    subprocess.run(["cp", "-a", str(SYSROOTS / "jetson-orin-nano-8gb"), str(root)], check=True)
    (root / "etc/nvpmodel.conf").write_text(
        "< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=25W >\n"
        "< POWER_MODEL ID=2 NAME=MAXN_SUPER >\n< PM_CONFIG DEFAULT=0 >\n"
    )
    env = clean_env(MONGARS_SYSROOT=str(root), MONGARS_BIN=str(cli_wrapper), DRY_RUN="1")
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "power mode 25W (id 1)" in result.stdout, result.stderr


def test_not_a_jetson_leaves_power_alone(cli_wrapper: Path) -> None:
    env = clean_env(MONGARS_SYSROOT=str(SYSROOTS / "pi5-8gb"), MONGARS_BIN=str(cli_wrapper))
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "leaving power settings alone" in result.stderr
