"""Mesh services for tests: loopback addresses, no mDNS, timings shrunk rather than slept on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mongars_edge.mesh import pairing
from mongars_edge.mesh.node import MeshConfig
from mongars_edge.mesh.service import MeshService

#: A chat turn long enough to keep a box busy for a while.
QUESTION = [("user", "Write three sentences about the sea.")]


def fast_config(port: int, peers: list[int], **overrides: Any) -> MeshConfig:
    """A mesh on 127.0.0.1:*port* dialling the loopback *peers*, gossiping every 0.1 s."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "static_peers": tuple(f"127.0.0.1:{p}" for p in peers),
        "mdns": False,
        "gossip_s": 0.1,
        "idle_timeout_s": 2.0,
        "stall_s": 2.0,
    }
    base.update(overrides)
    return MeshConfig(**base)


async def until(cond: Callable[[], object], limit_s: float = 15.0) -> None:
    """Wait for *cond* to hold; fail after *limit_s* (a hang guard, not a timing assertion)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def pair(member: MeshService, joiner: MeshService) -> None:
    """Pair *joiner* with *member* as `pair` and `pair --join --peer` would."""
    code = pairing.open_window(member.data_dir)
    await pairing.join("127.0.0.1", member.port, code, joiner.me, joiner.data_dir, "joiner")


async def settled(a: MeshService, b: MeshService) -> None:
    """Wait for the one link both boxes keep. At first both dial (each by its static address
    and by the member's address), and every link but one is replaced, with the streams it
    carried: a test's stream must start on the link that stays."""
    aid, bid = a.me.node_id, b.me.node_id

    def kept() -> bool:
        ab, ba = a.links.get(bid), b.links.get(aid)
        return ab is not None and ba is not None and ab.dialled != ba.dialled

    for _ in range(20):
        await until(kept)
        pair_now = (a.links[bid], b.links[aid])
        await asyncio.sleep(5 * a.config.gossip_s)  # the dialers' next rounds found it linked
        if (a.links.get(bid), b.links.get(aid)) == pair_now:
            return
    raise AssertionError("the links never settled")
