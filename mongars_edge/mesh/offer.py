"""This box's part in splitting a model across boxes: the memory it offers (an RPC worker that
`split_offer_mb` starts) and the offers it sees from linked members."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from mongars_edge.errors import MongarsError

if TYPE_CHECKING:
    from mongars_edge.mesh.node import NodeState
    from mongars_edge.mesh.tunnel import Tunnel
    from mongars_edge.split.worker import RpcWorker

log = logging.getLogger(__name__)


class SplitOffer:
    """Starts and stops the worker this box offers, when the tunnel was given none."""

    def __init__(self, node: NodeState, tunnel: Tunnel) -> None:
        self.node = node
        self.tunnel = tunnel
        self._own_worker: RpcWorker | None = None  # started here (split_offer_mb)
        #: Why this box does not offer the memory `split_offer_mb` asks for ("" when it does).
        self.problem = ""

    def members(self) -> list[tuple[str, int, str]]:
        """Linked members with fresh telemetry offering memory: (node id, bytes offered, their
        llama.cpp build), whichever build they run (a split host names a mismatch)."""
        out = []
        for node_id, peer in self.node.peers.items():
            t = peer.telemetry
            if (
                node_id in self.node.links
                and self.node.key_of(node_id) is not None
                and peer.fresh()
                and t is not None
                and t.split_budget > 0
            ):
                out.append((node_id, t.split_budget, t.llama_build))
        return out

    def offers(self) -> dict[str, int]:
        """The members offering memory on this box's llama.cpp build: node id -> bytes offered
        (what a split host places layers by)."""
        return {n: budget for n, budget, build in self.members() if build == self.tunnel.build}

    def budget(self) -> int:
        """Bytes this box offers now (its telemetry's `split_budget`): 0 while no worker serves."""
        worker = self.tunnel.worker
        return worker.budget_bytes if worker is not None and worker.alive else 0

    async def start(self) -> None:
        """Offer this box's memory: an RPC worker holding at most `split_offer_mb`."""
        config = self.node.config
        if not config.split_offer_mb or self.tunnel.worker is not None:
            return
        from mongars_edge.split.worker import RpcWorker

        budget = config.split_offer_mb * 1024 * 1024
        try:
            worker = RpcWorker(
                self.node.data_dir / "split-cache",
                budget_bytes=budget,
                threads=config.split_threads or (os.cpu_count() or 1),
                cache_max_bytes=2 * budget,
            )
            await worker.start()
        except (MongarsError, OSError) as exc:
            self.problem = f"split_offer_mb is set but the RPC worker did not start: {exc}"
            log.error("%s", self.problem)
            return
        self._own_worker = worker
        self.tunnel.worker = worker
        log.info(
            "offering %d MB to paired boxes for splitting a model",
            config.split_offer_mb,
            extra={"split_offer_mb": config.split_offer_mb, "llama_build": self.tunnel.build},
        )

    async def stop(self) -> None:
        """Stop the worker started here (one given to the tunnel is its owner's to stop)."""
        if self._own_worker is not None:
            await self._own_worker.stop()
