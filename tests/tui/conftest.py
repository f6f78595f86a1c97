"""A real daemon for the TUI tests, and a factory of apps pointed at it."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mongars_edge.tui.app import MongarsApp
from mongars_edge.tui.client import DaemonClient, LocalToken
from tests.helpers import free_port, start_server


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


def start_daemon(data_dir: Path, port: int) -> Daemon:
    proc = start_server(data_dir, port)
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


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One real daemon (SmolLM2, no mesh) shared by the TUI tests."""
    running = start_daemon(tmp_path_factory.mktemp("tui") / "data", free_port())
    try:
        yield running
    finally:
        stop_daemon(running)


@pytest.fixture(scope="session")
def chat_api(daemon: Daemon) -> Daemon:
    """The daemon, when it already serves /v1/chat/completions (skip the test otherwise)."""
    token = daemon.token()()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        headers=headers,
        timeout=60,
    )
    if response.status_code in (404, 405):
        pytest.skip("this daemon has no /v1/chat/completions yet")
    return daemon


_BLOCKING_S = 0.5
_TOOK = re.compile(r"^Executing .* took ([0-9.]+) seconds$")


def _contention() -> float:
    """Runnable processes per CPU (1.0 on a quiet machine)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def no_blocking_in_loop() -> Iterator[None]:
    """The suite's blocking-call guard, with its 0.5 s scaled by CPU contention.

    Textual repaints inside the loop. Measured here, its longest callback costs ~0.12 s of CPU,
    but on a build box shared with several test runs (load 15 on 2 cores) that becomes ~1 s of
    wall time. A real blocking call still fails: on a quiet machine the limit is 0.5 s.
    """
    hits: list[float] = []

    class Catcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _TOOK.match(record.getMessage())
            if match:
                hits.append(float(match.group(1)))

    catcher = Catcher(logging.WARNING)
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(catcher)
    before = _contention()
    try:
        yield
    finally:
        asyncio_log.removeHandler(catcher)
    limit = _BLOCKING_S * max(before, _contention())
    worst = max(hits, default=0.0)
    if worst > limit:
        pytest.fail(f"blocking call inside the event loop: {worst:.2f} s (limit {limit:.2f} s)")


AppFactory = Callable[..., MongarsApp]


@pytest.fixture
def make_app(daemon: Daemon) -> AppFactory:
    def make(url: str | None = None, poll_s: float = 0.5, max_tokens: int = 16) -> MongarsApp:
        token = daemon.token() if url is None else None
        client = DaemonClient(url or daemon.url, token)
        return MongarsApp(client, poll_s=poll_s, max_tokens=max_tokens)

    return make
