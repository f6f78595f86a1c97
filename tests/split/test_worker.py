"""RpcWorker: a real sandboxed child serving llama.cpp's RPC, its sandbox, restarts, memory cap,
cache bound and bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mongars_edge.backoff import Backoff
from mongars_edge.split.rpcwire import RPC_PROTO, Cmd, RpcGuard
from mongars_edge.split.worker import (
    RpcWorker,
    RpcWorkerError,
    RpcWorkerUnavailable,
    trim_cache,
)
from mongars_edge.split.worker_child import PORT

_BUDGET = 300 << 20


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[RpcWorker]:
    w = RpcWorker(
        tmp_path / "cache",
        budget_bytes=_BUDGET,
        threads=1,
        cache_max_bytes=1 << 30,
        backoff=Backoff(first=0.05, cap=0.2),
        trim_every_s=3600,
    )
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


def _frame(cmd: int, payload: bytes) -> bytes:
    return bytes([cmd]) + struct.pack("<Q", len(payload)) + payload


async def _ask(worker: RpcWorker, cmd: int, payload: bytes, reply: int) -> bytes:
    """HELLO then one command, through a guard; the reply's payload."""
    reader, writer = await worker.connect()
    guard = RpcGuard()
    try:
        for frame, size in ((_frame(Cmd.HELLO, bytes(24)), 28), (_frame(cmd, payload), reply)):
            guard.from_client(frame)
            writer.write(frame)
            data = await reader.readexactly(8 + size)
            guard.from_server(data)
        return data[8:]
    finally:
        writer.close()


@pytest.mark.model
async def test_the_worker_serves_and_reports_at_most_its_budget(worker: RpcWorker) -> None:
    free, total = struct.unpack("<QQ", await _ask(worker, Cmd.GET_DEVICE_MEMORY, bytes(4), 16))
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert physical > _BUDGET  # else the cap would prove nothing
    assert free == total == _BUDGET


@pytest.mark.model
async def test_a_buffer_far_beyond_the_budget_fails_cleanly_and_the_worker_survives(
    worker: RpcWorker,
) -> None:
    pid = worker.pid
    asked = struct.pack("<IQ", 0, _BUDGET + (2 << 30))
    ptr, size = struct.unpack("<QQ", await _ask(worker, Cmd.ALLOC_BUFFER, asked, 16))
    assert (ptr, size) == (0, 0)  # allocation failed: the client is told, nothing aborts
    asked = struct.pack("<IQ", 0, _BUDGET // 2)
    ptr, size = struct.unpack("<QQ", await _ask(worker, Cmd.ALLOC_BUFFER, asked, 16))
    assert ptr and size == _BUDGET // 2
    assert worker.alive and worker.pid == pid


@pytest.mark.model
async def test_the_child_lives_in_its_own_namespaces_and_its_port_is_not_ours(
    worker: RpcWorker,
) -> None:
    assert worker.pid is not None
    for ns in ("net", "user"):
        assert os.readlink(f"/proc/{worker.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    status = await asyncio.to_thread(Path(f"/proc/{worker.pid}/status").read_text)
    assert "NoNewPrivs:\t1" in status
    # The server listens on the child's loopback only: on ours, nobody answers a HELLO there.
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=2) as s:
            s.sendall(_frame(Cmd.HELLO, bytes(24)))
            s.settimeout(2)
            answer = s.recv(64)
    except OSError:
        answer = b""
    assert answer[8:11] != bytes(RPC_PROTO)


@pytest.mark.model
async def test_a_killed_child_is_restarted(worker: RpcWorker) -> None:
    first = worker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    for _ in range(100):
        if not worker.alive:
            break
        await asyncio.sleep(0.02)
    if not worker.alive:  # between the death and the restart, a clear refusal
        with pytest.raises(RpcWorkerUnavailable, match="not serving"):
            await worker.connect()
    for _ in range(400):
        if worker.alive:
            break
        await asyncio.sleep(0.05)
    assert worker.alive and worker.pid != first and worker.restarts == 1
    assert struct.unpack("<I", await _ask(worker, Cmd.DEVICE_COUNT, b"", 4)) == (1,)


_PROBE = """
import json, socket, sys
from pathlib import Path
from mongars_edge.split.worker_child import enter_sandbox
cache, outside, port, addrs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
enter_sandbox(cache, port=port)
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = exc.__class__.__name__
for addr in addrs:
    attempt("connect " + addr, lambda: socket.create_connection((addr, port), timeout=3).close())
attempt("write outside", lambda: (outside / "escaped").write_text("x"))
attempt("mkdir outside", lambda: (outside / "escaped-dir").mkdir())
attempt("write tmp", lambda: Path("/tmp/rpc-worker-escaped").write_text("x"))
attempt("write cache", lambda: (cache / "cached").write_text("x"))
attempt("read outside", lambda: Path(json.__file__).read_text())
print(json.dumps(out))
"""


def _host_addresses() -> list[str]:
    import ifaddr

    found = [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]
    return found[:2]


@pytest.mark.model
def test_the_sandbox_allows_no_network_and_no_write_outside_the_cache(tmp_path: Path) -> None:
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    addresses = _host_addresses()
    with socket.socket() as listener:
        # A listener on every host address, on the very port the sandbox lets TCP use: only the
        # network namespace stands between them.
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        root = str(Path(__file__).resolve().parents[2])
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, str(cache), str(outside), str(port), "127.0.0.1",
             *addresses],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": root},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
    out = json.loads(result.stdout)
    assert out.pop("write cache") == "ok" and out.pop("read outside") == "ok"
    assert all(value != "ok" for value in out.values()), out
    assert not (outside / "escaped").exists() and not Path("/tmp/rpc-worker-escaped").exists()
    assert len(out) == 3 + 1 + len(addresses)


