"""Scheduler: capacity, fairness across users, deadlines, idle/busy signal (no model needed)."""

from __future__ import annotations

import asyncio

import pytest

from mongars_edge.inference.errors import QueueFullError
from mongars_edge.inference.scheduler import Scheduler


def drain(s: Scheduler[str]) -> list[str]:
    out = []
    while (item := s.pop()) is not None:
        out.append(item)
    return out


async def test_round_robin_across_users_fifo_within_one() -> None:
    s: Scheduler[str] = Scheduler(capacity=10, n_slots=2)
    s.bind(asyncio.get_running_loop())
    for item, user in [("a1", "ana"), ("a2", "ana"), ("a3", "ana"), ("b1", "bob"), ("c1", "cy")]:
        s.submit(item, user=user, deadline_s=60)
    s.submit("b2", user="bob", deadline_s=60)
    assert drain(s) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert s.active == 6


async def test_capacity_raises_queue_full_with_retry_after() -> None:
    s: Scheduler[str] = Scheduler(capacity=2, n_slots=1)
    s.bind(asyncio.get_running_loop())
    s.submit("x", user=None, deadline_s=60)
    s.submit("y", user=None, deadline_s=60)
    with pytest.raises(QueueFullError) as info:
        s.submit("z", user=None, deadline_s=60)
    assert info.value.depth == 2
    assert 1 <= info.value.retry_after_s <= 120
    assert s.pop() == "x"
    s.submit("z", user=None, deadline_s=60)  # room again


async def test_remove_and_expire() -> None:
    s: Scheduler[str] = Scheduler(capacity=5, n_slots=1)
    s.bind(asyncio.get_running_loop())
    s.submit("old", user="u", deadline_s=0.0)
    s.submit("keep", user="u", deadline_s=60)
    s.submit("gone", user="v", deadline_s=60)
    assert s.remove("gone")
    assert not s.remove("gone")
    assert s.expired() == ["old"]
    assert drain(s) == ["keep"]
    assert s.depth == 0


async def test_idle_and_busy_signals() -> None:
    s: Scheduler[str] = Scheduler(capacity=5, n_slots=1)
    s.bind(asyncio.get_running_loop())
    assert s.is_idle()
    busy = asyncio.create_task(s.wait_busy())
    await asyncio.sleep(0)
    assert not busy.done()
    s.submit("r", user=None, deadline_s=60)
    await busy
    idle = asyncio.create_task(s.wait_idle())
    assert s.pop() == "r"
    await asyncio.sleep(0)
    assert not idle.done()
    s.finished(service_s=1.0)  # as the worker thread does; the loop learns via call_soon
    await idle
    assert s.is_idle()
    assert s.arrivals == 1


def test_chunk_grows_while_fast_and_shrinks_when_slow() -> None:
    from mongars_edge.inference.batch import ChunkSize

    chunk = ChunkSize(0.2, start=32, minimum=8)
    chunk.learn(0.05, 32)
    assert chunk.tokens == 49
    chunk.learn(0.05, 10)  # the prompt ended early: no lesson
    assert chunk.tokens == 49
    chunk.learn(0.4, 49)
    assert chunk.tokens == 22
    for _ in range(20):
        chunk.learn(5.0, chunk.tokens)
    assert chunk.budget(500) == 8
    assert ChunkSize(0.2, start=900).budget(500) == 500


def test_chunk_fits_the_room_the_decoders_leave() -> None:
    """Streams whose own step takes 150 ms leave 100 ms of a 250 ms target: at 25 ms a prompt
    token (a 16-token chunk made the step 550 ms), 3 tokens fit."""
    from mongars_edge.inference.batch import ChunkSize

    chunk = ChunkSize(0.25, start=16)
    chunk.learn(0.55, 16, base_s=0.15)
    assert chunk.tokens == 3
    chunk.learn(0.5, 3, base_s=0.45)  # the decoders alone use the target: one token a step
    assert chunk.budget(512) == 1


def test_chunk_grows_only_as_far_as_the_room_holds() -> None:
    """Growth is 1.5x while the room the decoders leave holds it at the cost per prompt token
    just seen, and stops at what the room holds when 1.5x would not fit."""
    from mongars_edge.inference.batch import ChunkSize

    chunk = ChunkSize(0.25, start=20)
    chunk.learn(0.17, 20, base_s=0.15)
    assert chunk.tokens == 31
    near = ChunkSize(0.25, start=40)
    near.learn(0.17, 40, base_s=0.13)  # 1 ms a token, room 120 ms: 108 fit, 1.5x is 61
    assert near.tokens == 61
    tight = ChunkSize(0.25, start=40)
    tight.learn(0.17, 40, base_s=0.05)  # 3 ms a token, room 200 ms: 60 fit, not 61
    assert tight.tokens == 60
