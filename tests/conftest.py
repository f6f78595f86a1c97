"""Shared fixtures: a guard against blocking calls in the event loop, and small factories."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import hypothesis
import pytest

# Hypothesis' per-example deadline is a wall-clock assertion: a cold first call (an import, a
# codec's first use) or a busy CI box fails it with "flaky". Correctness is what is checked here.
hypothesis.settings.register_profile("mongars", deadline=None)
hypothesis.settings.load_profile("mongars")

pytest_plugins = ["pytester"]

# asyncio's debug mode reports every callback that held the loop longer than this. A test in
# which the loop was blocked that long did something blocking inside it (STYLE habit 3). One
# second, not less: on a loaded 2-core CI box a short callback can be preempted for a while.
_BLOCKING_THRESHOLD_S = 1.0
_SLOW_CALLBACK = re.compile(r"^Executing .* took [0-9.]+ seconds$")


def _debug_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = _BLOCKING_THRESHOLD_S
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on a debug loop that reports blocking callbacks."""
    return {"debugloop": _debug_loop}


class _SlowCallbackCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _SLOW_CALLBACK.match(message):
            self.hits.append(message)


@pytest.fixture(autouse=True)
def no_blocking_in_loop() -> Iterator[None]:
    """Fail a test whose event loop was blocked by a synchronous call."""
    catcher = _SlowCallbackCatcher()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(catcher)
    try:
        yield
    finally:
        asyncio_log.removeHandler(catcher)
    if catcher.hits:
        pytest.fail("blocking call inside the event loop: " + "; ".join(catcher.hits))


@pytest.fixture(autouse=True, scope="session")
def no_box_of_the_developer() -> Iterator[None]:
    """In-process commands (CliRunner) look for the local box on a port nobody serves, as the
    subprocesses of tests.support.env.clean_env do: a `make serve` on this machine stays out."""
    saved = os.environ.get("MONGARS_PORT")
    with socket.socket() as sock:  # not tests.support: this file is copied alone (test_loop_guard)
        sock.bind(("127.0.0.1", 0))
        os.environ["MONGARS_PORT"] = str(sock.getsockname()[1])
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MONGARS_PORT", None)
        else:
            os.environ["MONGARS_PORT"] = saved


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


# Fixtures that build or load a llama.cpp model, load a speech or embedding model, or start a real
# server: a test using one is a `model` test, as is every test in _MODEL_DIRS. A test that loads
# a model without one of these fixtures (a Runtime of its own, a `serve` it starts) says so with
# `@pytest.mark.model` (or a module's `pytestmark`). `pytest -m "not model"` runs the fast rest.
_MODEL_FIXTURES = frozenset(
    {
        "models",
        "smollm2",
        "open_engine",
        "published",
        "boxes",
        "tts",
        "stt",
        "embedder",
        "store",
        "daemon",
        "chat_api",
        "make_app",
        "runtime",
        "client",
        "server",
    }
)
_MODEL_DIRS = ("integration", "appliance", "docs", "speech", "tui")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        parts = path.relative_to(tests_dir).parts if path.is_relative_to(tests_dir) else ()
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _MODEL_FIXTURES or (parts and parts[0] in _MODEL_DIRS):
            item.add_marker(pytest.mark.model)
