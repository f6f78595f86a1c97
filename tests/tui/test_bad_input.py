"""Bad input: daemon down and back, tiny terminal, resize storm, a 100 KB paste, no token."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Static

from mongars_edge.tui.app import MongarsApp
from mongars_edge.tui.client import DaemonClient, LocalToken
from mongars_edge.tui.screens.chat import ChatScreen
from mongars_edge.tui.widgets import DaemonBanner, PromptArea
from tests.support.env import clean_env, free_port
from tests.support.server import Server, start_server
from tests.support.types import AppFactory
from tests.tui.pilot import screen_text, until

REPO = Path(__file__).resolve().parents[2]


async def test_daemon_down_shows_a_banner_and_reconnects(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    client = DaemonClient(f"http://127.0.0.1:{port}", LocalToken(data_dir))
    app = MongarsApp(client, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.screen.query_one(DaemonBanner)
        await until(pilot, lambda: app.daemon_state == "down")
        await until(pilot, lambda: "Daemon unreachable" in screen_text(app))
        assert "connection refused" in screen_text(app)
        daemon = await asyncio.to_thread(start_server, data_dir, port=port)
        try:
            await until(pilot, lambda: app.daemon_state == "up")
            await until(pilot, lambda: not banner.display)
            await until(pilot, lambda: "Daemon unreachable" not in screen_text(app))
            first = app.generation
            await asyncio.to_thread(daemon.stop, 30)
            await until(pilot, lambda: app.daemon_state == "down" and banner.display)
            daemon = await asyncio.to_thread(start_server, data_dir, port=port)
            await until(pilot, lambda: app.daemon_state == "up" and app.generation > first)
            assert any("connected" in line for line in app.events)
        finally:
            await asyncio.to_thread(daemon.stop, 30)


async def test_tiny_terminal_and_a_resize_storm(daemon: Server, make_app: AppFactory) -> None:
    app = make_app()
    rng = random.Random(8)
    async with app.run_test(size=(12, 4)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        for key in ("f2", "f3", "f4", "f5", "f1"):
            await pilot.press(key)
        for _ in range(25):
            await pilot.resize_terminal(rng.randint(1, 220), rng.randint(1, 70))
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.is_running
        assert isinstance(app.screen, ChatScreen)
        await until(pilot, lambda: "Quit" in screen_text(app))


async def test_a_100_kb_paste_is_sent_whole_and_shown_short(
    daemon: Server, make_app: AppFactory
) -> None:
    app = make_app()
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
    big = (line * (100_000 // len(line) + 1))[:100_000]
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        prompt = chat.query_one(PromptArea)
        app.post_message(events.Paste(big))  # as the terminal driver does
        await until(pilot, lambda: len(prompt.text) == len(big))
        await pilot.press("enter")
        await until(pilot, lambda: chat._answer is not None)
        await until(pilot, lambda: not chat.streaming)
        assert chat.history[0]["content"] == big.strip()
        shown = str(chat.query_one(".message.user", Static).render())
        assert len(shown) < 2100 and shown.endswith("more characters)")
        # The daemon answers or refuses (too long for the context): either way, a message, not
        # a traceback, and the screen is still usable.
        assert app.is_running
        status = str(chat.query_one("#chat-status").render())
        answered = len(chat.history) == 2
        assert answered or "error:" in status, status
        if not answered:  # the reason is in the answer's place (a 400: context too small)
            said = str(chat.query_one(".message.assistant", Static).render())
            assert said.startswith("error: ")
            assert " ".join(said[7:].split()) in " ".join(status.split())


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_an_unreadable_token_file_says_why_and_what_to_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    token = data_dir / "local-admin.token"
    token.write_text("secret\n")
    token.chmod(0o640)
    command = [sys.executable, "-m", "mongars_edge", "tui", "--data-dir", str(data_dir)]
    if os.geteuid() == 0:
        # root reads everything; without these capabilities it obeys the file's mode.
        os.chown(token, 12345, 12345)
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    else:
        token.chmod(0)
    result = subprocess.run(
        command, capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=60
    )
    assert result.returncode == 77, result.stderr
    assert "permission denied" in result.stderr
    assert "'mongars' group" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_terminal_it_says_to_use_ssh_t(daemon: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mongars_edge", "tui", "--url", daemon.url, "--token", "x"],
        capture_output=True,
        text=True,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 1
    assert "needs a terminal" in result.stderr and "ssh -t" in result.stderr


async def test_a_daemon_that_accepts_but_never_answers_is_not_up() -> None:
    # What a daemon loading its model looks like: the port is bound, nothing answers yet.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        app = MongarsApp(DaemonClient(f"http://127.0.0.1:{port}"), poll_s=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.daemon_state == "down")
            assert "may be starting" in app.daemon_detail
            await until(pilot, lambda: "may be starting" in " ".join(screen_text(app).split()))
