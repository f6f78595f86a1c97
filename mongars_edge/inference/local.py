"""The box's own engine: one llama.cpp model loaded at a time, swapped without a restart.

Everything that holds "the local engine" (the router, the mesh, the memory worker, the web
edge) holds this one object; `swap` puts a new model behind it. A request keeps the engine it
started on, so requests in flight finish on the old model, which is closed once they are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from mongars_edge.inference.engine import (
    ChatRequest,
    Engine,
    EngineLoad,
    Message,
    ModelInfo,
    Prompt,
    TokenEvent,
)
from mongars_edge.inference.errors import EngineClosedError

if TYPE_CHECKING:
    from mongars_edge.inference.llama import EngineConfig

log = logging.getLogger(__name__)


class Busy(Protocol):
    """What the memory worker waits on: a Scheduler, or a split's request counter."""

    @property
    def depth(self) -> int: ...

    @property
    def active(self) -> int: ...

    def is_idle(self) -> bool: ...

    async def wait_idle(self) -> None: ...

    async def wait_busy(self) -> None: ...


class HeldEngine(Engine, Protocol):
    """An engine this box holds: its own LlamaEngine, or a model split across workers."""

    @property
    def config(self) -> EngineConfig: ...

    @property
    def scheduler(self) -> Busy: ...

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]: ...

    async def drop_prefix_cache(self) -> int: ...


class _Loaded:
    """One opened engine and the exit stack that closes it."""

    def __init__(self, engine: HeldEngine, stack: contextlib.AsyncExitStack) -> None:
        self.engine = engine
        self.stack = stack
        self.streams = 0  # requests running on it, counted here (not by the engine's queue)
        self.drained = asyncio.Event()
        self.drained.set()


class LocalEngine:
    """An Engine over whichever local model is loaded now (see the module docstring)."""

    def __init__(self) -> None:
        self._current: _Loaded | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._swap_lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def engine(self) -> HeldEngine:
        """The engine behind this facade now; EngineClosedError when none is loaded."""
        if self._current is None:
            raise EngineClosedError("no chat model is loaded on this box")
        return self._current.engine

    async def swap(self, opened: contextlib.AbstractAsyncContextManager[HeldEngine]) -> None:
        """Open `opened` (a `LlamaEngine.open(...)`, a `SplitEngine.open(...)`) and make it the
        engine; the previous one
        closes once its requests are done. If opening fails, the previous engine stays."""
        async with self._swap_lock:
            stack = contextlib.AsyncExitStack()
            try:
                engine = await stack.enter_async_context(opened)
            except BaseException:
                await stack.aclose()
                raise
            old, self._current = self._current, _Loaded(engine, stack)
            if old is not None:
                task = asyncio.ensure_future(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            log.info("chat model loaded", extra={"model": engine.info.id})

    async def _retire(self, old: _Loaded) -> None:
        t0 = time.monotonic()
        await old.drained.wait()
        await old.stack.aclose()
        log.info(
            "previous chat model closed",
            extra={
                "model": old.engine.config.model_id,
                "waited_s": round(time.monotonic() - t0, 1),
            },
        )

    async def close(self) -> None:
        """Close every engine, the current one and those still finishing requests."""
        current, self._current = self._current, None
        if current is not None:
            await current.stack.aclose()  # its open streams end with "the engine stopped"
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- the Engine protocol ---------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return self.engine.tokenize(text, add_special=add_special)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self.engine.render(messages, add_generation_prompt=add_generation_prompt)

    def load(self) -> EngineLoad:
        if self._current is None:
            return EngineLoad(0, 0, 1, 0.0, 0.0)
        return self._current.engine.load()

    async def prepare(self, request: ChatRequest) -> Prompt:
        return await self.engine.prepare(request)

    async def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        loaded = self._current
        if loaded is None:
            raise EngineClosedError("no chat model is loaded on this box")
        loaded.streams += 1
        loaded.drained.clear()
        try:
            async for event in loaded.engine.stream(request):
                yield event
        finally:
            loaded.streams -= 1
            if loaded.streams == 0:
                loaded.drained.set()

    async def drop_prefix_cache(self) -> int:
        return await self.engine.drop_prefix_cache()

    # -- what the memory worker waits on (an IdleSignal over the current engine) -------------

    @property
    def depth(self) -> int:
        return self._current.engine.scheduler.depth if self._current else 0

    @property
    def active(self) -> int:
        return self._current.engine.scheduler.active if self._current else 0

    def is_idle(self) -> bool:
        return self._current is None or self._current.engine.scheduler.is_idle()

    async def wait_idle(self) -> None:
        while self._current is not None and not self.is_idle():
            # A swap while waiting: the old scheduler goes idle as it drains; look again.
            await self._current.engine.scheduler.wait_idle()

    async def wait_busy(self) -> None:
        while self._current is None:  # noqa: ASYNC110 - a swap has no event of its own
            await asyncio.sleep(0.5)
        await self._current.engine.scheduler.wait_busy()
