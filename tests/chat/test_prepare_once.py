"""A chat request's prompt is rendered once and tokenized once on its way to the worker thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mongars_edge.chat.pipeline import Turn
from mongars_edge.inference.engine import Message, Sampling
from mongars_edge.inference.llama import LlamaEngine
from mongars_edge.mesh.node import MeshConfig, NodeState
from mongars_edge.mesh.router import Router
from mongars_edge.runtime import Runtime

pytestmark = pytest.mark.model


class _Counts:
    def __init__(self) -> None:
        self.renders = 0
        self.tokenizations = 0


@contextmanager
def _counting(held: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Counts]:
    """Count every render of the chat template and every tokenization by the model."""
    engine = held
    assert isinstance(engine, LlamaEngine)
    counts = _Counts()
    template, model = engine._template, engine._model

    def wrap(inner: Callable[..., Any], field: str) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            setattr(counts, field, getattr(counts, field) + 1)
            return inner(*args, **kwargs)

        return counted

    monkeypatch.setattr(template, "render", wrap(template.render, "renders"))
    monkeypatch.setattr(model, "tokenize", wrap(model.tokenize, "tokenizations"))
    yield counts


async def _one_turn(runtime: Runtime, text: str) -> str:
    uid = (await runtime.memory.create_user("ana", None)).id
    turn = Turn(
        messages=(Message("user", text),),
        sampling=Sampling(max_tokens=4, temperature=0.0),
        new_conversation=True,
    )
    prepared = await runtime.chat.prepare(turn, uid)
    events = [e async for e in runtime.chat.stream(prepared)]
    await runtime.chat.drain()
    assert events[-1].finish_reason in ("stop", "length")
    return "".join(e.text for e in events)


async def test_one_render_and_one_tokenization_per_chat_request(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runtime.engine is not None
    with _counting(runtime.engine.engine, monkeypatch) as counts:
        await _one_turn(runtime, "Name three colours of the sea.")
    assert (counts.renders, counts.tokenizations) == (1, 1)


async def test_through_the_mesh_router_too(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, data_dir: Any
) -> None:
    """With a mesh and no usable peer, the router ranks nothing and hands the prompt on."""
    from mongars_edge.mesh.identity import Identity
    from mongars_edge.mesh.members import MeshState

    assert runtime.engine is not None
    node = NodeState(
        MeshConfig("127.0.0.1", 0),
        data_dir,
        Identity.load_or_create(data_dir),
        runtime.engine,
        MeshState(mesh_id=b"\0" * 16),
        spawn=lambda coro: pytest.fail("nothing to spawn"),
    )
    runtime.router = Router(runtime.engine, node)
    with _counting(runtime.engine.engine, monkeypatch) as counts:
        await _one_turn(runtime, "Name three colours of the sea.")
    assert (counts.renders, counts.tokenizations) == (1, 1)


async def test_a_prompt_over_budget_is_trimmed_and_measured_again(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rare path: too long as a whole, counted message by message, then prepared again."""
    assert runtime.engine is not None
    n_ctx = runtime.engine.info.n_ctx
    long = " ".join(["lighthouse"] * n_ctx)
    uid = (await runtime.memory.create_user("ana", None)).id
    turn = Turn(
        messages=(
            Message("user", long),
            Message("assistant", "ok"),
            Message("user", "And now?"),
        ),
        sampling=Sampling(max_tokens=4, temperature=0.0),
    )
    with _counting(runtime.engine.engine, monkeypatch) as counts:
        prepared = await runtime.chat.prepare(turn, uid)
    assert prepared.trimmed == 2
    assert prepared.prompt.n_tokens + prepared.request.sampling.max_tokens <= n_ctx
    assert counts.renders == 2  # the whole, then the trimmed
