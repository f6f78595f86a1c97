"""Two real boxes on loopback, paired with `pair --join CODE --peer HOST:PORT` alone: no mDNS,
no static_peers, no restart. Both end up linked, each seeing the other's real mesh address."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.env import clean_env, free_port, run_cli
from tests.support.server import start_server


@dataclass
class Box:
    data_dir: Path
    port: int
    mesh_port: int
    proc: subprocess.Popen[str]

    def peers(self) -> dict[str, Any]:
        token = (self.data_dir / "local-admin.token").read_text().strip()
        reply = httpx.get(
            f"http://127.0.0.1:{self.port}/api/peers",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        reply.raise_for_status()
        body: dict[str, Any] = reply.json()
        return body

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir))


@contextlib.contextmanager
def _box(data_dir: Path, model: Path) -> Iterator[Box]:
    port, mesh_port = free_port(), free_port()
    server = start_server(
        data_dir, "--mesh", "--mesh-port", str(mesh_port), "--model", str(model), port=port
    )
    try:
        yield Box(data_dir, port, mesh_port, server.proc)
    finally:
        if server.proc.poll() is None:
            server.stop_cleanly()


@pytest.fixture
def two_boxes(tmp_path: Path, models: dict[str, Path]) -> Iterator[tuple[Box, Box]]:
    with _box(tmp_path / "a", models["tiny"]) as a, _box(tmp_path / "b", models["tiny"]) as b:
        yield a, b


def _start_pairing(member: Box) -> tuple[subprocess.Popen[str], str, str]:
    """`pair` on the member: returns the process, the code and the --peer it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mongars_edge", "pair", "--data-dir", str(member.data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    found = re.search(r"--join (\d{4}-\d{4}) --peer (\S+)", lines[1])
    assert found, lines
    return proc, found.group(1), found.group(2)


def test_pair_join_with_peer_alone_links_both_boxes_with_real_addresses(
    two_boxes: tuple[Box, Box],
) -> None:
    a, b = two_boxes
    pairing, code, peer = _start_pairing(a)
    assert peer == f"127.0.0.1:{a.mesh_port}"  # what to give: the mesh port, not 8080's
    joined = b.cli("pair", "--join", code, "--peer", peer)
    member_out, _ = pairing.communicate(timeout=60)
    assert joined.returncode == 0, joined.stderr
    assert pairing.returncode == 0, member_out

    a_id = re.search(r"through ([0-9a-f]{16})", joined.stdout)
    b_id = re.search(r"paired: ([0-9a-f]{16})", member_out)
    assert a_id and b_id
    # Each side says the link is up, at the other's real mesh address.
    assert f"linked to {a_id.group(1)} at 127.0.0.1:{a.mesh_port}" in joined.stdout
    assert f"linked to {b_id.group(1)} at 127.0.0.1:{b.mesh_port}" in member_out

    rows_a = {p["node_id"]: p for p in a.peers()["data"]}
    rows_b = {p["node_id"]: p for p in b.peers()["data"]}
    assert rows_a[b_id.group(1)]["linked"] and rows_b[a_id.group(1)]["linked"]
    assert rows_a[b_id.group(1)]["address"] == f"127.0.0.1:{b.mesh_port}"
    assert rows_b[a_id.group(1)]["address"] == f"127.0.0.1:{a.mesh_port}"
    assert "peers" not in a.peers()  # the list is `data`, once

    # Revoking works with the options after the subcommand, as the README puts them.
    removed = b.cli("peers", "remove", a_id.group(1))
    assert removed.returncode == 0, removed.stderr
    end = time.monotonic() + 30
    while time.monotonic() < end and any(
        p["linked"] for p in b.peers()["data"] if p["node_id"] == a_id.group(1)
    ):
        time.sleep(0.2)
    assert not any(p["linked"] for p in b.peers()["data"] if p["node_id"] == a_id.group(1))


def test_an_unreachable_peer_is_one_line_saying_what_to_do(two_boxes: tuple[Box, Box]) -> None:
    a, b = two_boxes
    for peer, says in (
        (f"127.0.0.1:{free_port()}", "cannot reach"),
        (f"127.0.0.1:{a.port}", "is a web server"),  # the HTTP port instead of the mesh's
    ):
        result = b.cli("pair", "--join", "1234-5678", "--peer", peer)
        assert result.returncode == 3
        line = result.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert says in line and "mesh port" in line
