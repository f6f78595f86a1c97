"""The TUI over real SSH: a private Debian sshd whose ForceCommand runs `mongars-edge tui`
against a real daemon, driven under tmux (send-keys / capture-pane) until a streamed answer
shows up on the remote screen."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.env import free_port
from tests.support.server import Server, start_server

SSHD = "/usr/sbin/sshd"
DROP_IN = Path(__file__).resolve().parents[2] / "mongars_edge/tui/ssh/sshd-mongars-tui.conf"
pytestmark = [
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("tmux", "ssh", "ssh-keygen")) or not Path(SSHD).exists(),
        reason="needs openssh-server, openssh-client and tmux (apt-get install openssh-server tmux)",  # noqa: E501
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private sshd that logs users in runs as root"),
]
USER = "root"  # the test logs in as itself; the image's `mongars` user gets the same ForceCommand


def _wait(predicate: Callable[[], object], what: str, rounds: int = 600) -> None:
    for _ in range(rounds):
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Server]:
    # Short replies: the test wants to see one streamed, not to wait for a long one.
    config = tmp_path / "daemon.toml"
    config.write_text("reply_max_tokens = 24\n")
    running = start_server(tmp_path / "data", "--config", str(config))
    try:
        yield running
    finally:
        running.stop(30)


@pytest.fixture
def sshd(tmp_path: Path, daemon: Server) -> Iterator[tuple[int, Path]]:
    """A private sshd on a loopback port: key only, ForceCommand = the TUI on this box."""
    here = tmp_path / "ssh"
    here.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(here / "host_key")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(here / "user_key")], check=True
    )
    shutil.copy(here / "user_key.pub", here / "authorized_keys")
    (here / "authorized_keys").chmod(0o600)
    # The box's config file names the daemon's port, as /etc/mongars-edge/config.toml does.
    port = int(daemon.url.rsplit(":", 1)[1])
    config = here / "config.toml"
    config.write_text(f'port = {port}\ndata_dir = "{daemon.data_dir}"\n')
    tui = f"{sys.executable} -m mongars_edge tui --config {config}"
    ssh_port = free_port()
    (here / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {ssh_port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {here / 'host_key'}",
                f"PidFile {here / 'sshd.pid'}",
                f"AuthorizedKeysFile {here / 'authorized_keys'}",
                # tmp_path sits under world-writable /tmp, which StrictModes refuses.
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "",
            ]
        )
        + _shipped_policy(tui)
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = (here / "sshd.log").open("w")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(here / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait(lambda: _listening(ssh_port) or proc.poll() is not None, "sshd to listen")
        assert proc.poll() is None, (here / "sshd.log").read_text()
        yield ssh_port, here
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _shipped_policy(tui: str) -> str:
    """The drop-in the image installs, for this test's user and command."""
    text = DROP_IN.read_text(encoding="utf-8")
    assert "Match User mongars" in text and "ForceCommand /usr/bin/mongars-edge tui" in text
    text = text.replace("Match User mongars", f"Match User {USER}")
    return text.replace("ForceCommand /usr/bin/mongars-edge tui", f"ForceCommand {tui}")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Tmux:
    """A private tmux server (own socket) holding one 80x24 window."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = str(socket_path)

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def screen(self) -> str:
        try:
            return self.run("capture-pane", "-p", "-t", "tui")
        except subprocess.CalledProcessError:
            return ""

    def alive(self) -> bool:
        probe = ["tmux", "-S", self.socket, "has-session", "-t", "tui"]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def test_ssh_login_runs_the_tui_and_streams_an_answer(
    tmp_path: Path, daemon: Server, sshd: tuple[int, Path]
) -> None:
    ssh_port, here = sshd
    tmux = Tmux(tmp_path / "tmux.sock")
    ssh = (
        f"ssh -tt -p {ssh_port} -i {here / 'user_key'} -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
        f"{USER}@127.0.0.1"
    )
    tmux.run("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", f"TERM=xterm-256color {ssh}")
    try:
        _wait(lambda: "Type a message" in tmux.screen(), "the TUI on the SSH screen")
        # Connected with the local admin token read from the data dir (no password asked).
        _wait(lambda: "Daemon unreachable" not in tmux.screen(), "the banner to clear", 100)
        assert "f1 Chat" in tmux.screen()
        tmux.run("send-keys", "-t", "tui", "-l", "Hello")
        tmux.run("send-keys", "-t", "tui", "Enter")
        token = daemon.token()()
        headers = {"Authorization": f"Bearer {token}"}

        def answer() -> str:
            body = httpx.get(f"{daemon.url}/api/conversations", headers=headers).json()
            if not body["data"]:
                return ""
            cid = body["data"][0]["id"]
            conv = httpx.get(f"{daemon.url}/api/conversations/{cid}", headers=headers).json()
            said = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
            return said[-1] if said else ""

        _wait(lambda: answer() and "answering" not in tmux.screen(), "a streamed answer")
        first_words = " ".join(answer().split()[:3])
        flat = " ".join(tmux.screen().split())
        assert first_words in flat, f"{first_words!r} not on the SSH screen:\n{tmux.screen()}"
        # Ctrl+Q leaves the TUI, which ends the SSH session: no shell behind it.
        tmux.run("send-keys", "-t", "tui", "C-q")
        _wait(lambda: not tmux.alive(), "the SSH session to end", 150)
    finally:
        if tmux.alive():
            print(tmux.screen())
        subprocess.run(["tmux", "-S", tmux.socket, "kill-server"], capture_output=True, check=False)
