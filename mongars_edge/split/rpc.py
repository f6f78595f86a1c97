"""llama.cpp's RPC backend through ctypes: the host's remote devices and ggml's own server.

ggml's RPC client aborts the whole process when a server is unreachable, answers badly or
speaks another protocol version, so nothing here connects through ggml before `hello` (plain
Python sockets) has checked the server; and the process that loads a split model is a child
the box can lose (see host.py).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mongars_edge.errors import MongarsError, UnavailableError
from mongars_edge.split.rpcwire import RPC_PROTO

__all__ = ["RPC_PROTO"]

_HELLO = 14  # RPC_CMD_HELLO
_DEVICE_MEMORY = 11  # RPC_CMD_GET_DEVICE_MEMORY
_CAPS = 24  # RPC_CONN_CAPS_SIZE: zero caps asks for plain TCP, no transport upgrade
_U64 = struct.Struct("<Q")
_CPU = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


class SplitError(MongarsError):
    """A model split across boxes cannot be set up or has failed; the message says why."""

    kind = "split_error"
    http_status = 503


class RpcVersionError(SplitError):
    """A worker speaks another RPC protocol (another llama.cpp build) than this box."""

    kind = "split_version_mismatch"


class WorkerUnreachableError(SplitError, UnavailableError, ConnectionError):
    """A worker's RPC endpoint does not answer."""

    kind = "split_worker_unreachable"


def proto_text(proto: tuple[int, int, int]) -> str:
    return ".".join(str(p) for p in proto)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SplitError(f"bad RPC endpoint {endpoint!r}: expected HOST:PORT")
    return host, int(port)


def hello(endpoint: str, *, timeout_s: float = 5.0) -> tuple[int, int, int]:
    """The RPC protocol version the server at `endpoint` speaks (a plain HELLO, then close).

    ggml's server serves one client at a time, so this connection is closed before anything
    else connects. WorkerUnreachableError when it does not answer a well-formed HELLO.
    """
    return _ask(endpoint, timeout_s, memory=False)[0]


def device_memory(endpoint: str, *, timeout_s: float = 5.0) -> int:
    """The free memory (bytes) the worker's first device reports, after a checked HELLO."""
    return _ask(endpoint, timeout_s, memory=True)[1]


def _ask(endpoint: str, timeout_s: float, *, memory: bool) -> tuple[tuple[int, int, int], int]:
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(bytes([_HELLO]) + _U64.pack(_CAPS) + bytes(_CAPS))
            size = _U64.unpack(_recv(sock, _U64.size))[0]
            if size != 4 + _CAPS:
                raise WorkerUnreachableError(
                    f"the RPC server at {endpoint} answered HELLO with {size} bytes, not "
                    f"{4 + _CAPS}: it is not a llama.cpp RPC {proto_text(RPC_PROTO)} server"
                )
            reply = _recv(sock, size)
            proto = (reply[0], reply[1], reply[2])
            if not memory:
                return proto, 0
            check_version(endpoint, proto)
            sock.sendall(bytes([_DEVICE_MEMORY]) + _U64.pack(4) + struct.pack("<I", 0))
            if _U64.unpack(_recv(sock, _U64.size))[0] != 16:
                raise WorkerUnreachableError(f"the RPC server at {endpoint} has no device 0")
            free, _total = struct.unpack("<QQ", _recv(sock, 16))
            return proto, int(free)
    except TimeoutError:
        raise WorkerUnreachableError(
            f"the RPC server at {endpoint} gave no answer within {timeout_s:g} s (busy with "
            "another host? llama.cpp's server serves one at a time)"
        ) from None
    except OSError as exc:
        raise WorkerUnreachableError(
            f"the RPC server at {endpoint} does not answer: {exc}"
        ) from None


def _recv(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed in the middle of a reply")
        data += chunk
    return bytes(data)


def check_version(endpoint: str, theirs: tuple[int, int, int]) -> None:
    """RpcVersionError naming both versions unless the worker speaks exactly ours."""
    if theirs != RPC_PROTO:
        raise RpcVersionError(
            f"the worker at {endpoint} runs llama.cpp RPC protocol {proto_text(theirs)}, this "
            f"box {proto_text(RPC_PROTO)}: every box of a split must run the same llama.cpp "
            "build (update the older one)"
        )


@dataclass(frozen=True)
class RemoteDevice:
    """One device a worker serves: ggml's handle, its name and the memory it reports."""

    handle: int
    name: str
    endpoint: str
    free_bytes: int
    total_bytes: int


def _ggml() -> Any:
    """libllama, through which ggml's and ggml-rpc's functions are reached (initialised)."""
    from mongars_edge.inference import lowlevel

    lowlevel.init_backend()
    import llama_cpp.llama_cpp as L

    lib = L._lib
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


def add_server(endpoint: str) -> list[RemoteDevice]:
    """Register a checked worker's devices with ggml (which connects, and aborts if it cannot:
    call `hello` first, in this process's parent when the worker may be lost)."""
    lib = _ggml()
    reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise SplitError(f"the RPC server at {endpoint} offers no device")
    devices = []
    for i in range(int(lib.ggml_backend_reg_dev_count(reg))):
        dev = lib.ggml_backend_reg_dev_get(reg, i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = lib.ggml_backend_dev_name(dev).decode("utf-8", "replace")
        devices.append(RemoteDevice(int(dev), name, endpoint, int(free.value), int(total.value)))
    return devices


def serve_cpu(endpoint: str, cache_dir: Path | None, threads: int) -> None:
    """Run ggml's RPC server on this process's CPU device; returns only if it cannot start.

    For a process of its own (the tests' and the bench's plain worker): it never returns
    while it serves, and holds the GIL only to enter.
    """
    lib = _ggml()
    cpu = lib.ggml_backend_dev_by_type(_CPU)
    if not cpu:
        raise SplitError("llama.cpp has no CPU device to serve")
    devices = (ctypes.c_void_p * 1)(cpu)
    cache = str(cache_dir).encode() if cache_dir is not None else None
    lib.ggml_backend_rpc_start_server(endpoint.encode(), cache, threads, 1, devices)
    raise SplitError(f"the RPC server could not listen on {endpoint}")


def main(argv: list[str] | None = None) -> int:
    """`python -m mongars_edge.split.rpc HOST:PORT [CACHE_DIR]`: a plain, unsandboxed worker."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m mongars_edge.split.rpc HOST:PORT [CACHE_DIR]", file=sys.stderr)
        return 2
    cache = Path(args[1]) if len(args) > 1 else None
    try:
        serve_cpu(args[0], cache, threads=int(__import__("os").environ.get("RPC_THREADS", "2")))
    except SplitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
