"""The one way tests start a real `mongars-edge serve`: a child process on a free loopback
port, its output collected line by line, stopped by SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.support.env import clean_env, free_port

if TYPE_CHECKING:
    from mongars_edge.tui.client import LocalToken

# Small and quiet: one inference thread (shared CI machines), no speech, no mesh. The in-process
# Runtime of the web tests is built from these settings too.
TEST_SETTINGS: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    # The tests read the box's own prompts on the 135M, which the catalog runs without them.
    "persona": "on",
    "stt_model": "tiny.en",
    "mesh": False,
    "speech": "off",
    "stt": "off",
    "wyoming_port": 0,
    "n_threads": 1,
    "ctx_size": 2048,
    "n_parallel": 2,
}
SETUP_CODE = re.compile(r"setup code ([A-Z0-9]{4}-[A-Z0-9]{4})")


def settings_env(**settings: object) -> dict[str, str]:
    """TEST_SETTINGS with *settings* on top, as the MONGARS_* variables `serve` reads."""
    merged = TEST_SETTINGS | settings
    return {f"MONGARS_{k.upper()}": str(v) for k, v in merged.items()}


@dataclass
class Server:
    """A `mongars-edge serve` child process and what it printed."""

    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    _pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return "".join(self.lines)

    def wait_healthy(self, deadline_s: float = 120) -> dict[str, Any]:
        """Poll /health until it answers (any status); its JSON. Fails if the server exits.
        The deadline is a hang guard: models and voices load slowly on a busy box."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self._drain()
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                reply = httpx.get(self.url + "/health", timeout=2)
                if reply.status_code == 200:
                    body: dict[str, Any] = reply.json()
                    return body
            except httpx.HTTPError:  # refused, reset, or timed out while the model loads
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.url}/health did not answer:\n{self.output()}")

    def setup_code(self, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                found = SETUP_CODE.search(line)
                if found:
                    return found.group(1)
            time.sleep(0.05)
        raise AssertionError("no setup code printed:\n" + self.output())

    def admin_token(self) -> str:
        return (self.data_dir / "local-admin.token").read_text().strip()

    def token(self) -> LocalToken:
        """The local admin token as the TUI reads it."""
        from mongars_edge.tui.client import LocalToken

        return LocalToken(self.data_dir)

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM, then SIGKILL if it does not stop within *timeout_s* (a hang guard)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain()

    def stop_cleanly(self, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Stop it and check it stopped on its own, exit 0, no traceback; its JSON log records."""
        self.stop(timeout_s)
        out = self.output()
        assert self.proc.returncode == 0, out
        assert "Traceback" not in out
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def _drain(self) -> None:
        """Wait for the output of a stopped server to be read to its end."""
        if self._pump is not None:
            self._pump.join(timeout=10)
        if self.proc.stdout is not None and self.proc.poll() is not None:
            self.proc.stdout.close()


def start_server(
    data_dir: Path,
    *args: str,
    port: int | None = None,
    wait: bool = True,
    deadline_s: float = 120,
    env: Mapping[str, str] | None = None,
) -> Server:
    """A real `serve` with TEST_SETTINGS on loopback; *args* are added to its command line and
    *env* (MONGARS_*=...) to its environment. With *wait*, returns once /health answers."""
    port = port or free_port()
    proc = subprocess.Popen(
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
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Parallel test servers must not fight over the Wyoming port; voices load slowly.
        env=clean_env(**(settings_env() | dict(env or {}))),
    )
    server = Server(proc, port, data_dir)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)

    server._pump = threading.Thread(target=pump, daemon=True)
    server._pump.start()
    if wait:
        try:
            server.wait_healthy(deadline_s)
        except BaseException:
            server.stop()
            raise
    return server
