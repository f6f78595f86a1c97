"""llama.cpp RPC streams carried inside the mesh: a model split across boxes (issue 16).

llama.cpp's RPC transport is plain TCP with no authentication, and its command decoder has
memory-safety holes, so a box's RPC worker is reachable only through a stream a paired peer
opens on its link, and every byte of it is checked on the way.

Worker side: a peer's RpcOpen opens a connection to this box's worker (`Worker.connect`) and
the stream pumps both ways, every byte through the stream's own guard (`from_client` before
the worker reads it, `from_server` before the peer does). A refusal ends the stream with
RpcClose(reason) and one log line naming the peer and the reason; the refused bytes never
reach the worker.

Host side: `Tunnel.endpoint(peer)` is a loopback listener; each connection accepted there (the
llama.cpp RPC client of this box's inference process) becomes a stream to that peer's worker.
A link that drops closes its streams' local sockets: the client reads an end of stream, it
does not hang.

Flow control: a side never has more than WINDOW bytes of a stream that the other side's local
socket has not taken. The receiver queues what arrives and grants credit back (RpcCredit) as
its socket takes the bytes, so a stream holds at most WINDOW bytes in memory at each end
however fast the other side sends, and the link's reader never waits on a local socket:
telemetry, tokens and other streams keep flowing while weights are being sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from mongars_edge.errors import MongarsError
from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import (
    BadMessageError,
    MeshError,
    PeerUnavailableError,
    SplitVersionError,
)
from mongars_edge.split.rpcwire import RPC_PROTO, RpcGuard

if TYPE_CHECKING:
    from mongars_edge.mesh.node import NodeState
    from mongars_edge.mesh.transport import Link

log = logging.getLogger(__name__)

#: Bytes of one direction of a stream in flight or queued at the receiver, at most.
WINDOW: Final = 2 * 1024 * 1024
#: Credit is granted back in steps of this many bytes (not one RpcCredit per small command).
_GRANT_STEP: Final = WINDOW // 4
#: Streams one peer may hold open to this box's worker (llama.cpp opens one per device).
MAX_STREAMS_PER_LINK: Final = 8
CONNECT_TIMEOUT_S: Final = 10.0
RPC_MESSAGES: Final = (codec.RpcOpen, codec.RpcData, codec.RpcClose, codec.RpcCredit)
_RPC_TAGS: Final = frozenset(m.TAG for m in RPC_MESSAGES)

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Connection]]


class Guard(Protocol):
    """Checks one stream's bytes in order (`split.rpcwire.RpcGuard`); raises MeshError to refuse."""

    def from_client(self, data: bytes) -> None: ...

    def from_server(self, data: bytes) -> None: ...


GuardFactory = Callable[[], Guard]


