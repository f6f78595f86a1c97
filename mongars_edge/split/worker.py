"""The RPC worker's supervisor: it starts llama.cpp's RPC server in a sandboxed child process
(`worker_child`), hands out connections to it, restarts it when it dies and bounds its tensor
cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path

from mongars_edge.backoff import Backoff
from mongars_edge.errors import MongarsError, UnavailableError
from mongars_edge.split.rpcwire import RpcGuard

log = logging.getLogger(__name__)

_MIN_FREE = 16 << 20  # the cache never fills its filesystem past this much free space
READY_TIMEOUT_S = 60.0  # for the child to answer a HELLO, and for the parent to hear from it
_ROOT = str(Path(__file__).resolve().parents[2])  # the child runs the same mongars_edge


class RpcWorkerError(MongarsError):
    """The RPC worker cannot run as configured; the message says what to change."""

    kind = "rpc_worker"


class RpcWorkerUnavailable(RpcWorkerError, UnavailableError):
    """The RPC worker is not serving right now (starting, restarting or stopped)."""

    http_status = 503
    kind = "rpc_worker_unavailable"


class RpcWorker:
    """A supervised, sandboxed llama.cpp RPC server offering `budget_bytes` of this box."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        budget_bytes: int,
        threads: int,
        cache_max_bytes: int,
        backoff: Backoff | None = None,
        healthy_after_s: float = 60.0,
        trim_every_s: float = 10.0,
    ) -> None:
        if budget_bytes <= 0:
            raise RpcWorkerError(
                f"the RPC worker's memory budget is {budget_bytes} bytes: give it a positive "
                "budget, or do not start a worker on this box"
            )
        if threads < 1:
            raise RpcWorkerError(f"the RPC worker needs at least one thread, not {threads}")
        if cache_max_bytes < 0:
            raise RpcWorkerError(f"the RPC worker's cache bound is negative ({cache_max_bytes})")
        self.cache_dir = cache_dir
        self.budget_bytes = budget_bytes
        self.threads = threads
        self.cache_max_bytes = cache_max_bytes
        # Restart delays, started over after a run of healthy_after_s.
        self.backoff = backoff or Backoff(first=0.5, cap=30.0)
        self.healthy_after_s = healthy_after_s
        self.trim_every_s = trim_every_s
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ctl: socket.socket | None = None
        self._ready = False
        self._stopping = False
        self._ctl_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def alive(self) -> bool:
        """The child runs and serves."""
        return self._ready and self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Spawn the sandboxed child and wait until it answers a HELLO."""
        await asyncio.to_thread(_check_cache_dir, self.cache_dir)
        await asyncio.to_thread(trim_cache, self.cache_dir, self.cache_max_bytes)
        self._stopping = False
        await self._spawn()
        self._tasks = [
            asyncio.create_task(self._supervise(), name="rpc-worker-supervisor"),
            asyncio.create_task(self._trim_loop(), name="rpc-worker-cache"),
        ]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A fresh connection to the child's RPC server (it serves one client at a time)."""
        ctl = self._ctl
        if not self.alive or ctl is None:
            raise RpcWorkerUnavailable("the RPC worker is not serving (restarting?); try again")
        async with self._ctl_lock:
            fd = await asyncio.to_thread(_ask_connection, ctl)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return await asyncio.open_connection(sock=sock)

    def guard(self) -> RpcGuard:
        """A guard for one connection to this worker: its budget bounds the buffers a client
        may allocate, and cached tensors are checked against the files of its cache."""
        return RpcGuard(budget_bytes=self.budget_bytes, cached_size=self.cached_size)

    def cached_size(self, digest: int) -> int | None:
        """Size of the cached tensor llama.cpp stored under this hash (None: none cached);
        RpcGuard's `cached_size` hook."""
        if self.cache_max_bytes == 0:
            return None
        try:
            return (self.cache_dir / f"{digest:016x}").stat().st_size
        except OSError:
            return None

    async def stop(self) -> None:
        """Stop the child and the supervisor; the cache stays."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._kill()
        for task in list(self._pumps):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the child's life ------------------------------------------------------------------

    async def _spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {
            "fd": child.fileno(),
            "cache_dir": str(self.cache_dir),
            "cache": self.cache_max_bytes > 0,
            "budget": self.budget_bytes,
            "threads": self.threads,
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        env["GGML_NO_BACKTRACE"] = "1"  # an abort is logged and the child restarted, no gdb
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mongars_edge.split.worker_child",
                json.dumps(config),
                pass_fds=[child.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
        finally:
            child.close()
        self._proc, self._ctl = proc, parent
        pump = asyncio.create_task(self._pump_output(proc), name="rpc-worker-output")
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        parent.settimeout(READY_TIMEOUT_S)
        try:
            message = await asyncio.to_thread(parent.recv, 4096)
        except OSError as exc:
            message = f"E no answer from the child: {exc}".encode()
        if message != b"R":
            await self._kill()
            why = message[1:].decode("utf-8", "replace").strip() or "it exited at start"
            raise RpcWorkerError(f"the RPC worker did not start: {why}")
        self._ready = True
        log.info(
            "rpc worker serving",
            extra={"pid": proc.pid, "budget_bytes": self.budget_bytes, "restarts": self.restarts},
        )

    async def _kill(self) -> None:
        self._ready = False
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            self._ready = False
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None
            if loop.time() - started >= self.healthy_after_s:
                self.backoff.reset()
            delay = self.backoff.next()
            log.warning(
                "rpc worker exited; restarting in %.1f s",
                delay,
                extra={"pid": proc.pid, "exit_code": code, "restarts": self.restarts},
            )
            await asyncio.sleep(delay)
            self.restarts += 1
            try:
                await self._spawn()
            except (RpcWorkerError, OSError) as exc:
                log.warning("rpc worker restart failed: %s", exc, extra={"restarts": self.restarts})

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                level = logging.WARNING if "error" in line.lower() else logging.DEBUG
                log.log(level, "rpc worker: %s", line, extra={"pid": proc.pid})

    async def _trim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.trim_every_s)
            await asyncio.to_thread(trim_cache, self.cache_dir, self.cache_max_bytes)


def _ask_connection(ctl: socket.socket) -> int:
    """Blocking: ask the child for a connected socket to its server."""
    try:
        ctl.send(b"C")
        message, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 1)
    except OSError as exc:
        raise RpcWorkerUnavailable(f"the RPC worker did not answer: {exc}") from exc
    if message == b"F" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    why = message[1:].decode("utf-8", "replace") or "it is gone"
    raise RpcWorkerUnavailable(f"the RPC worker gave no connection: {why}")


def _check_cache_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RpcWorkerError(
            f"the RPC worker's cache dir {path} is not writable ({exc.strerror or exc}): "
            "choose a folder this user can write"
        ) from exc
    stat = os.statvfs(path)
    if stat.f_bavail * stat.f_frsize < _MIN_FREE:
        raise RpcWorkerError(
            f"the RPC worker's cache dir {path} is full ({stat.f_bavail * stat.f_frsize} bytes "
            "free): free some space or point the cache elsewhere"
        )


def trim_cache(path: Path, max_bytes: int) -> int:
    """Delete the oldest cached tensors until the cache holds at most `max_bytes` and leaves
    its filesystem some free space; the bytes deleted."""
    files: list[tuple[float, int, Path]] = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                    st = entry.stat(follow_symlinks=False)
                    files.append((st.st_mtime, st.st_size, Path(entry.path)))
        stat = os.statvfs(path)
    except OSError as exc:
        log.warning("rpc worker cache %s cannot be read: %s", path, exc)
        return 0
    used = sum(size for _, size, _ in files)
    room = used + stat.f_bavail * stat.f_frsize - _MIN_FREE
    bound = max(0, min(max_bytes, room))
    freed = 0
    for _, size, file in sorted(files):
        if used - freed <= bound:
            break
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
            freed += size
    if freed:
        log.info("rpc worker cache trimmed", extra={"freed_bytes": freed, "bound_bytes": bound})
    return freed
