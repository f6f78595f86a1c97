"""A guard on llama.cpp's RPC protocol (v7): it reads both directions of one connection and
refuses, before the worker sees it, what a model split never sends.

Written from ggml-rpc.cpp of the build we ship (the protocol's only spec). Framing: a request
is `cmd (u8) | size (u64) | payload`, a reply `size (u64) | payload`; replies come back in the
order of the requests that have one. The guard knows every command's payload and reply shape,
learns the buffers the worker allocated on this connection (ALLOC_BUFFER and BUFFER_GET_BASE
replies, forgotten on FREE_BUFFER) and checks each tensor against them: the server turns many
bad tensors into an abort (GGML_ASSERT) or worse, so a worker behind the guard only sees tensors
whose type, shape, data range and graph operation are ones llama.cpp itself produces (the
checks that need no connection state are in `rpctensor`).

Pure: bytes in, RpcRefused out, no I/O. Weights stream through SET_TENSOR without a copy.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from mongars_edge.mesh.errors import MeshError
from mongars_edge.split.rpctensor import (
    TENSOR,
    RpcTensor,
    T,
    shape_problem,
    tensor_nbytes,
    tensor_of,
    tensor_problem,
    type_table,
    unpack_tensor,
)

RPC_PROTO: tuple[int, int, int] = (7, 0, 0)
_Handler: TypeAlias = Callable[[memoryview], None]


class RpcRefused(MeshError):
    """Traffic the guard will not pass; the message says what and why, and the stream ends."""

    kind = "rpc_refused"


class Cmd(IntEnum):
    """ggml-rpc.cpp's `enum rpc_cmd`."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17


CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE (transport.h)
_HEADER = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")
_SET_TENSOR_HEAD = T + 1 + 8  # rpc_tensor | cache_flag | offset, then the data

# Request payload sizes; None: variable (SET_TENSOR, GRAPH_COMPUTE).
_REQUEST_SIZE: dict[Cmd, int | None] = {
    Cmd.HELLO: CONN_CAPS,
    Cmd.DEVICE_COUNT: 0,
    Cmd.ALLOC_BUFFER: 4 + 8,
    Cmd.GET_ALLOC_SIZE: 4 + T * 11,
    Cmd.GET_ALIGNMENT: 4,
    Cmd.GET_MAX_SIZE: 4,
    Cmd.BUFFER_GET_BASE: 8,
    Cmd.FREE_BUFFER: 8,
    Cmd.BUFFER_CLEAR: 9,
    Cmd.MEMSET_TENSOR: T + 8 + 8 + 1,
    Cmd.SET_TENSOR: None,
    Cmd.SET_TENSOR_HASH: T + 8 + 8,
    Cmd.INIT_TENSOR: T,
    Cmd.GET_TENSOR: T + 8 + 8,
    Cmd.COPY_TENSOR: 2 * T,
    Cmd.GRAPH_COMPUTE: None,
    Cmd.GRAPH_RECOMPUTE: 4,
    Cmd.GET_DEVICE_MEMORY: 4,
}
_DEVICE_ONLY = frozenset(
    {Cmd.GET_ALIGNMENT, Cmd.GET_MAX_SIZE, Cmd.GET_DEVICE_MEMORY, Cmd.GRAPH_RECOMPUTE}
)
# Reply payload sizes of the commands that have one (GET_TENSOR's is the size it asked for).
_REPLY_SIZE: dict[Cmd, int] = {
    Cmd.HELLO: 4 + CONN_CAPS,
    Cmd.DEVICE_COUNT: 4,
    Cmd.ALLOC_BUFFER: 16,
    Cmd.GET_ALLOC_SIZE: 8,
    Cmd.GET_ALIGNMENT: 8,
    Cmd.GET_MAX_SIZE: 8,
    Cmd.BUFFER_GET_BASE: 8,
    Cmd.SET_TENSOR_HASH: 1,
    Cmd.COPY_TENSOR: 1,
    Cmd.GET_DEVICE_MEMORY: 16,
}
_MAX_DEVICES = 16  # GGML_RPC_MAX_SERVERS: more devices than this is no real server
_MAX_GRAPH_DEPTH = 8192  # the server builds a graph by recursion on its own stack
DEFAULT_MAX_MESSAGE = 1 << 31  # the largest single tensor write a split model sends