class Worker(Protocol):
    """This box's llama.cpp RPC server (`split.worker.RpcWorker`)."""

    @property
    def budget_bytes(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    async def connect(self) -> Connection: ...


@functools.cache
def llama_build() -> str:
    """This box's llama.cpp build and RPC protocol, as boxes compare them ("" without llama.cpp)."""
    try:
        import llama_cpp
    except ImportError:
        return ""
    major, minor, patch = RPC_PROTO
    build = f"llama-cpp-python {llama_cpp.__version__}"
    with contextlib.suppress(OSError, AttributeError):
        base = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        base.ggml_version.restype = ctypes.c_char_p
        base.ggml_commit.restype = ctypes.c_char_p
        version, commit = base.ggml_version(), base.ggml_commit()
        build += f" ggml {version.decode()} ({commit.decode()})"
    return f"{build} rpc {major}.{minor}.{patch}"


class _Stream:
    """One RPC connection carried on a link: a local socket at each end."""

    def __init__(self, link: Link, sid: int, guard: Guard | None) -> None:
        self.link = link
        self.sid = sid
        self.guard = guard  # None on the host side: the client is this box's own
        self.inbox: deque[bytes] = deque()
        self.arrived = asyncio.Event()  # data or the end came from the peer
        self.credit = WINDOW  # bytes this side may still send
        self.credited = asyncio.Event()
        self.allowed = WINDOW  # bytes the peer may still send
        self.taken = 0  # bytes our socket took that are not granted back yet
        self.peer_closed: str | None = None
        self.ended = False
        self.task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (id(self.link), self.sid)


class _RefusedError(MeshError):
    """The guard refused a stream's bytes."""


class Tunnel:
    """Every RPC stream of this box: peers' streams to its worker and its own to peers'."""

    def __init__(
        self,
        node: NodeState,
        *,
        build: str,
        worker: Worker | None = None,
        guard: GuardFactory | None = None,
    ) -> None:
        """`guard`: makes each stream's guard (default: `_default_guard`)."""
        self.node = node
        self.build = build
        self.worker = worker
        self._guard = guard
        self._streams: dict[tuple[int, int], _Stream] = {}
        self._listeners: dict[str, asyncio.Server] = {}

    # --- messages from links ------------------------------------------------------------------

    def handle(self, link: Link, msg: codec.Msg) -> None:
        """An RPC message from `link` (never waits: the link's reader goes on at once)."""
        if isinstance(msg, codec.RpcOpen):
            self._open(link, msg.stream_id)
            return
        if not isinstance(msg, codec.RpcData | codec.RpcClose | codec.RpcCredit):
            return
        stream = self._streams.get((id(link), msg.stream_id))
        if stream is None:
            return  # a stream that has just ended here
        if isinstance(msg, codec.RpcData):
            if len(msg.data) > stream.allowed:
                self._refuse(stream, "sent past its flow-control window")
                return
            stream.allowed -= len(msg.data)
            stream.inbox.append(msg.data)
            stream.arrived.set()
        elif isinstance(msg, codec.RpcCredit):
            if stream.credit + msg.grant > WINDOW:
                self._refuse(stream, "granted more credit than the window")
                return
            stream.credit += msg.grant
            stream.credited.set()
        else:
            stream.peer_closed = msg.reason
            stream.arrived.set()
            if msg.reason:
                log.warning(
                    "RPC stream %d with %s ended by the peer: %s",
                    stream.sid,
                    link.peer_id,
                    msg.reason,
                    extra={"peer": link.peer_id, "stream": stream.sid, "reason": msg.reason},
                )

    def refused(self, link: Link, exc: BadMessageError) -> None:
        """A malformed RPC frame named a stream: that stream ends."""
        if exc.tag not in _RPC_TAGS or exc.stream_id is None:
            return
        stream = self._streams.get((id(link), exc.stream_id))
        if stream is not None:
            self._refuse(stream, f"malformed frame ({exc})"[:500])

    def drop(self, link: Link) -> None:
        """`link` is gone: its streams' local sockets close."""
        for stream in [s for s in self._streams.values() if s.link is link]:
            log.debug("RPC stream %d with %s ends with its link", stream.sid, link.peer_id)
            self._end(stream, "")

    async def stop(self) -> None:
        for server in self._listeners.values():
            server.close()
        self._listeners.clear()
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        for stream in list(self._streams.values()):
            self._end(stream, "shutting down")
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- worker side --------------------------------------------------------------------------

    def _open(self, link: Link, sid: int) -> None:
        why = self._why_not_open(link, sid)
        if why:
            log.warning(
                "refused an RPC stream from %s: %s",
                link.peer_id,
                why,
                extra={"peer": link.peer_id, "stream": sid, "reason": why},
            )
            with contextlib.suppress(PeerUnavailableError):
                link.send(codec.RpcClose(sid, why))
            return
        assert self.worker is not None
        try:
            guard = self._guard() if self._guard is not None else self._default_guard()
        except Exception as exc:  # no guard, no stream: nothing unchecked reaches the worker
            log.exception("no RPC guard for a stream of %s", link.peer_id)
            with contextlib.suppress(PeerUnavailableError):
                link.send(codec.RpcClose(sid, f"this box cannot check RPC traffic ({exc})"))
            return
        stream = _Stream(link, sid, guard)
        self._streams[stream.key] = stream
        stream.task = self.node.spawn(self._serve(stream, self.worker.connect))

    def _default_guard(self) -> Guard:
        """RpcGuard bounded by the worker's budget, checking cached tensors against its cache."""
        assert self.worker is not None
        cached: Callable[[int], int | None] | None = getattr(self.worker, "cached_size", None)
        return RpcGuard(budget_bytes=self.worker.budget_bytes, cached_size=cached)

    def _why_not_open(self, link: Link, sid: int) -> str:
        """Why a peer's RpcOpen is refused ("" when it is not)."""
        if sid % 2 != (0 if link.dialled else 1):
            return f"stream id {sid} is not one the peer may start"
        if (id(link), sid) in self._streams:
            return f"stream id {sid} is already open"
        if self.node.key_of(link.peer_id) is None:
            return "not paired with this box"
        if self.worker is None:
            return "this box offers no memory for splitting a model (split_offer_mb is 0)"
        if not self.worker.alive:
            return "this box's RPC worker is restarting; try again"
        held = sum(1 for s in self._streams.values() if s.link is link)
        if held >= MAX_STREAMS_PER_LINK:
            return f"too many RPC streams open (at most {MAX_STREAMS_PER_LINK})"
        return ""

    async def _serve(self, stream: _Stream, connect: Connect) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await connect()
        except (MongarsError, OSError, TimeoutError) as exc:
            self._end(stream, f"this box's RPC worker is not available ({exc})")
            return
        await self._pump(stream, reader, writer)

    # --- host side ----------------------------------------------------------------------------

    async def endpoint(self, peer_id: str) -> str:
        """ "127.0.0.1:PORT": each connection accepted there is a stream to `peer_id`'s worker.
        MeshError when there is no link, the peer runs another llama.cpp build (both named) or
        offers no memory."""
        self._usable(peer_id, budget=True)
        server = self._listeners.get(peer_id)
        if server is None:
            accept = functools.partial(self._accept, peer_id)
            server = await asyncio.start_server(accept, "127.0.0.1", 0)
            if peer_id in self._listeners:  # another caller opened one meanwhile
                server.close()
                server = self._listeners[peer_id]
            self._listeners[peer_id] = server
        host, port = server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    def _usable(self, peer_id: str, *, budget: bool) -> Link:
        link = self.node.links.get(peer_id)
        if link is None or link.closed.is_set():
            raise PeerUnavailableError(f"no link to {peer_id}: it is not paired, or unreachable")
        peer = self.node.peers.get(peer_id)
        telemetry = peer.telemetry if peer is not None else None
        if telemetry is None:
            raise PeerUnavailableError(f"no telemetry from {peer_id} yet")
        if telemetry.llama_build != self.build:
            theirs = telemetry.llama_build or "a build without llama.cpp RPC"
            raise SplitVersionError(
                f"{peer_id} runs {theirs}, this box {self.build}: boxes that split a model "
                "must run the same llama.cpp build (update the older one)"
            )
        if budget and not telemetry.split_budget:
            raise MeshError(
                f"{peer_id} offers no memory for splitting a model "
                "(its split_offer_mb is 0, or its worker is restarting)"
            )
        return link

    async def _accept(
        self, peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            link = self._usable(peer_id, budget=False)
        except MeshError as exc:
            self.node.warn_once(f"rpc:{peer_id}", "no RPC stream to %s: %s", peer_id, exc)
            writer.close()
            return
        stream = _Stream(link, link.new_id(), None)
        self._streams[stream.key] = stream
        try:
            link.send(codec.RpcOpen(stream.sid))
        except PeerUnavailableError:
            self._end(stream, "")
            writer.close()
            return
        # Its own task, which `_end` may cancel: asyncio's server must not see this one end
        # cancelled (it asks the handler's task for its exception).
        stream.task = self.node.spawn(self._pump(stream, reader, writer))
        await asyncio.wait({stream.task})

    # --- both sides ---------------------------------------------------------------------------

    async def _pump(
        self, stream: _Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Carry bytes both ways until either side ends the stream; the local socket closes."""
        up = asyncio.ensure_future(self._to_peer(stream, reader))
        down = asyncio.ensure_future(self._from_peer(stream, writer))
        reason = ""
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            reason = next(iter(done)).result()
        finally:
            up.cancel()
            down.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            writer.close()
            self._end(stream, reason, cancel=False)

    async def _to_peer(self, stream: _Stream, reader: asyncio.StreamReader) -> str:
        """Local socket -> link, within the peer's credit; the reason the stream ended."""
        try:
            while True:
                while stream.credit <= 0:
                    stream.credited.clear()
                    await stream.credited.wait()
                data = await reader.read(min(stream.credit, codec.RPC_CHUNK))
                if not data:
                    return ""
                if stream.guard is not None:
                    self._check(stream, stream.guard.from_server, data)
                stream.link.send(codec.RpcData(stream.sid, data))
                stream.credit -= len(data)
                await stream.link.drain()
        except _RefusedError as exc:
            return str(exc)
        except PeerUnavailableError:
            return ""
        except (ConnectionError, OSError) as exc:
            return f"local connection lost ({exc})"

    async def _from_peer(self, stream: _Stream, writer: asyncio.StreamWriter) -> str:
        """Link -> local socket, granting credit back as it takes the bytes."""
        try:
            while True:
                while not stream.inbox:
                    if stream.peer_closed is not None:
                        return stream.peer_closed
                    stream.arrived.clear()
                    await stream.arrived.wait()
                data = stream.inbox.popleft()
                if stream.guard is not None:
                    self._check(stream, stream.guard.from_client, data)
                writer.write(data)
                await writer.drain()
                stream.taken += len(data)
                if stream.taken >= _GRANT_STEP:
                    stream.link.send(codec.RpcCredit(stream.sid, stream.taken))
                    stream.allowed += stream.taken
                    stream.taken = 0
        except _RefusedError as exc:
            return str(exc)
        except PeerUnavailableError:
            return ""
        except (ConnectionError, OSError) as exc:
            return f"local connection lost ({exc})"

    def _check(self, stream: _Stream, check: Callable[[bytes], None], data: bytes) -> None:
        """Pass `data` through the guard; _RefusedError (logged) when it refuses."""
        try:
            check(data)
        except Exception as exc:  # a guard that fails refuses too: nothing unchecked gets by
            why = str(exc) or type(exc).__name__
            if not isinstance(exc, MeshError):
                log.exception("the RPC guard failed on a stream of %s", stream.link.peer_id)
            self._log_refusal(stream, why)
            raise _RefusedError(why[:1000]) from None

    def _refuse(self, stream: _Stream, why: str) -> None:
        self._log_refusal(stream, why)
        self._end(stream, why)

    def _log_refusal(self, stream: _Stream, why: str) -> None:
        log.warning(
            "refused RPC stream %d of %s: %s",
            stream.sid,
            stream.link.peer_id,
            why,
            extra={"peer": stream.link.peer_id, "stream": stream.sid, "reason": why},
        )

    def _end(self, stream: _Stream, reason: str, *, cancel: bool = True) -> None:
        """The stream is over: forget it, tell the peer unless it ended it, stop its pumps."""
        if stream.ended:
            return
        stream.ended = True
        self._streams.pop(stream.key, None)
        if stream.peer_closed is None and not stream.link.closed.is_set():
            with contextlib.suppress(PeerUnavailableError):
                stream.link.send(codec.RpcClose(stream.sid, reason[:1000]))
        if cancel and stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()
