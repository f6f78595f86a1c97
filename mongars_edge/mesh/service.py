"""MeshService: the listening socket, links to paired peers, gossip, and serving peer requests.

Opened by the Runtime when the `mesh` setting is on. Everything a peer can send is bounded;
a misbehaving peer costs at most its own link, and each kind of trouble is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mongars_edge.mesh import codec
from mongars_edge.mesh.codec import Msg
from mongars_edge.mesh.dialer import Dialer
from mongars_edge.mesh.errors import (
    AuthError,
    BadMessageError,
    CodecError,
    MeshError,
    PeerUnavailableError,
)
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.members import MemberFile, MemberRecord, MeshState
from mongars_edge.mesh.node import MeshConfig, NodeState
from mongars_edge.mesh.offer import SplitOffer
from mongars_edge.mesh.pairing import serve_pairing
from mongars_edge.mesh.peers import Peer, sanitize
from mongars_edge.mesh.serving import Serving
from mongars_edge.mesh.state import remember_addresses, write_state
from mongars_edge.mesh.transport import HANDSHAKE_TIMEOUT_S, Link, answer, read_frame
from mongars_edge.mesh.tunnel import RPC_MESSAGES, GuardFactory, Tunnel, Worker, llama_build

if TYPE_CHECKING:
    from mongars_edge.inference.engine import Engine
    from mongars_edge.mesh.discovery import Discovery
    from mongars_edge.mesh.router import Router
    from mongars_edge.mesh.share import Share
    from mongars_edge.settings import Settings

log = logging.getLogger(__name__)

MAX_PENDING_HANDSHAKES = 32


class MeshService:
    """One per box; see the module docstring."""

    def __init__(
        self,
        config: MeshConfig,
        data_dir: Path,
        engine: Engine | None,
        *,
        rpc_worker: Worker | None = None,
        rpc_guard: GuardFactory | None = None,
    ) -> None:
        """`rpc_worker`: a worker someone else runs, offered instead of the one the
        `split_offer_mb` setting starts; `rpc_guard`: what checks its streams (RpcGuard)."""
        self.members = MemberFile(data_dir)
        self.node = NodeState(
            config,
            data_dir,
            Identity.load_or_create(data_dir),
            engine,
            self.members.read(),
            self._spawn,
        )
        self._members_mtime = self.members.mtime()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handshakes = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._discovery: Discovery | None = None
        self.share: Share | None = None
        self.serving = Serving(self.node, self._ensure_adapter)
        self.dialer = Dialer(self.node, self._run_link)
        self.tunnel = Tunnel(self.node, build=llama_build(), worker=rpc_worker, guard=rpc_guard)
        self.offer = SplitOffer(self.node, self.tunnel)

    # What the Runtime, the web edge and the tests read: the node's own state.
    @property
    def config(self) -> MeshConfig:
        return self.node.config

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def me(self) -> Identity:
        return self.node.me

    @property
    def engine(self) -> Engine | None:
        return self.node.engine

    @property
    def state(self) -> MeshState:
        return self.node.state

    @property
    def peers(self) -> dict[str, Peer]:
        return self.node.peers

    @property
    def links(self) -> dict[str, Link]:
        return self.node.links

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def forwarded(self) -> int:
        return self.node.forwarded

    @property
    def first_forward_at(self) -> float | None:
        return self.node.first_forward_at

    @property
    def split_problem(self) -> str:
        """Why this box does not offer the memory `split_offer_mb` asks for ("" when it does)."""
        return self.offer.problem

    def split_offers(self) -> dict[str, int]:
        """Linked members offering memory on this box's llama.cpp build (`SplitOffer.offers`)."""
        return self.offer.offers()

    def split_members(self) -> list[tuple[str, int, str]]:
        """Linked members offering memory: (node id, bytes, llama.cpp build), any build."""
        return self.offer.members()

    @property
    def llama_build(self) -> str:
        """This box's llama.cpp build and RPC protocol, as peers compare them."""
        return self.tunnel.build

    async def rpc_endpoint(self, peer_id: str) -> str:
        """ "127.0.0.1:PORT" for llama.cpp's RPC client: each connection becomes a stream to
        `peer_id`'s worker. SplitVersionError naming both builds when the peer runs another."""
        return await self.tunnel.endpoint(peer_id)

    async def _ensure_adapter(self, link: Link, ref: str) -> str:
        return ref if self.share is None else await self.share.ensure(link, ref)

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: MeshConfig,
        data_dir: Path,
        engine: Engine | None,
        *,
        rpc_worker: Worker | None = None,
        rpc_guard: GuardFactory | None = None,
    ) -> AsyncIterator[MeshService]:
        service = await asyncio.to_thread(
            functools.partial(cls, rpc_worker=rpc_worker, rpc_guard=rpc_guard),
            config,
            data_dir,
            engine,
        )
        await service.start()
        try:
            yield service
        finally:
            await service.stop()

    async def start(self) -> None:
        from mongars_edge.mesh.share import Share

        self.share = Share(self.node)
        remember_addresses(self.node)
        config = self.node.config
        bind = None if config.host in ("0.0.0.0", "", "::") else config.host  # noqa: S104
        try:
            self._server = await asyncio.start_server(self._on_connection, bind, config.port)
        except OSError as exc:
            # Another program holds the mesh port: take any free one (mDNS says which).
            log.warning(
                "mesh port %d unavailable (%s); using a free port (set mesh_port to choose)",
                self.node.config.port,
                exc.strerror or exc,
            )
            self._server = await asyncio.start_server(self._on_connection, bind, 0)
        self.node.port = self._server.sockets[0].getsockname()[1]
        await self.offer.start()
        if self.node.config.mdns and _advertise(self.node.config):
            from mongars_edge.mesh.discovery import Discovery

            self._discovery = Discovery(self.node, self.seen)
            await self._discovery.start()
        self._spawn(self._gossip_loop())
        log.info("mesh node %s listening on port %d", self.node.me.node_id, self.node.port)

    async def stop(self) -> None:
        if self._discovery is not None:
            await self._discovery.stop()
        await self.tunnel.stop()
        await self.offer.stop()
        if self._server is not None:
            self._server.close()
        for link in list(self.node.links.values()):
            link.close("shutting down")
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- incoming connections -----------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        where = str(peer[0]) if isinstance(peer, tuple) else "?"
        if self._handshakes >= MAX_PENDING_HANDSHAKES:
            writer.close()
            return
        self._handshakes += 1
        self._writers.add(writer)
        adopted = False
        try:
            first = await read_frame(reader, HANDSHAKE_TIMEOUT_S)
            msg = codec.decode(first)
            if isinstance(msg, codec.HsInit):
                link = await answer(
                    reader,
                    writer,
                    msg,
                    first,
                    self.node.me,
                    self.node.state.key_of,
                    self.node.config.idle_timeout_s,
                )
                adopted = True
                self._handshakes -= 1
                await self._run_link(link)
                return
            if isinstance(msg, codec.PairStart):
                record = await serve_pairing(reader, writer, msg, self.node.me, self.node.data_dir)
                await self._reload_members(force=True)
                self._broadcast(codec.Members([record.to_wire()]))
                return
            raise CodecError(f"unexpected first message {type(msg).__name__}")
        except (MeshError, CodecError) as exc:
            self.node.warn_once(
                f"in:{where}:{exc.kind}", "refused connection from %s: %s", where, exc
            )
        except (ConnectionError, OSError) as exc:
            log.debug("connection from %s failed: %s", where, exc)
        finally:
            self._writers.discard(writer)
            if not adopted:
                self._handshakes -= 1
            writer.close()

    # --- links ----------------------------------------------------------------------------------

    async def _run_link(self, link: Link) -> None:
        """Register `link`, read from it until it closes, then clean up."""
        old = self.node.links.get(link.peer_id)
        if old is not None and not old.closed.is_set():
            # Both sides dialled: keep the link dialled by the smaller node id, on both ends.
            dialler_new = self.node.me.node_id if link.dialled else link.peer_id
            keep_new = dialler_new == min(self.node.me.node_id, link.peer_id)
            if not keep_new:
                link.close("duplicate link")
                return
            old.close("replaced by a newer link")
        self.node.links[link.peer_id] = link
        peer = self.node.peers.setdefault(link.peer_id, Peer(link.peer_id, host=link.address))
        peer.linked, peer.last_error = True, ""
        try:
            link.send(codec.Members([r.to_wire() for r in self.node.state.all_records()]))
            link.send(self._telemetry())
            await link.drain()
            await link.run(self._handle, self._refused)
        except MeshError as exc:
            link.close(str(exc))
        finally:
            self.tunnel.drop(link)
            if self.node.links.get(link.peer_id) is link:
                del self.node.links[link.peer_id]
                peer.linked = False
                peer.last_error = link.close_reason
            self.node.fail_streams(link, link.close_reason)
            self.serving.drop(link)

    def _refused(self, link: Link, exc: BadMessageError) -> None:
        self.node.refused(link, exc)
        self.tunnel.refused(link, exc)

    def _handle(self, link: Link, msg: Msg) -> None:
        if isinstance(msg, RPC_MESSAGES):
            self.tunnel.handle(link, msg)
        elif isinstance(msg, codec.Telemetry):
            peer = self.node.peers.setdefault(link.peer_id, Peer(link.peer_id, host=link.address))
            peer.telemetry, peer.telemetry_at = sanitize(msg), time.monotonic()
            if peer.telemetry.port and not (peer.host and peer.port):
                # A box that dialled us: its address is where the link came from, at the port
                # it listens on (the link's own source port is not one it accepts on).
                peer.host, peer.port = peer.host or link.address, peer.telemetry.port
        elif isinstance(msg, codec.TokenChunk | codec.End | codec.Error):
            self.node.deliver(link, msg.stream_id, msg)
        elif isinstance(msg, codec.InferRequest):
            self.serving.start(link, msg)
        elif isinstance(msg, codec.Cancel):
            self.serving.cancel(link, msg.stream_id)
        elif isinstance(msg, codec.Members):
            self._accept_records(link.peer_id, msg.records)
        elif isinstance(msg, codec.ChunkRequest | codec.Chunk) and self.share is not None:
            self.share.handle(link, msg)
        elif not isinstance(msg, codec.Ping):
            self.node.warn_once(
                f"odd:{link.peer_id}", "ignoring %s from %s", type(msg).__name__, link.peer_id
            )

    def _broadcast(self, msg: Msg) -> None:
        for link in list(self.node.links.values()):
            with contextlib.suppress(PeerUnavailableError):
                link.send(msg)

    # --- membership -------------------------------------------------------------------------------

    def _accept_records(self, sender: str, raw: list[Any]) -> None:
        changed = False
        for item in raw[:1024]:
            try:
                changed |= self.node.state.accept(MemberRecord.from_wire(item), self.node.me)
            except AuthError as exc:
                self.node.warn_once(
                    f"rec:{sender}", "ignoring membership record from %s: %s", sender, exc
                )
        if changed:
            self._spawn(self._save_state())

    async def _save_state(self) -> None:
        snapshot = self.node.state

        def merge() -> None:
            with self.members.changing() as on_disk:
                for rec in snapshot.all_records():
                    with contextlib.suppress(AuthError):
                        on_disk.accept(rec, self.node.me)

        await asyncio.to_thread(merge)
        await self._reload_members(force=True)

    async def _reload_members(self, force: bool = False) -> None:
        mtime = self.members.mtime()
        if not force and mtime == self._members_mtime:
            return
        try:
            state = await asyncio.to_thread(self.members.read)
        except MeshError as exc:
            self.node.warn_once("members", "%s", exc)
            return
        self._members_mtime = mtime
        new_records = [r for k, r in state.records.items() if self.node.state.records.get(k) != r]
        mesh_changed = state.mesh_id != self.node.state.mesh_id
        self.node.state = state
        if mesh_changed and self._discovery is not None:
            self._spawn(self._discovery.refresh())
        for node_id, link in list(self.node.links.items()):
            if state.key_of(node_id) is None:
                link.close("revoked")
        if new_records:
            self._broadcast(codec.Members([r.to_wire() for r in new_records]))

    # --- gossip and state for the CLI ---------------------------------------------------------

    def _telemetry(self) -> codec.Telemetry:
        adapters = self.share.held() if self.share is not None else []
        return self.node.telemetry(adapters, self.offer.budget(), self.tunnel.build)

    async def _gossip_loop(self) -> None:
        while True:
            try:
                await self._reload_members()
                self._broadcast(self._telemetry())
                for link in list(self.node.links.values()):
                    with contextlib.suppress(PeerUnavailableError):
                        await link.drain()
                self.dialer.dial_targets()
                await asyncio.to_thread(write_state, self.node)
            except Exception:  # the loop must outlive any one bad tick
                log.exception("mesh gossip tick failed")
            await asyncio.sleep(self.node.config.gossip_s)

    def seen(self, peer: Peer) -> None:
        """Discovery found or refreshed a box."""
        self.dialer.seen(peer)


def _advertise(config: MeshConfig) -> bool:
    """A box listening on loopback is not on the LAN: it must not advertise anywhere."""
    if config.mdns_interfaces:
        return True
    return not (config.host.startswith("127.") or config.host in ("::1", "localhost"))


@contextlib.asynccontextmanager
async def open_mesh(
    settings: Settings, data_dir: Path, engine: Engine
) -> AsyncIterator[tuple[MeshService, Router]]:
    """The Runtime's entry point: the mesh service and the router in front of `engine`."""
    from mongars_edge.mesh.router import Router

    config = MeshConfig(
        host=settings.host,
        port=settings.mesh_port,
        static_peers=settings.static_peers,
        mdns_interfaces=settings.mdns_interfaces,
        stall_s=settings.mesh_stall_s,
        split_offer_mb=settings.split_offer_mb,
        split_threads=settings.n_threads,
    )
    async with MeshService.open(config, data_dir, engine) as service:
        yield service, Router(engine, service.node)
