"""asyncio TCP for the mesh: frames on streams, the handshake, one dispatching link per peer.

A `Link` is one authenticated connection. Its reader task hands every message to the service;
streams and chunk requests started by this side get odd or even ids depending on who dialled,
so both sides can start them on the same connection. Nothing a peer sends can raise out of
the reader: a frame holding no valid message is refused (the service answers it and logs it
once) and the link goes on; a broken byte stream or a forged frame closes the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from mongars_edge.mesh import codec
from mongars_edge.mesh.channel import Initiator, KeyLookup, Responder, Session
from mongars_edge.mesh.codec import Msg
from mongars_edge.mesh.errors import (
    AuthError,
    BadMessageError,
    CodecError,
    MeshError,
    PeerTimeoutError,
    PeerUnavailableError,
)
from mongars_edge.mesh.identity import Identity

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S: Final = 5.0
Handler = Callable[["Link", Msg], Awaitable[None] | None]
Refused = Callable[["Link", BadMessageError], None]


async def read_frame(reader: asyncio.StreamReader, limit_s: float) -> bytes:
    """One frame's payload; PeerTimeoutError, PeerUnavailableError or CodecError."""
    try:
        async with asyncio.timeout(limit_s):
            header = await reader.readexactly(codec.HEADER_SIZE)
            return await reader.readexactly(codec.frame_length(header))
    except TimeoutError:
        raise PeerTimeoutError(f"peer sent nothing for {limit_s:g} s") from None
    except asyncio.IncompleteReadError:
        raise PeerUnavailableError("peer closed the connection") from None
    except (ConnectionError, OSError) as exc:
        raise PeerUnavailableError(f"connection lost ({exc})") from None


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(codec.frame(payload))


def keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive and no Nagle delay: tokens are small and should leave at once."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class Link:
    """One authenticated, encrypted connection to a peer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        *,
        dialled: bool,
        idle_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        self.peer_id = session.peer_id
        self.idle_timeout = idle_timeout
        self.dialled = dialled
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._ids = itertools.count(1 if dialled else 2, 2)
        peer = writer.get_extra_info("peername")
        self.address: str = peer[0] if isinstance(peer, tuple) else "?"

    def new_id(self) -> int:
        """An id for a stream or chunk request started by this side."""
        return next(self._ids)

    def send(self, msg: Msg) -> None:
        """Queue a message; a closed link drops it (the caller learns from `closed`)."""
        if self.closed.is_set() or self.writer.is_closing():
            raise PeerUnavailableError(f"link to {self.peer_id} is closed")
        write_frame(self.writer, self.session.seal(msg))

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self.close(f"write failed: {exc}")
            raise PeerUnavailableError(f"link to {self.peer_id} lost") from None

    async def run(self, handler: Handler, refused: Refused | None = None) -> None:
        """Read and dispatch until the link dies; never raises for peer behaviour. An authentic
        frame that holds no valid message goes to `refused` and the link goes on."""
        try:
            while not self.closed.is_set():
                payload = await read_frame(self.reader, self.idle_timeout)
                try:
                    msg = self.session.open(payload)
                except BadMessageError as exc:
                    if refused is None:
                        log.debug("refused a frame from %s: %s", self.peer_id, exc)
                    else:
                        refused(self, exc)
                    continue
                result = handler(self, msg)
                if result is not None:
                    await result
        except (MeshError, CodecError) as exc:
            self.close(str(exc))
        finally:
            self.close(self.close_reason or "reader stopped")

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
            log.debug("link to %s closed: %s", self.peer_id, reason)
        with contextlib.suppress(Exception):
            self.writer.close()


async def dial(
    host: str,
    port: int,
    me: Identity,
    keys: KeyLookup,
    *,
    expect: str | None = None,
    idle_timeout: float = 5.0,
) -> Link:
    """Connect and authenticate; AuthError for strangers, PeerUnavailableError if unreachable."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailableError(f"cannot reach {host}:{port} ({exc})") from None
    try:
        keepalive(writer)
        init = Initiator(me, keys, expect)
        write_frame(writer, init.hello())
        reply = await read_frame(reader, HANDSHAKE_TIMEOUT_S)
        auth, session = init.finish(reply)
        write_frame(writer, auth)
        await writer.drain()
    except BaseException:
        writer.close()
        raise
    return Link(reader, writer, session, dialled=True, idle_timeout=idle_timeout)


async def answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: codec.HsInit,
    first_bytes: bytes,
    me: Identity,
    keys: KeyLookup,
    idle_timeout: float,
) -> Link:
    """The responder side of the handshake, after the first frame was read."""
    responder = Responder(me, keys)
    try:
        reply = responder.respond(first, first_bytes)
    except AuthError as exc:
        write_frame(writer, codec.encode(codec.Error(0, exc.kind, str(exc))))
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        raise
    write_frame(writer, reply)
    await writer.drain()
    session = responder.finish(await read_frame(reader, HANDSHAKE_TIMEOUT_S))
    keepalive(writer)
    return Link(reader, writer, session, dialled=False, idle_timeout=idle_timeout)
