"""The links this box keeps: to members seen by mDNS, to members paired through an address
(`pair --join --peer`) and to static peers, each redialled with backoff after a failure."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from mongars_edge.backoff import Backoff
from mongars_edge.mesh.errors import CodecError, MeshError
from mongars_edge.mesh.node import NodeState
from mongars_edge.mesh.peers import Peer, split_address
from mongars_edge.mesh.transport import Link, dial

MAX_PEERS: Final = 256

#: Registers a new link and reads from it until it closes (the service's link loop).
Adopt = Callable[[Link], Coroutine[Any, Any, None]]


class Dialer:
    """Fills the peer table from discovery and dials the boxes in it this one should link to."""

    def __init__(self, node: NodeState, adopt: Adopt) -> None:
        self.node = node
        self._adopt = adopt
        self._dialling: set[str] = set()
        self._backoff: dict[str, tuple[Backoff, float]] = {}
        self._static_ids: dict[str, str] = {}  # static address -> the node id found there

    def targets(self) -> list[tuple[str, str, int]]:
        """(key, host, port) of boxes we should hold a link to."""
        out = []
        for peer in self.node.peers.values():
            if peer.host and peer.port and self.node.state.key_of(peer.node_id) is not None:
                out.append((peer.node_id, peer.host, peer.port))
        located = {key for key, _, _ in out}
        for member in self.node.state.members.values():
            # Paired through an address (`pair --join --peer`): no mDNS needed to find it.
            found = split_address(member.address)
            if member.node_id not in located and found is not None:
                out.append((member.node_id, *found))
        for addr in self.node.config.static_peers:
            found = split_address(addr)
            if found is not None:
                out.append((self._static_ids.get(addr, addr), *found))
        return out

    def dial_targets(self) -> None:
        """Dial every target not linked, not being dialled and not waiting out its backoff."""
        now = time.monotonic()
        # A static address is keyed by itself until a dial there succeeds: a box already
        # linked at that address (it dialled us) is not dialled again, which would replace the
        # link and end every stream on it (RPC streams of a split model with them).
        linked_at = {
            (p.host, p.port) for p in self.node.peers.values() if p.node_id in self.node.links
        }
        for key, host, port in self.targets():
            if key in self.node.links or key in self._dialling or key == self.node.me.node_id:
                continue
            if (host, port) in linked_at:
                continue
            backoff, not_before = self._backoff.get(key, (Backoff(), 0.0))
            if now < not_before:
                continue
            self._dialling.add(key)
            self.node.spawn(self._dial(key, host, port, backoff))

    async def _dial(self, key: str, host: str, port: int, backoff: Backoff) -> None:
        expect = key if len(key) == 16 and ":" not in key else None
        try:
            link = await dial(
                host,
                port,
                self.node.me,
                self.node.state.key_of,
                expect=expect,
                idle_timeout=self.node.config.idle_timeout_s,
            )
        except (MeshError, CodecError) as exc:
            self._backoff[key] = (backoff, time.monotonic() + backoff.next())
            if key in self.node.peers:
                self.node.peers[key].last_error = str(exc)
            self.node.warn_once(
                f"dial:{key}:{exc.kind}", "cannot link to %s:%d: %s", host, port, exc
            )
            return
        finally:
            self._dialling.discard(key)
        backoff.reset()
        self._backoff.pop(key, None)
        if expect is None:
            self._static_ids[key] = link.peer_id
        source = "static" if expect is None else "paired"
        peer = self.node.peers.setdefault(link.peer_id, Peer(link.peer_id, source=source))
        peer.host, peer.port = host, port
        self.node.spawn(self._adopt(link))

    def seen(self, peer: Peer) -> None:
        """Discovery found or refreshed a box."""
        known = self.node.peers.get(peer.node_id)
        if known is None:
            if len(self.node.peers) >= MAX_PEERS:  # fake adverts must not grow memory without bound
                strangers = [p for p in self.node.peers.values() if not self.node.key_of(p.node_id)]
                if not strangers:
                    return
                del self.node.peers[min(strangers, key=lambda p: p.seen_at).node_id]
            self.node.peers[peer.node_id] = peer
            return
        known.host, known.port, known.version = peer.host, peer.port, peer.version
        known.mesh_hash, known.capabilities, known.source = (
            peer.mesh_hash,
            peer.capabilities,
            peer.source,
        )
        known.seen_at = peer.seen_at
