"""The RPC worker: llama.cpp's own RPC server (`ggml_backend_rpc_start_server`) in a sandboxed
child process, and the supervisor that starts, feeds and restarts it.

The child's sandbox, entered before any thread starts:
- a user and a network namespace of its own, with only `lo` up: the RPC port listens on the
  child's private loopback, which neither the host's network nor other local processes reach;
- Landlock (ABI 1-7): writes only under the cache dir (and /dev/null), TCP bind and connect
  only on the RPC port, no abstract unix sockets or signals outside the sandbox;
- no new privileges, not dumpable (its /proc/PID/ns files cannot be opened by same-user
  processes), killed with its parent.

Connections reach the server through the control socket: the parent asks, the child connects
to its loopback server and hands the connected socket back (SCM_RIGHTS), so bytes then flow
between the parent and ggml without a relay.

The memory the server reports (GET_DEVICE_MEMORY) comes from the CPU device's `get_memory`,
which says all physical memory is free; the child replaces that function pointer in the
device's interface with one that caps both numbers at the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mongars_edge.errors import MongarsError, UnavailableError

log = logging.getLogger(__name__)

PORT = 50052  # inside the child's own network namespace: nobody else's port
_HELLO = bytes([14]) + struct.pack("<Q", 24) + bytes(24)
_MIN_FREE = 16 << 20  # the cache never fills its filesystem past this much free space
_READY_TIMEOUT_S = 60.0
_ROOT = str(Path(__file__).resolve().parents[2])  # the child runs the same mongars_edge


class RpcWorkerError(MongarsError):
    """The RPC worker cannot run as configured; the message says what to change."""

    kind = "rpc_worker"


class RpcWorkerUnavailable(RpcWorkerError, UnavailableError):
    """The RPC worker is not serving right now (starting, restarting or stopped)."""

    http_status = 503
    kind = "rpc_worker_unavailable"


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `first`, then times `factor` up to `most`; reset after a healthy run."""

    first: float = 0.5
    factor: float = 2.0
    most: float = 30.0
    healthy_after: float = 60.0


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
        self.backoff = backoff or Backoff()
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
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mongars_edge.split.worker",
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
        parent.settimeout(_READY_TIMEOUT_S)
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
        delay = self.backoff.first
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
            if loop.time() - started >= self.backoff.healthy_after:
                delay = self.backoff.first
            log.warning(
                "rpc worker exited; restarting in %.1f s",
                delay,
                extra={"pid": proc.pid, "exit_code": code, "restarts": self.restarts},
            )
            await asyncio.sleep(delay)
            delay = min(delay * self.backoff.factor, self.backoff.most)
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


