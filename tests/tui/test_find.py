"""`mongars-edge tui` finds the local box and its token as the CLI does, or exits 77 saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mongars_edge.errors import MongarsError
from mongars_edge.settings import load_settings
from mongars_edge.tui.app import find_daemon
from tests.support.env import clean_env, free_port
from tests.support.server import Server


def _tui(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mongars_edge", "tui", *args],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(home), **env),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _one_line_77(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 77, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    return line


def test_no_box_anywhere_is_one_line_and_77(tmp_path: Path) -> None:
    # Root on a development box, nothing serving: it used to open and fail every call (401).
    line = _one_line_77(_tui(home=tmp_path))
    assert line.startswith("error: no box found: nothing answers on http://127.0.0.1:")
    assert "--data-dir" in line and "--url" in line and "--token" in line


def test_it_finds_the_running_box_and_its_token(daemon: Server, tmp_path: Path) -> None:
    port = daemon.url.rsplit(":", 1)[1]
    settings = load_settings(environ={"MONGARS_PORT": port, "HOME": str(tmp_path)})
    url, token = find_daemon(settings, None)
    assert url == daemon.url
    reply = httpx.get(f"{url}/api/conversations", headers={"Authorization": f"Bearer {token()}"})
    assert reply.status_code == 200
    # The same from the command line: it gets past the token and stops only for the terminal.
    result = _tui(home=tmp_path, MONGARS_PORT=port)
    assert result.returncode == 1 and "needs a terminal" in result.stderr


def test_a_url_of_this_machine_needs_no_token(daemon: Server) -> None:
    url, token = find_daemon(load_settings(environ={}), daemon.url)
    assert url == daemon.url and token() == daemon.token()()


def test_another_data_dir_than_the_running_box_s_says_which(daemon: Server, tmp_path: Path) -> None:
    port = daemon.url.rsplit(":", 1)[1]
    other = tmp_path / "data"
    other.mkdir()
    line = _one_line_77(_tui("--data-dir", str(other), home=tmp_path, MONGARS_PORT=port))
    assert f"pass --data-dir {daemon.data_dir}" in line


def test_a_remote_url_without_a_token_says_to_pass_one(tmp_path: Path) -> None:
    with pytest.raises(MongarsError) as info:
        find_daemon(load_settings(environ={}), f"http://127.0.0.1:{free_port()}")
    assert info.value.exit_code == 77
    assert "pass --token" in str(info.value)
