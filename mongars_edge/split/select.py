"""When to split: a model over this box's budget runs across workers that offer the rest.

`Splitter` is the model manager's `splitter`: asked for a model this box cannot hold alone, it
gathers the offers (the `split_workers` setting's endpoints, asked over a checked HELLO; the
mesh's paired peers once the tunnel gives them), plans the layers and returns the opener of a
SplitEngine, or None when nobody offers memory. Too little memory in all is a SplitError with
the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from mongars_edge.errors import MongarsError
from mongars_edge.logonce import WarnOnce
from mongars_edge.split import rpc
from mongars_edge.split.plan import Fixed, Offer, fixed_parts, plan_split

if TYPE_CHECKING:
    from mongars_edge.inference.llama import EngineConfig
    from mongars_edge.split.host import SplitEngine

log = logging.getLogger(__name__)

#: Where offers come from: each returns the workers it knows now (never raises).
OfferSource = Callable[[], Awaitable[list[Offer]]]


def direct_offers(endpoints: tuple[str, ...]) -> OfferSource:
    """Offers of RPC workers reached directly: the memory each one's device reports."""
    warn = WarnOnce(log)

    async def offers() -> list[Offer]:
        found = []
        for endpoint in endpoints:
            try:
                free = await asyncio.to_thread(rpc.device_memory, endpoint)
            except rpc.SplitError as exc:
                warn(f"split worker {endpoint}", "%s", exc)
                continue
            found.append(Offer(endpoint, free))
        return found

    return offers


def mesh_offers(
    peers: Callable[[], Iterable[tuple[str, int, str]]],
    endpoint: Callable[[str], Awaitable[str]],
    build: str,
) -> OfferSource:
    """Offers of paired mesh peers: `peers()` gives (peer id, split budget, llama.cpp build)
    from their telemetry, `endpoint(peer id)` a loopback port the mesh tunnels to that peer's
    worker. A peer of another llama.cpp build is left out, said once naming both."""
    warn = WarnOnce(log)

    async def offers() -> list[Offer]:
        found = []
        for peer_id, budget, theirs in peers():
            if budget <= 0:
                continue
            if theirs != build:
                warn(
                    f"split build {peer_id}",
                    "peer %s offers memory for splitting but runs llama.cpp %s, this box %s: "
                    "not used (every box of a split must run the same build)",
                    peer_id,
                    theirs,
                    build,
                )
                continue
            try:
                found.append(Offer(await endpoint(peer_id), budget, name=peer_id))
            except MongarsError as exc:
                warn(f"split peer {peer_id}", "%s", exc)
        return found

    return offers


def split_shape(config: EngineConfig) -> tuple[int, Fixed]:
    """The model's layer count and its split's fixed parts, from its GGUF header (blocking)."""
    from mongars_edge.inference import lowlevel

    header = lowlevel.load_model(config.model_path, vocab_only=True)
    try:
        fixed = fixed_parts(header.n_embd, header.n_vocab, config.n_ubatch)
        return header.n_layer, fixed
    finally:
        header.free()


class Splitter:
    """The model manager's splitter (see the module docstring)."""

    def __init__(self, sources: list[OfferSource], *, retry_s: float = 5.0) -> None:
        self.sources = sources
        self.retry_s = retry_s

    async def offers(self) -> list[Offer]:
        found: list[Offer] = []
        for source in self.sources:
            found += await source()
        return found

    async def offering(self) -> frozenset[str]:
        """Who offers memory now (by name: a direct worker's free memory moves all the time)."""
        return frozenset(o.label for o in await self.offers() if o.budget_bytes > 0)

    async def __call__(
        self, config: EngineConfig, need_mb: int, budget_mb: int
    ) -> contextlib.AbstractAsyncContextManager[SplitEngine] | None:
        from mongars_edge.split.host import SplitEngine

        offers = await self.offers()
        if not offers:
            return None
        n_layer, fixed = await asyncio.to_thread(split_shape, config)
        plan = plan_split(config.model_id, n_layer, need_mb, budget_mb, offers, fixed)
        log.info("splitting %s: %s", config.model_id, plan.summary())
        return SplitEngine.open(config, plan, retry_s=self.retry_s)
