"""sd_notify and the watchdog over a real AF_UNIX datagram socket, with a real server."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongars_edge.datadir import DataDir
from mongars_edge.telemetry import (
    SystemdNotifier,
    Watchdog,
    appliance_problems,
    watchdog_interval,
)
from tests.support.env import clean_env, free_port, wait_json


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    try:
        yield path, sock
    finally:
        sock.close()


def _recv_until(sock: socket.socket, wanted: str, seen: list[str]) -> None:
    while not any(wanted in m for m in seen):
        seen.append(sock.recv(4096).decode())


def test_serve_sends_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    port = free_port()
    # A short watchdog interval makes pings arrive quickly; it is not a timing assertion.
    env = clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="300000")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mongars_edge",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(port),
            "--no-mesh",
            "--no-speech",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        _recv_until(sock, "READY=1", seen)
        # READY means the API listens: /health answers right away.
        health = wait_json(f"http://127.0.0.1:{port}/health", proc, deadline_s=5)
        assert health["status"] in ("ok", "degraded")
        # The loop keeps pinging after READY.
        pings_before = sum(m == "WATCHDOG=1" for m in seen)
        while sum(m == "WATCHDOG=1" for m in seen) <= pings_before:
            seen.append(sock.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        _recv_until(sock, "STOPPING=1", seen)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=60)
    assert "Traceback" not in out
    ready = next(i for i, m in enumerate(seen) if "READY=1" in m)
    stopping = next(i for i, m in enumerate(seen) if "STOPPING=1" in m)
    assert ready < stopping
    assert "WATCHDOG=1" in seen[ready + 1 : stopping]


def test_watchdog_withholds_pings_while_the_decoder_is_wedged(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    sock.settimeout(0.5)
    # stall_s=0: a busy decoder that has not stepped "since now" counts as wedged at once,
    # which checks the rule without waiting on a clock.
    wedged = Watchdog(SystemdNotifier(path), 1.0, stall_s=0.0)
    patient = Watchdog(SystemdNotifier(path), 1.0, stall_s=1e9)
    wedged.beat_inference()
    assert wedged.ping() is False
    assert sock.recv(4096).startswith(b"STATUS=inference stalled")  # says why, once
    wedged.inference_idle()  # an idle decoder is never wedged
    assert wedged.ping() is True
    assert sock.recv(4096) == b"STATUS=inference progressing again"
    assert sock.recv(4096) == b"WATCHDOG=1"

    patient.beat_inference()
    assert patient.ping() is True
    assert sock.recv(4096) == b"WATCHDOG=1"
    wedged.notifier.close()
    patient.notifier.close()


async def test_watchdog_task_pings_from_the_event_loop(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    watchdog = Watchdog.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "150000"})
    assert watchdog.interval_s == pytest.approx(0.15)
    async with watchdog.running():
        # The first ping goes out as the task starts; the second proves the loop keeps it up.
        received = await asyncio.to_thread(_drain, sock, 2)
    assert received == [b"WATCHDOG=1", b"WATCHDOG=1"]


async def test_a_widened_watchdog_limit_is_given_back(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    watchdog = Watchdog.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})

    async def failing_load() -> None:
        async with watchdog.widened(600):
            assert await asyncio.to_thread(sock.recv, 4096) == b"WATCHDOG_USEC=600000000"
            raise RuntimeError("the load failed")

    with pytest.raises(RuntimeError):
        await failing_load()
    received = await asyncio.to_thread(_drain, sock, 2)
    assert received == [b"WATCHDOG_USEC=30000000", b"WATCHDOG=1"]
    watchdog.notifier.close()


def _drain(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(4096) for _ in range(count)]


def test_no_systemd_means_no_op() -> None:
    notifier = SystemdNotifier.from_environ({})
    assert notifier.enabled is False
    assert notifier.ready() is False
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "5000000"}) == 5.0


def test_abstract_socket_address(tmp_path: Path) -> None:
    name = f"mongars-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier("@" + name)
        assert notifier.status("hello") is True
        assert sock.recv(4096) == b"STATUS=hello"
        notifier.close()


def test_a_vanished_notify_socket_is_told_once(
    notify_socket: tuple[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier(path)
    assert notifier.ready() is True
    sock.close()
    Path(path).unlink()  # systemd went away under us
    assert [notifier.notify("WATCHDOG=1") for _ in range(3)] == [False, False, False]
    told = [r for r in caplog.records if "sd_notify to" in r.message]
    assert [r.levelname for r in told] == ["WARNING"]  # then at debug, not shown here
    notifier.close()


def test_firstboot_problems_reach_health(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    DataDir(data).firstboot_problems.write_text("wifi.txt: no 'ssid=' line\n\n")
    assert appliance_problems(data) == ["first boot: wifi.txt: no 'ssid=' line"]
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mongars_edge",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--no-mesh",
            "--no-speech",
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = wait_json(f"http://127.0.0.1:{port}/health", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert health["status"] == "degraded"
    assert "first boot: wifi.txt: no 'ssid=' line" in health["problems"]
    assert "wifi.txt" in out  # and the journal (stderr) says it too