# -- the child ---------------------------------------------------------------------------

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
# Landlock filesystem rights: execute (0), read file (2) and read dir (3) stay open; the rest
# (writes, removals, creations, refer, truncate, ioctl on devices) are handled, per ABI.
_FS_BITS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}
_FS_READS = (1 << 0) | (1 << 2) | (1 << 3)
_FS_WRITE_FILE, _FS_TRUNCATE = 1 << 1, 1 << 14
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def enter_sandbox(cache_dir: Path, *, port: int = PORT) -> None:
    """Confine this (single-threaded) process: own user+net namespaces with only loopback,
    writes under `cache_dir` only, TCP only on `port`. Irreversible."""
    libc = _libc()
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _check(prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET), "unshare(user, net)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _check(prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    _loopback_up()
    _check(prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _landlock(libc, cache_dir, port)


def _loopback_up() -> None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        (flags,) = struct.unpack_from("H", fcntl.ioctl(s, _SIOCGIFFLAGS, request), 16)
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _landlock(libc: ctypes.CDLL, cache_dir: Path, port: int) -> None:
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise RpcWorkerError(
            "Landlock is not available in this kernel: the RPC worker does not run unconfined"
        )
    fs = ((1 << _FS_BITS_BY_ABI.get(abi, 16)) - 1) & ~_FS_READS
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("<QQQ", fs, net, scoped)
    size = 24 if abi >= 6 else 16
    buf = ctypes.create_string_buffer(attr, 24)
    ruleset = _check(syscall(_SYS_CREATE_RULESET, buf, ctypes.c_size_t(size), 0), "landlock")
    try:
        for path, allowed in ((cache_dir, fs), (Path(os.devnull), fs & _FILE_RIGHTS)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("<Qi", allowed, fd), 12)
                _check(syscall(_SYS_ADD_RULE, ruleset, 1, rule, 0), f"landlock rule {path}")
            finally:
                os.close(fd)
        if net:
            rule = ctypes.create_string_buffer(struct.pack("<QQ", net, port), 16)
            _check(syscall(_SYS_ADD_RULE, ruleset, 2, rule, 0), "landlock port rule")
        _check(syscall(_SYS_RESTRICT_SELF, ruleset, 0), "landlock restrict")
    finally:
        os.close(ruleset)


_FILE_RIGHTS = _FS_WRITE_FILE | _FS_TRUNCATE

_GetMemory = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
_keep: list[object] = []  # callbacks C holds pointers to


def _cap_device_memory(device: int, budget: int) -> None:
    """Make the device report at most `budget` bytes free and total (see the module doc)."""
    slot = ctypes.c_void_p.from_address(device + 2 * ctypes.sizeof(ctypes.c_void_p))
    if not slot.value:
        raise RpcWorkerError("llama.cpp's CPU device has no get_memory function")
    original = _GetMemory(slot.value)

    def capped(
        dev: int, free: ctypes._Pointer[ctypes.c_size_t], total: ctypes._Pointer[ctypes.c_size_t]
    ) -> None:
        original(dev, free, total)
        free[0] = min(free[0], budget)
        total[0] = min(total[0], budget)

    callback = _GetMemory(capped)
    _keep.extend((original, callback))
    slot.value = ctypes.cast(callback, ctypes.c_void_p).value


def _serve(cache_dir: Path | None, budget: int, threads: int) -> threading.Thread:
    import llama_cpp.llama_cpp as L

    import mongars_edge.inference.lowlevel  # noqa: F401  (it closes what llama_cpp opens)
    from mongars_edge.inference.backends import load_backends

    lib_dir = Path(L.__file__).parent / "lib"
    load_backends(L._lib, lib_dir)
    by_type = L._lib.ggml_backend_dev_by_type
    by_type.argtypes, by_type.restype = [ctypes.c_int], ctypes.c_void_p
    cpu = by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not cpu:
        raise RpcWorkerError("llama.cpp has no CPU device")
    _cap_device_memory(cpu, budget)
    rpc = ctypes.CDLL(str(lib_dir / "libggml-rpc.so"))
    start = rpc.ggml_backend_rpc_start_server
    start.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    start.restype = None
    devices = (ctypes.c_void_p * 1)(cpu)
    _keep.append(devices)
    cache = str(cache_dir).encode() if cache_dir is not None else None  # None: no tensor cache
    args = (f"127.0.0.1:{PORT}".encode(), cache, threads, 1, devices)
    thread = threading.Thread(target=start, args=args, name="ggml-rpc", daemon=True)
    thread.start()
    return thread


def _wait_serving(server: threading.Thread) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.is_alive():
            raise RpcWorkerError("llama.cpp's RPC server stopped at start (see its output)")
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=5) as s:
                s.sendall(_HELLO)
                reply = b""
                while len(reply) < 8 + 28:
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    reply += chunk
            if len(reply) == 36:
                return
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ECONNRESET):
                raise
        time.sleep(0.05)
    raise RpcWorkerError("llama.cpp's RPC server did not answer a HELLO in time")


def _child_main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    ctl = socket.socket(fileno=config["fd"])
    cache_dir = Path(config["cache_dir"])
    try:
        enter_sandbox(cache_dir)
        cached = cache_dir if config["cache"] else None
        _wait_serving(_serve(cached, int(config["budget"]), int(config["threads"])))
    except (OSError, MongarsError) as exc:
        with contextlib.suppress(OSError):
            ctl.send(b"E" + str(exc).encode())
        return 1
    ctl.send(b"R")
    print(f"rpc worker {os.getpid()} serving on its private loopback", flush=True)
    while True:
        request = ctl.recv(16)
        if not request:
            return 0
        try:
            conn = socket.create_connection(("127.0.0.1", PORT), timeout=5)
        except OSError as exc:
            ctl.send(b"E" + str(exc).encode())
            continue
        with conn:
            socket.send_fds(ctl, [b"F"], [conn.fileno()])


if __name__ == "__main__":
    code = _child_main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # the server thread is inside C: do not wait for it