@dataclass
class _Buffer:
    size: int
    base: int | None = None


class RpcGuard:
    """Checks one RPC connection, both directions, fed in chunks of any size.

    `max_message` bounds any one request or reply; `budget_bytes`, when set, bounds the sum of
    the buffers the client may ask the worker to allocate on this connection; `cached_size`,
    when set, gives the size of the worker's cached tensor for a hash (None: not cached), so
    that SET_TENSOR_HASH is checked too (`RpcWorker.cached_size`).
    """

    def __init__(
        self,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        budget_bytes: int | None = None,
        cached_size: Callable[[int], int | None] | None = None,
    ) -> None:
        self.max_message = max_message
        self.budget_bytes = budget_bytes
        self._cached_size = cached_size
        self.refused: str | None = None
        self._types = type_table()
        self._buffers: dict[int, _Buffer] = {}
        self._devices: int | None = None
        self._hello = False
        self._replies: deque[tuple[Cmd, int]] = deque()  # (command, its argument)
        self._client = _Reader(9, self._on_request)
        self._server = _Reader(8, self._on_reply_size)

    # -- the two directions --------------------------------------------------------------

    def from_client(self, data: bytes | bytearray | memoryview) -> None:
        """Feed host->worker bytes; raises RpcRefused (and refuses everything after)."""
        self._feed(self._client, data)

    def from_server(self, data: bytes | bytearray | memoryview) -> None:
        """Feed worker->host bytes (the guard learns buffers from the replies)."""
        self._feed(self._server, data)

    def _feed(self, reader: _Reader, data: bytes | bytearray | memoryview) -> None:
        if self.refused is not None:
            raise RpcRefused(f"RPC stream already refused: {self.refused}")
        try:
            reader.feed(data)
        except RpcRefused as exc:
            self.refused = str(exc)
            raise

    # -- requests --------------------------------------------------------------------------

    def _on_request(self, head: memoryview) -> None:
        cmd_byte, size = _HEADER.unpack(head)
        try:
            cmd = Cmd(cmd_byte)
        except ValueError:
            raise RpcRefused(f"unknown RPC command {cmd_byte}") from None
        if not self._hello and cmd is not Cmd.HELLO:
            raise RpcRefused(f"RPC command {cmd.name} before HELLO")
        if self._hello and cmd is Cmd.HELLO:
            raise RpcRefused("a second RPC HELLO on one connection")
        if size > self.max_message:
            raise RpcRefused(
                f"RPC {cmd.name} of {size} bytes is larger than the limit ({self.max_message})"
            )
        want = _REQUEST_SIZE[cmd]
        if cmd is Cmd.HELLO and size != want:
            raise RpcRefused(
                f"RPC HELLO of {size} bytes: the client does not speak RPC protocol "
                f"{_version(RPC_PROTO)} (its HELLO has {want} bytes); both boxes need the same "
                "llama.cpp build"
            )
        if want is not None and size != want:
            raise RpcRefused(f"RPC {cmd.name} of {size} bytes, expected {want}")
        if cmd is Cmd.SET_TENSOR:
            if size < _SET_TENSOR_HEAD:
                raise RpcRefused(f"RPC SET_TENSOR of {size} bytes has no room for its header")
            self._client.expect(_SET_TENSOR_HEAD, lambda p: self._set_tensor(p, size))
        elif size == 0:
            self._request(cmd, memoryview(b""))
        else:
            self._client.expect(size, lambda p: self._request(cmd, p))

    def _request(self, cmd: Cmd, p: memoryview) -> None:
        arg = 0
        if cmd is Cmd.HELLO:
            if any(p):
                raise RpcRefused("RPC HELLO asks for a transport upgrade (RDMA): refused")
            self._hello = True
        elif cmd in _DEVICE_ONLY:
            self._device(_u32(p, 0))
        elif cmd is Cmd.ALLOC_BUFFER:
            self._device(_u32(p, 0))
            arg = _U64.unpack_from(p, 4)[0]
            held = sum(b.size for b in self._buffers.values())
            if self.budget_bytes is not None and held + arg > self.budget_bytes:
                raise RpcRefused(
                    f"RPC ALLOC_BUFFER of {arg} bytes: with {held} already held it exceeds "
                    f"this worker's budget of {self.budget_bytes} bytes"
                )
        elif cmd in (Cmd.BUFFER_GET_BASE, Cmd.FREE_BUFFER, Cmd.BUFFER_CLEAR):
            arg = _U64.unpack_from(p, 0)[0]
            if arg not in self._buffers:
                raise RpcRefused(f"RPC {cmd.name} of buffer {arg:#x}, not allocated here")
            if cmd is Cmd.FREE_BUFFER:
                del self._buffers[arg]
        elif cmd is Cmd.GET_ALLOC_SIZE:
            self._device(_u32(p, 0))
            self._tensor(unpack_tensor(p, 4), "GET_ALLOC_SIZE", need_buffer=False)
            for i in range(1, 11):
                src = unpack_tensor(p, 4 + T * i)
                if src.id:
                    self._tensor(src, "GET_ALLOC_SIZE source", need_buffer=False)
        elif cmd is Cmd.INIT_TENSOR:
            self._tensor(unpack_tensor(p), "INIT_TENSOR", need_buffer=False)
        elif cmd in (Cmd.GET_TENSOR, Cmd.MEMSET_TENSOR):
            offset, size = struct.unpack_from("<QQ", p, T)
            tensor = unpack_tensor(p)
            self._range(tensor, offset, size, cmd.name)
            arg = size
        elif cmd is Cmd.SET_TENSOR_HASH:
            # The server writes the cached file, whatever its size, at the offset: one larger
            # than the rest of the tensor aborts it (ggml_backend_tensor_set asserts), one
            # smaller (truncated when its disk filled) would leave the tensor half written.
            # llama.cpp hashes whole tensors: the file must fill the tensor from the offset.
            tensor = unpack_tensor(p)
            offset, digest = struct.unpack_from("<QQ", p, T)
            self._range(tensor, offset, 0, cmd.name)
            size = self._cached_size(digest) if self._cached_size is not None else None
            if size is not None:
                self._range(tensor, offset, size, cmd.name)
                nbytes = self._tensor(tensor, cmd.name, need_buffer=True)
                if offset + size != nbytes:
                    raise RpcRefused(
                        f"RPC SET_TENSOR_HASH: the cached tensor {digest:016x} has {size} bytes, "
                        f"the tensor needs {nbytes - offset} (a damaged cache file?)"
                    )
        elif cmd is Cmd.COPY_TENSOR:
            copied = self._tensor(unpack_tensor(p), "COPY_TENSOR source", need_buffer=True)
            dst = unpack_tensor(p, T)
            self._tensor(dst, "COPY_TENSOR destination", need_buffer=True)
            if dst.data + copied > self._buffer_end(dst):
                raise RpcRefused("RPC COPY_TENSOR writes past the end of its destination buffer")
        elif cmd is Cmd.GRAPH_COMPUTE:
            self._graph(p)
        if cmd in _REPLY_SIZE or cmd is Cmd.GET_TENSOR:
            self._replies.append((cmd, arg))

    def _set_tensor(self, head: memoryview, size: int) -> None:
        tensor = unpack_tensor(head)
        offset = _U64.unpack_from(head, T + 1)[0]
        data = size - _SET_TENSOR_HEAD
        self._range(tensor, offset, data, "SET_TENSOR")
        self._client.skip(data)  # the weights themselves: counted, never copied

    # -- replies ---------------------------------------------------------------------------

    def _on_reply_size(self, head: memoryview) -> None:
        (size,) = _U64.unpack(head)
        if not self._replies:
            raise RpcRefused(f"the RPC worker sent a reply of {size} bytes nobody asked for")
        cmd, arg = self._replies.popleft()
        want = arg if cmd is Cmd.GET_TENSOR else _REPLY_SIZE[cmd]
        if size != want:
            raise RpcRefused(f"the RPC worker's {cmd.name} reply has {size} bytes, not {want}")
        if cmd is Cmd.GET_TENSOR:
            self._server.skip(size)
        else:
            self._server.expect(size, lambda p: self._reply(cmd, arg, p))

    def _reply(self, cmd: Cmd, arg: int, p: memoryview) -> None:
        if cmd is Cmd.HELLO:
            version = (p[0], p[1], p[2])
            if version != RPC_PROTO:
                raise RpcRefused(
                    f"the RPC worker speaks protocol {_version(version)}, this box "
                    f"{_version(RPC_PROTO)}: both boxes need the same llama.cpp build"
                )
            if any(p[4:]):
                raise RpcRefused("the RPC worker offers a transport upgrade (RDMA): refused")
        elif cmd is Cmd.DEVICE_COUNT:
            count = _u32(p, 0)
            if not 0 < count <= _MAX_DEVICES:
                raise RpcRefused(f"the RPC worker reports {count} devices")
            self._devices = count
        elif cmd is Cmd.ALLOC_BUFFER:
            ptr, size = struct.unpack_from("<QQ", p)
            if ptr:
                if ptr in self._buffers:
                    raise RpcRefused(f"the RPC worker returned buffer {ptr:#x} twice")
                if size < arg:
                    raise RpcRefused(f"the RPC worker gave {size} bytes for {arg} asked")
                self._buffers[ptr] = _Buffer(size)
        elif cmd is Cmd.BUFFER_GET_BASE:
            (base,) = _U64.unpack_from(p)
            buffer = self._buffers.get(arg)
            if buffer is not None:  # else freed meanwhile
                if base == 0 or base + buffer.size >= 2**64:
                    raise RpcRefused(f"the RPC worker gave base {base:#x} for buffer {arg:#x}")
                buffer.base = base

    # -- checks ----------------------------------------------------------------------------

    def _device(self, device: int) -> None:
        if device >= (self._devices or 1):
            raise RpcRefused(f"RPC device {device} does not exist on this worker")

    def _buffer_end(self, tensor: RpcTensor) -> int:
        buffer = self._buffers[tensor.buffer]
        assert buffer.base is not None
        return buffer.base + buffer.size

    def _tensor(self, t: RpcTensor, what: str, *, need_buffer: bool) -> int:
        """Refuse a tensor the server could not handle safely; its size in bytes."""
        problem = tensor_problem(t, self._types)
        if problem is not None:
            raise RpcRefused(f"RPC {what}: {problem}")
        nbytes = tensor_nbytes(t, *self._types[t.type])
        if t.buffer == 0:
            if need_buffer or t.data:
                raise RpcRefused(f"RPC {what}: tensor {t.id:#x} is in no buffer of this worker")
            return nbytes
        buffer = self._buffers.get(t.buffer)
        if buffer is None:
            raise RpcRefused(f"RPC {what}: buffer {t.buffer:#x} was not allocated here")
        if buffer.base is None:
            raise RpcRefused(f"RPC {what}: buffer {t.buffer:#x} used before its base was read")
        if not buffer.base <= t.data <= t.data + nbytes <= buffer.base + buffer.size:
            raise RpcRefused(
                f"RPC {what}: tensor data [{t.data:#x}, +{nbytes}) is outside its buffer "
                f"[{buffer.base:#x}, +{buffer.size})"
            )
        return nbytes

    def _range(self, t: RpcTensor, offset: int, size: int, what: str) -> None:
        nbytes = self._tensor(t, what, need_buffer=True)
        if offset + size > nbytes or (nbytes and offset >= nbytes):
            raise RpcRefused(
                f"RPC {what}: bytes [{offset}, +{size}) are outside the tensor's {nbytes}"
            )

    def _graph(self, p: memoryview) -> None:
        if len(p) < 12:
            raise RpcRefused("RPC GRAPH_COMPUTE too short")
        device, n_nodes = struct.unpack_from("<II", p)
        self._device(device)
        after_nodes = 8 + 8 * n_nodes
        if len(p) < after_nodes + 4:
            raise RpcRefused("RPC GRAPH_COMPUTE shorter than its node list")
        nodes = struct.unpack_from(f"<{n_nodes}Q", p, 8)
        (n_tensors,) = struct.unpack_from("<I", p, after_nodes)
        if len(p) != after_nodes + 4 + n_tensors * T:
            raise RpcRefused(
                f"RPC GRAPH_COMPUTE of {len(p)} bytes does not hold {n_tensors} tensors"
            )
        depth: dict[int, int] = {}
        sent: dict[int, RpcTensor] = {}
        body = p[after_nodes + 4 :]
        for fields in TENSOR.iter_unpack(body):
            t = tensor_of(fields)
            if t.id == 0 or t.id in depth:
                raise RpcRefused(f"RPC GRAPH_COMPUTE: tensor id {t.id:#x} is zero or repeated")
            self._tensor(t, "GRAPH_COMPUTE", need_buffer=True)
            level = 0
            for ref in (*t.src, t.view_src):
                if ref:
                    if ref not in depth:  # sources come first: no cycle, no dangling id
                        raise RpcRefused(
                            f"RPC GRAPH_COMPUTE: tensor {t.id:#x} uses {ref:#x}, not sent before it"
                        )
                    level = max(level, depth[ref])
            if level >= _MAX_GRAPH_DEPTH:
                raise RpcRefused("RPC GRAPH_COMPUTE: graph deeper than any model's")
            depth[t.id] = level + 1
            sent[t.id] = t
            problem = shape_problem(t, [sent[i] if i else None for i in t.src[:4]])
            if problem is not None:
                raise RpcRefused(f"RPC GRAPH_COMPUTE: {problem}")
        if len(set(nodes)) != n_nodes or not all(node in depth for node in nodes):
            raise RpcRefused("RPC GRAPH_COMPUTE: graph nodes repeated, zero or not sent")


def _u32(p: memoryview, offset: int) -> int:
    return int(struct.unpack_from("<I", p, offset)[0])


def _version(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


class _Reader:
    """Cuts a byte stream into the pieces the guard asks for: `expect(n, handler)` gathers n
    bytes and calls handler; `skip(n)` lets n bytes pass unexamined; otherwise a header of
    `head` bytes goes to `on_head`."""

    def __init__(self, head: int, on_head: _Handler) -> None:
        self._head = head
        self._on_head = on_head
        self._want = head
        self._handler: _Handler = on_head
        self._buf = bytearray()
        self._skip = 0

    def expect(self, n: int, handler: _Handler) -> None:
        self._want, self._handler = n, handler

    def skip(self, n: int) -> None:
        self._skip = n

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            need = self._want - len(self._buf)
            if not self._buf and end - pos >= need:  # whole piece in this chunk: no copy
                piece = view[pos : pos + need]
                pos += need
            else:
                take = min(need, end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < self._want:
                    return
                piece = memoryview(bytes(self._buf))
                self._buf.clear()
            handler = self._handler
            self._want, self._handler = self._head, self._on_head
            handler(piece)
