"""What one mesh node knows now, shared by its parts (discovery, serving, share, remote, router).

The service owns the NodeState and changes its membership and links; the parts read it and act
through the callbacks it carries (`spawn`). No part imports the service or calls its privates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mongars_edge.inference.errors import EngineClosedError
from mongars_edge.logonce import WarnOnce
from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import BadMessageError, PeerUnavailableError

if TYPE_CHECKING:
    from mongars_edge.inference.engine import Engine
    from mongars_edge.mesh.identity import Identity
    from mongars_edge.mesh.members import MeshState
    from mongars_edge.mesh.peers import Peer
    from mongars_edge.mesh.transport import Link

log = logging.getLogger("mongars_edge.mesh")

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


@dataclass(frozen=True)
class MeshConfig:
    """Timing knobs; tests shrink them instead of sleeping."""

    host: str
    port: int
    static_peers: tuple[str, ...] = ()
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    gossip_s: float = 1.0
    idle_timeout_s: float = 5.0
    stall_s: float = 5.0
    #: Memory this box offers paired boxes for a model split across boxes, in MB (0: none);
    #: the service runs an RPC worker holding at most that much.
    split_offer_mb: int = 0
    split_threads: int = 0  # the worker's threads; 0: every core


class NodeState:
    """This box as a mesh member: who it is, whom it trusts, whom it is linked to, its counters."""

    def __init__(
        self,
        config: MeshConfig,
        data_dir: Path,
        me: Identity,
        engine: Engine | None,
        state: MeshState,
        spawn: Spawn,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.me = me
        self.engine = engine
        self.state = state  # the membership (replaced whole when the member file changes)
        self.spawn = spawn  # run a background task the service keeps and cancels on stop
        self.peers: dict[str, Peer] = {}
        self.links: dict[str, Link] = {}
        self.port = 0
        self.started_at = time.monotonic()
        self.first_forward_at: float | None = None
        self.forwarded = 0  # requests this box sent to peers
        self.served = 0  # requests this box ran for peers
        self.warn_once = WarnOnce(log)
        self._streams: dict[tuple[int, int], asyncio.Queue[Any]] = {}

    def key_of(self, node_id: str) -> bytes | None:
        """The pinned key of a member; None for a stranger or a revoked box."""
        return self.state.key_of(node_id)

    def usable_peers(self) -> Iterator[Peer]:
        """Linked members with fresh telemetry that accept requests."""
        for node_id, peer in self.peers.items():
            if node_id not in self.links or self.key_of(node_id) is None:
                continue
            t = peer.telemetry
            if peer.fresh() and t is not None and t.accepting:
                yield peer

    def forwarding(self) -> None:
        """A request goes to a peer (counted for `peers` and the benchmarks)."""
        if self.first_forward_at is None:
            self.first_forward_at = time.monotonic()
        self.forwarded += 1

    def model_id(self) -> str:
        """The model this box answers with; "" with none (off, or not loaded yet)."""
        if self.engine is None:
            return ""
        try:
            return self.engine.info.id
        except EngineClosedError:  # waiting for its model to run split
            return ""

    def telemetry(
        self, adapters: list[str], split_budget: int, llama_build: str
    ) -> codec.Telemetry:
        """What this box gossips about itself: its model, load, temperature and offers."""
        engine = self.engine
        load = engine.load() if engine else None
        return codec.Telemetry(
            node_id=self.me.node_id,
            model=self.model_id(),
            queue_depth=load.queue_depth if load else 0,
            active=load.active if load else 0,
            n_parallel=load.n_parallel if load else 1,
            gen_tok_s=float(load.generation_tok_s) if load else 0.0,
            prompt_tok_s=float(load.prompt_tok_s) if load else 0.0,
            temp_c=_temperature(),
            throttled=False,
            adapters=adapters,
            accepting=engine is not None,
            port=self.port,
            split_budget=split_budget,
            llama_build=llama_build,
        )

    # -- replies from peers, by (link, stream id) ----------------------------------------------

    def open_stream(self, link: Link, stream_id: int) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[(id(link), stream_id)] = queue
        return queue

    def close_stream(self, link: Link, stream_id: int) -> None:
        self._streams.pop((id(link), stream_id), None)

    def deliver(self, link: Link, stream_id: int, item: Any) -> None:
        queue = self._streams.get((id(link), stream_id))
        if queue is not None:
            queue.put_nowait(item)

    def refused(self, link: Link, exc: BadMessageError) -> None:
        """`link` carried a frame that is no valid message: say so once, and settle the stream
        it named, so neither side waits for it until a timeout."""
        self.warn_once(
            f"frame:{link.peer_id}:{exc.tag}",
            "refused a frame from %s: %s",
            link.peer_id,
            exc,
        )
        sid = exc.stream_id
        if sid is None:
            return
        if (id(link), sid) in self._streams:  # a reply to a request of ours
            self.deliver(link, sid, PeerUnavailableError(f"peer {link.peer_id} sent {exc}"))
        elif exc.tag == codec.InferRequest.TAG:
            with contextlib.suppress(PeerUnavailableError):
                link.send(codec.Error(sid, exc.kind, str(exc)[:500]))

    def fail_streams(self, link: Link, why: str) -> None:
        """The link closed: every reply still expected from it ends with an error."""
        for key in [k for k in self._streams if k[0] == id(link)]:
            self._streams[key].put_nowait(PeerUnavailableError(why))


def _temperature() -> float:
    try:
        raw = Path("/sys/class/thermal/thermal_zone0/temp").read_text()
        return int(raw.strip()) / 1000
    except (OSError, ValueError):
        return 0.0
