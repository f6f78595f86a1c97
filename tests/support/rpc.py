"""A minimal llama.cpp RPC client (protocol 7) for tests and benches: the commands a split
model's weights take (HELLO, ALLOC_BUFFER, BUFFER_GET_BASE, SET_TENSOR, GET_TENSOR), and raw
bytes for forged ones."""

from __future__ import annotations

import asyncio
import struct

from mongars_edge.split.rpctensor import OP_NAMES, TENSOR
from mongars_edge.split.rpcwire import CONN_CAPS, Cmd

_HEAD = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")


def tensor(buffer: int, data: int, n_bytes: int, *, op: str = "NONE", tid: int = 1) -> bytes:
    """A packed `rpc_tensor`: F32, one row of `n_bytes / 4` elements at `data` in `buffer`."""
    n = n_bytes // 4
    return TENSOR.pack(
        tid,
        0,  # GGML_TYPE_F32
        buffer,
        n,
        1,
        1,
        1,
        4,
        4 * n,
        4 * n,
        4 * n,
        OP_NAMES.index(op),
        *([0] * 16),
        0,
        *([0] * 10),
        0,
        0,
        data,
        b"t\0",
        0,
    )


def request(cmd: int, payload: bytes) -> bytes:
    return _HEAD.pack(cmd, len(payload)) + payload


class RpcClient:
    """One connection to an RPC server (directly or through a tunnel endpoint)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, endpoint: str) -> RpcClient:
        host, _, port = endpoint.rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def reply(self) -> bytes:
        (size,) = _U64.unpack(await self.reader.readexactly(8))
        return await self.reader.readexactly(size)

    async def hello(self) -> tuple[int, int, int]:
        await self.send(request(Cmd.HELLO, bytes(CONN_CAPS)))
        raw = await self.reply()
        return raw[0], raw[1], raw[2]

    async def alloc(self, size: int) -> tuple[int, int]:
        """(buffer, its base address) of a new buffer of `size` bytes on device 0."""
        await self.send(request(Cmd.ALLOC_BUFFER, struct.pack("<IQ", 0, size)))
        buffer, _ = struct.unpack("<QQ", await self.reply())
        await self.send(request(Cmd.BUFFER_GET_BASE, _U64.pack(buffer)))
        (base,) = _U64.unpack(await self.reply())
        return buffer, base

    async def set_tensor(self, t: bytes, offset: int, data: bytes) -> None:
        head = t + b"\0" + _U64.pack(offset)
        self.writer.write(_HEAD.pack(Cmd.SET_TENSOR, len(head) + len(data)) + head)
        self.writer.write(data)
        await self.writer.drain()

    async def get_tensor(self, t: bytes, offset: int, size: int) -> bytes:
        await self.send(request(Cmd.GET_TENSOR, t + struct.pack("<QQ", offset, size)))
        return await self.reply()

    async def ended(self) -> bool:
        """Whether the server side closed the connection (the next read is an end of stream)."""
        try:
            return await self.reader.read(1) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()
