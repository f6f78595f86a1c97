"""The router on scripted engines (no model, no sockets): ranking, skipping, failover."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

import pytest

from mongars_edge.inference.engine import ChatRequest, EngineLoad, Sampling, complete
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.mesh.codec import Telemetry
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.members import MeshState
from mongars_edge.mesh.node import MeshConfig, NodeState
from mongars_edge.mesh.peers import Peer
from mongars_edge.mesh.router import Router
from mongars_edge.mesh.transport import Link
from tests.support.fake_engine import FakeEngine


class _DeadLink:
    """A link that closed a moment ago: a request sent on it fails before any token."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.closed.set()


def _node(tmp_path: Path, engine: FakeEngine) -> NodeState:
    me = Identity.load_or_create(tmp_path)
    state = MeshState(mesh_id=b"m" * 16)
    return NodeState(
        MeshConfig("127.0.0.1", 0, stall_s=1.0), tmp_path, me, engine, state, _no_spawn
    )


def _no_spawn(coro: Any) -> Any:
    coro.close()
    raise AssertionError("the router spawns nothing")


def _peer(node: NodeState, *, model: str, busy: int = 0, tok_s: float = 30.0) -> Peer:
    """A paired, linked member with fresh telemetry (its link is dead: see _DeadLink)."""
    them = Identity.generate()
    node_id = them.node_id
    node.state.pin(node_id, them.verify_key)
    peer = Peer(node_id, "127.0.0.2", 9, linked=True)
    peer.telemetry = Telemetry(node_id, model, busy, 0, 4, tok_s, 300.0, 40.0, False, [], True, 9)
    peer.telemetry_at = time.monotonic()
    node.peers[node_id] = peer
    node.links[node_id] = cast(Link, _DeadLink())
    return peer


def _ask(text: str = "tell me a story", **kwargs: Any) -> ChatRequest:
    return ChatRequest.of([("user", text)], sampling=Sampling.greedy(5), **kwargs)


async def test_no_usable_peer_skips_ranking_and_preparing_twice(tmp_path: Path) -> None:
    local = FakeEngine()
    router = Router(local, _node(tmp_path, local))
    done = await complete(router, await router.prepare(_ask()))
    assert done.text == "one two three four five"
    assert (local.prepared, local.renders) == (1, 1)  # the router did not measure it again


async def test_a_request_prepared_elsewhere_is_prepared_once_here(tmp_path: Path) -> None:
    local = FakeEngine()
    router = Router(local, _node(tmp_path, local))
    await complete(router, _ask())
    assert local.prepared == 1


async def test_an_idle_peer_beats_a_busy_box_and_a_busy_peer_does_not(tmp_path: Path) -> None:
    local = FakeEngine(
        figures=EngineLoad(
            queue_depth=8, active=4, n_parallel=4, generation_tok_s=30.0, prompt_tok_s=300.0
        )
    )
    node = _node(tmp_path, local)
    idle = _peer(node, model=local.model)
    busy = _peer(node, model=local.model, busy=40)
    ranked = Router(local, node).rank(_ask(), prompt_tokens=50)
    assert [c.node_id for c in ranked] == [idle.node_id, "", busy.node_id]


async def test_peers_with_another_model_are_not_ranked(tmp_path: Path) -> None:
    local = FakeEngine()
    node = _node(tmp_path, local)
    other = _peer(node, model="another-model")
    router = Router(local, node)
    assert [c.node_id for c in router.rank(_ask(), 10)] == [""]
    assert router.models() == {local.model: [""], "another-model": [other.node_id]}
    assert [c.node_id for c in router.rank(_ask(model="another-model"), 10)] == [other.node_id]


async def test_a_longer_prompt_costs_more(tmp_path: Path) -> None:
    local = FakeEngine()
    router = Router(local, _node(tmp_path, local))
    short = router.rank(_ask(), 10)[0].predicted_s
    long = router.rank(_ask(), 2000)[0].predicted_s
    assert long > short


async def test_a_peer_that_fails_before_a_token_is_replaced_by_this_box(tmp_path: Path) -> None:
    local = FakeEngine(figures=EngineLoad(20, 4, 4, 30.0, 300.0))
    node = _node(tmp_path, local)
    peer = _peer(node, model=local.model)
    done = await complete(Router(local, node), _ask())
    assert done.text == "one two three four five"
    assert peer.failures == 1 and node.forwarded == 1
    assert local.prepared == 1  # measured once for ranking, run from that same prompt


async def test_a_model_only_a_failing_peer_holds_is_an_error(tmp_path: Path) -> None:
    local = FakeEngine()
    node = _node(tmp_path, local)
    _peer(node, model="another-model")
    router = Router(local, node)
    with pytest.raises(Exception, match="no link"):
        await complete(router, _ask(model="another-model"))
    node.peers.clear()
    with pytest.raises(ModelNotFoundError):
        await complete(router, _ask(model="another-model"))


async def test_a_local_stream_that_fails_mid_way_ends_in_error(tmp_path: Path) -> None:
    local = FakeEngine(fail_after=2)
    router = Router(local, _node(tmp_path, local))
    with pytest.raises(Exception, match="scripted failure"):
        await complete(router, _ask())


async def test_with_every_slot_busy_requests_wait_here_in_order_for_the_first_free_one(
    tmp_path: Path,
) -> None:
    # Given to a box on arrival, a burst's last replies pile up on one box while the other
    # idles: held here instead, each goes where a slot frees first, in arrival order.
    local = FakeEngine(figures=EngineLoad(0, 4, 4, 30.0, 300.0))  # all 4 slots busy
    node = _node(tmp_path, local)
    peer = _peer(node, model=local.model, busy=4)  # busy with its own clients' requests
    router = Router(local, node)
    first = asyncio.ensure_future(complete(router, _ask("first")))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(complete(router, _ask("second")))
    await asyncio.sleep(0.6)  # two looks at the slots, none free
    assert not first.done() and not second.done() and local.streamed == []
    assert len(router._held) == 2
    local.figures = EngineLoad(0, 3, 4, 30.0, 300.0)  # one slot frees here
    done = await asyncio.wait_for(first, 5)
    await asyncio.wait_for(second, 5)  # the figures say 3 of 4 busy still: it goes too
    assert done.text == "one two three four five"
    assert [r.messages[-1].content for r in local.streamed] == ["first", "second"]
    assert router._held == deque() and peer.inflight == 0


async def test_a_free_slot_wins_over_a_full_box_predicted_sooner(tmp_path: Path) -> None:
    # A peer's telemetry lags a gossip period: a box whose slot just freed can be predicted a
    # wave later than a full one. A request sent to the full box would wait in its queue.
    local = FakeEngine(figures=EngineLoad(0, 3, 4, 2.0, 300.0))  # a slot free, slow figures
    node = _node(tmp_path, local)
    peer = _peer(node, model=local.model, busy=4, tok_s=300.0)  # full, fast
    router = Router(local, node)
    assert router.rank(_ask(), 10)[0].node_id == peer.node_id  # the estimate alone says peer
    done = await asyncio.wait_for(complete(router, _ask("free slot")), 5)
    assert done.text == "one two three four five"
    assert [r.messages[-1].content for r in local.streamed] == ["free slot"]
    assert peer.failures == 0  # it never went to the peer (whose link is dead)
