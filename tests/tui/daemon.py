"""A real daemon in a subprocess, for the TUI and SSH tests."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from mongars_edge.tui.client import LocalToken
from tests.helpers import start_server


@dataclass
class Daemon:
    url: str
    data_dir: Path
    proc: subprocess.Popen[str]

    def token(self) -> LocalToken:
        return LocalToken(self.data_dir)


def wait_healthy(url: str, proc: subprocess.Popen[str], rounds: int = 600) -> None:
    """Poll /health until it answers; the daemon accepts connections before it serves them."""
    for _ in range(rounds):
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/health never answered")


def start_daemon(data_dir: Path, port: int, *extra: str) -> Daemon:
    proc = start_server(data_dir, port, *extra)
    daemon = Daemon(f"http://127.0.0.1:{port}", data_dir, proc)
    try:
        wait_healthy(daemon.url, proc)
    except BaseException:
        stop_daemon(daemon)
        raise
    return daemon


def stop_daemon(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()
    if daemon.proc.stdout:
        daemon.proc.stdout.close()