def test_a_budget_of_zero_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RpcWorkerError, match="budget is 0 bytes"):
        RpcWorker(tmp_path, budget_bytes=0, threads=1, cache_max_bytes=1 << 20)


async def test_a_cache_dir_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    worker = RpcWorker(blocker / "cache", budget_bytes=1 << 20, threads=1, cache_max_bytes=0)
    with pytest.raises(RpcWorkerError, match=r"cache dir .* is not writable"):
        await worker.start()
    assert not worker.alive


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a cache filesystem that is as good as full."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=True)


async def test_a_full_cache_filesystem_is_a_clear_error(small_fs: Path) -> None:
    worker = RpcWorker(small_fs, budget_bytes=1 << 20, threads=1, cache_max_bytes=1 << 30)
    with pytest.raises(RpcWorkerError, match="is full"):
        await worker.start()
    assert not worker.alive


def test_the_cache_keeps_the_newest_files_within_its_bound(tmp_path: Path) -> None:
    now = time.time()
    for i in range(5):
        path = tmp_path / f"{i:016x}"
        path.write_bytes(bytes(1000))
        os.utime(path, (now - 100 + i, now - 100 + i))
    assert trim_cache(tmp_path, 2500) == 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:016x}" for i in (3, 4)]
    assert trim_cache(tmp_path, 2500) == 0


@pytest.mark.model
async def test_the_worker_bounds_its_cache_at_start_and_while_it_runs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    now = time.time()

    def fill(names: range) -> None:
        for i in names:
            path = cache / f"{i:016x}"
            path.write_bytes(bytes(1000))
            os.utime(path, (now + i, now + i))

    await asyncio.to_thread(fill, range(4))
    worker = RpcWorker(cache, budget_bytes=1 << 20, threads=1, cache_max_bytes=1500,
                       trim_every_s=0.05)  # fmt: skip
    await worker.start()
    try:
        assert sorted(p.name for p in cache.iterdir()) == [f"{3:016x}"]
        await asyncio.to_thread(fill, range(10, 13))  # as a load would write them
        for _ in range(200):
            if len(list(cache.iterdir())) == 1:
                break
            await asyncio.sleep(0.05)
        assert sorted(p.name for p in cache.iterdir()) == [f"{12:016x}"]
    finally:
        await worker.stop()
