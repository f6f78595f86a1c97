"""The CLI finds the box serving on this machine, follows its data dir or says they differ."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongars_edge.localbox import MARKER_FILE, ask_data_dir, same_machine, serving_url
from tests.support.env import clean_env, run_cli
from tests.support.server import Server, start_server

pytestmark = pytest.mark.model  # a real `serve` (its memory opens the embedder)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `serve` with no model: enough for /health, accounts and the marker."""
    server = start_server(tmp_path_factory.mktemp("box") / "data", "--model", "off")
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop_cleanly()


def _env(box: Server, home: Path) -> dict[str, str]:
    # HOME: as root an unset data dir would be /var/lib/mongars-edge; nothing may land there.
    return clean_env(MONGARS_PORT=str(box.port), HOME=str(home))


def test_health_tells_only_clients_on_this_machine_where_the_data_is(box: Server) -> None:
    assert ask_data_dir(box.url) == box.data_dir
    assert serving_url(box.data_dir) == box.url
    assert same_machine("127.0.0.1", "127.0.0.1") and same_machine("::1", "::1")
    assert same_machine("192.168.1.20", "192.168.1.20")  # a local client on the LAN address
    assert not same_machine("192.168.1.21", "192.168.1.20")  # anyone else on the LAN
    assert not same_machine(None, "127.0.0.1")


def test_with_no_data_dir_chosen_the_cli_acts_on_the_running_box(
    box: Server, tmp_path: Path
) -> None:
    # The newcomer's case: `make serve` keeps its data in ./.data; a bare `users add` as root
    # used to write to /var/lib/mongars-edge, where the server never looked.
    result = subprocess.run(
        ["mongars-edge", "users", "add", "ana", "--admin", "--password-stdin"],
        input="a long password\n",
        capture_output=True,
        text=True,
        env=_env(box, tmp_path) | {"PATH": _path()},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"note: using {box.data_dir}, the data dir of the box serving on {box.url}" in (
        result.stderr
    )
    listed = run_cli("users", "list", "--data-dir", str(box.data_dir))
    assert "ana  (admin)" in listed.stdout


def test_a_different_data_dir_chosen_is_said(box: Server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    result = run_cli("probe", "--data-dir", str(other), env=_env(box, tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"the box serving on {box.url} keeps its data in {box.data_dir}" in result.stderr
    assert f"pass --data-dir {box.data_dir}" in result.stderr


def test_the_data_dir_of_a_box_on_another_port_needs_no_note(box: Server, tmp_path: Path) -> None:
    # Two boxes on one machine: acting on the second one's data dir is not a disagreement.
    result = run_cli("users", "list", "--data-dir", str(box.data_dir), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr


def test_the_marker_goes_when_the_box_stops(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--model", "off")
    try:
        assert (data / MARKER_FILE).is_file()
    finally:
        server.stop_cleanly()
    assert not (data / MARKER_FILE).exists()
    assert serving_url(data) is None


def _path() -> str:
    """PATH with this venv's `mongars-edge` first: the command as a user types it."""
    return f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
