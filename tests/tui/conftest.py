"""A real daemon for the TUI tests, and a factory of apps pointed at it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from mongars_edge.tui.app import MongarsApp
from mongars_edge.tui.client import DaemonClient
from tests.helpers import free_port
from tests.tui.daemon import Daemon, start_daemon, stop_daemon


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
