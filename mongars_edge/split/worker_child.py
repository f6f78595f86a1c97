"""The RPC worker's child process: it confines itself, then runs llama.cpp's own RPC server
(`ggml_backend_rpc_start_server`); `worker.RpcWorker` starts and supervises it.

The sandbox, entered before any thread starts:
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

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from mongars_edge.errors import MongarsError
from mongars_edge.split.worker import READY_TIMEOUT_S, RpcWorkerError

PORT = 50052  # inside the child's own network namespace: nobody else's port
_HELLO = bytes([14]) + struct.pack("<Q", 24) + bytes(24)
_DATA_ROOM = 256 << 20  # beyond the budget: thread stacks, graph scratch, the cache file reads
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


def _limit_data(budget: int) -> None:
    """Cap the child's data (heap and private mappings) at what it holds now, the budget and
    some room for compute threads: a buffer beyond the budget fails to allocate (the client
    gets a clean allocation failure) instead of pushing the box into swap or the OOM killer."""
    import resource

    status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    now = next(
        int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmData:")
    )
    limit = now + budget + _DATA_ROOM
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


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
    _limit_data(budget)
    cache = str(cache_dir).encode() if cache_dir is not None else None  # None: no tensor cache
    args = (f"127.0.0.1:{PORT}".encode(), cache, threads, 1, devices)
    thread = threading.Thread(target=start, args=args, name="ggml-rpc", daemon=True)
    thread.start()
    return thread


def _wait_serving(server: threading.Thread) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
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
