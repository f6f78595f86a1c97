"""Where a split model's layers go: this box's budget first, the rest by the workers' offers."""

from __future__ import annotations

import pytest

from mongars_edge.split.plan import Fixed, Offer, fixed_parts, plan_split
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


def test_qwen_keeps_its_head_here_and_each_worker_room_for_its_compute() -> None:
    # Qwen2.5-Coder-1.5B: 28 layers, n_embd 1536, a 151936-token vocabulary, n_ubatch 512.
    fixed = fixed_parts(1536, 151936, 512)
    # The embedding/head (222 MiB at a byte a weight) and the logits buffer (296 MiB) stay here;
    # llama.cpp reserved 75 MiB of compute on the worker.
    assert fixed == Fixed(host_mb=222 + 296 + 32, worker_mb=88)
    # bench/split.py's case: each box holds 60% of the 1823 MiB the model needs.
    plan = plan_split("qwen", 28, 1823, 1093, [Offer("b:1", 1093 * MiB, name="b")], fixed)
    assert [p.layers for p in plan.places] == [11, 17]
    assert all(p.need_mb <= p.budget_mb for p in plan.places)
    assert plan.places[0].need_mb >= 550 and plan.places[1].need_mb >= 88


def test_a_box_that_cannot_keep_the_head_cannot_host_a_split() -> None:
    with pytest.raises(SplitError, match="keeps ~550 MiB on this box whatever the split"):
        plan_split("qwen", 28, 1823, 500, [Offer("b:1", 4000 * MiB)], Fixed(550, 88))


def test_offers_less_their_compute_must_hold_the_layers() -> None:
    # 1000 + 850 MiB hold the 1800 MiB a model needs, but not with the worker's 100 MiB of
    # compute on top.
    plan_split("m", 28, 1800, 1000, [Offer("b:1", 850 * MiB)])
    with pytest.raises(SplitError, match="needs ~1900 MiB"):
        plan_split("m", 28, 1800, 1000, [Offer("b:1", 850 * MiB)], Fixed(400, 100))


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
