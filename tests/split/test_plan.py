"""Where a split model's layers go: this box's budget first, the rest by the workers' offers."""

from __future__ import annotations

import pytest

from mongars_edge.split.plan import Offer, plan_split
from mongars_edge.split.rpc import SplitError
from mongars_edge.split.select import mesh_offers
from mongars_edge.tui.screens.mesh import split_line

MiB = 1 << 20


def test_this_box_keeps_what_it_holds_and_the_rest_goes_to_the_worker() -> None:
    plan = plan_split("m", 28, 1400, 800, [Offer("10.0.0.2:50052", 900 * MiB, name="b")])
    assert [p.layers for p in plan.places] == [16, 12]
    assert plan.n_remote_layers == 12
    assert plan.tensor_split == (12.0,)
    assert all(p.need_mb <= p.budget_mb for p in plan.places)
    assert plan.summary() == "16 layers here, 12 layers on b"


def test_several_workers_share_the_rest_by_their_offers() -> None:
    offers = [Offer("a:1", 600 * MiB), Offer("b:1", 400 * MiB), Offer("c:1", 0)]
    plan = plan_split("m", 30, 1200, 300, offers)
    assert [p.layers for p in plan.places] == [7, 14, 9]
    assert all(p.need_mb <= p.budget_mb for p in plan.places)
    assert [p.endpoint for p in plan.remote] == ["a:1", "b:1"]  # no offer, no layers
    assert sum(p.layers for p in plan.places) == 30


def test_too_little_memory_in_all_is_refused_with_the_numbers() -> None:
    with pytest.raises(SplitError) as refused:
        plan_split("qwen-7b", 28, 5000, 2000, [Offer("b:1", 1000 * MiB, name="box-b")])
    assert str(refused.value).startswith(
        "qwen-7b needs ~5000 MiB; this box holds 2000 MiB and its workers offer "
        "1000 MiB on box-b (3000 MiB in all)"
    )


def test_no_offer_at_all_says_so() -> None:
    with pytest.raises(SplitError, match="no worker offers memory"):
        plan_split("m", 28, 1400, 800, [Offer("b:1", 0)])


def test_layers_that_do_not_fit_whole_anywhere_are_refused() -> None:
    # 1200 MiB in all is exactly what is needed, but 40 MiB layers do not divide 300 and 600.
    offers = [Offer("a:1", 600 * MiB), Offer("b:1", 300 * MiB)]
    with pytest.raises(SplitError, match="do not hold them whole"):
        plan_split("m", 30, 1200, 300, offers)


async def test_mesh_peers_of_another_build_offer_nothing() -> None:
    peers = [("box-b", 900 * MiB, "b1 rpc 7.0.0"), ("box-c", 500 * MiB, "b2 rpc 7.0.0")]
    peers.append(("box-d", 0, "b1 rpc 7.0.0"))

    async def endpoint(peer_id: str) -> str:
        return {"box-b": "127.0.0.1:4001", "box-c": "127.0.0.1:4002"}[peer_id]

    offers = await mesh_offers(lambda: peers, endpoint, "b1 rpc 7.0.0")()
    assert offers == [Offer("127.0.0.1:4001", 900 * MiB, name="box-b")]


def test_the_mesh_screen_says_where_the_layers_live() -> None:
    plan = plan_split("qwen", 28, 1400, 800, [Offer("10.0.0.2:50052", 900 * MiB, name="box-b")])
    split = {"model": "qwen", "state": "lost", **plan.to_dict(), "problem": "box-b was lost"}
    assert (
        split_line(split) == "qwen split: 16 layers here, 12 layers on box-b (lost): box-b was lost"
    )
    assert split_line(None) == ""
