"""Runtime LoRA on the tiny model: per-request adapters, never mixed in one decode step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mongars_edge.inference.engine import ChatRequest, Sampling, complete
from mongars_edge.inference.errors import AdapterError, AdapterNotFoundError
from tests.support.types import EngineFactory


def ask(text: str, adapter: str | None, n: int = 16) -> ChatRequest:
    return ChatRequest.of([("user", text)], sampling=Sampling.greedy(n), adapter=adapter)


def resolver(paths: dict[str, Path]):  # type: ignore[no-untyped-def]
    def resolve(name: str) -> Path:
        try:
            return paths[name]
        except KeyError:
            raise AdapterNotFoundError(f"no adapter {name!r}") from None

    return resolve


async def test_two_adapters_at_once_equal_each_alone(
    open_engine: EngineFactory, models: dict[str, Path]
) -> None:
    paths = {"a": models["tiny_lora_a"], "b": models["tiny_lora_b"]}
    async with open_engine(adapters=resolver(paths)) as engine:
        alone = {k: await complete(engine, ask("hello there", k)) for k in (None, "a", "b")}
        assert len({tuple(c.token_ids) for c in alone.values()}) == 3
        mixed = await asyncio.gather(
            *(complete(engine, ask("hello there", k)) for k in ("b", "a", None, "b"))
        )
        assert [c.token_ids for c in mixed] == [alone[k].token_ids for k in ("b", "a", None, "b")]


async def test_unknown_and_bad_adapters_are_refused(
    open_engine: EngineFactory, models: dict[str, Path]
) -> None:
    paths = {"arch": models["lora_wrong_arch"], "shape": models["lora_wrong_shape"]}
    async with open_engine(adapters=resolver(paths)) as engine:
        with pytest.raises(AdapterNotFoundError):
            await complete(engine, ask("hi", "missing"))
        with pytest.raises(AdapterError, match="mismatch"):
            await complete(engine, ask("hi", "arch"))
        with pytest.raises(AdapterError, match="shape"):
            await complete(engine, ask("hi", "shape"))
        # The engine keeps serving.
        assert (await complete(engine, ask("hi", None, 3))).finish_reason == "length"
