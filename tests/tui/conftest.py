"""A real daemon for the TUI tests, and a factory of apps pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from mongars_edge.tui.app import MongarsApp
from mongars_edge.tui.client import DaemonClient
from tests.support.server import Server, start_server
from tests.support.types import AppFactory
from tests.tui.loopguard import no_blocking_in_loop  # noqa: F401 - overrides the suite's guard


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real daemon (SmolLM2, no mesh) shared by the TUI tests."""
    running = start_server(tmp_path_factory.mktemp("tui") / "data")
    try:
        yield running
    finally:
        running.stop(30)


@pytest.fixture(scope="session")
def chat_api(daemon: Server) -> Server:
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


@pytest.fixture
def make_app(daemon: Server) -> AppFactory:
    def make(url: str | None = None, poll_s: float = 0.5, max_tokens: int = 16) -> MongarsApp:
        token = daemon.token() if url is None else None
        client = DaemonClient(url or daemon.url, token)
        return MongarsApp(client, poll_s=poll_s, max_tokens=max_tokens)

    return make
