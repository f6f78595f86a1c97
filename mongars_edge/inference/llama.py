"""The local engine: one worker thread owns llama.cpp and steps every sequence together.

Continuous batching: each step is one `llama_decode` holding the next token of every running
sequence plus a chunk of the prompts being prefilled, sized so that running streams stall no
longer than `stall_target_s`. Sequences with different LoRA adapter sets never share a step.
Finished sequences leave their KV cache behind; a later prompt that starts with the same tokens
(the next turn of a conversation, a shared system prompt) reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mongars_edge.inference.engine import (
    ChatRequest,
    EngineLoad,
    Message,
    ModelInfo,
    Prompt,
    TokenEvent,
    as_request,
)
from mongars_edge.inference.errors import EngineClosedError, PromptTooLongError
from mongars_edge.inference.scheduler import Scheduler
from mongars_edge.inference.sequences import Request, free_sampler
from mongars_edge.inference.templates import ChatTemplate
from mongars_edge.inference.tools import json_schema_grammar, tool_grammar

if TYPE_CHECKING:
    from mongars_edge.hardware.tuning import TuningProfile
    from mongars_edge.inference.lowlevel import LoadedModel
    from mongars_edge.inference.worker import Heartbeat, Worker
    from mongars_edge.settings import Settings

log = logging.getLogger(__name__)

AdapterResolver = Callable[[str], Path]
# How long a prepared prompt counts as about to arrive (the worker waits 50 ms at most).
_TICKET_S = 0.05


@dataclass(frozen=True)
class EngineConfig:
    """How the local engine is sized; built from Settings and the tuning profile."""

    model_path: Path
    model_id: str = ""
    n_ctx: int = 4096  # the most one sequence may hold (prompt + reply)
    n_parallel: int = 4
    # KV cells shared by all sequences; 0: n_ctx * n_parallel, as the tuning profile budgets.
    kv_cells: int = 0
    n_threads: int = 2
    n_threads_batch: int = 2
    n_batch: int = 512
    n_ubatch: int = 512
    n_gpu_layers: int = 0
    # Devices to offload to instead of llama.cpp's pick (a split's RPC devices: ggml handles,
    # valid in the process that registered them) and each one's share of the offloaded layers.
    devices: tuple[int, ...] = ()
    tensor_split: tuple[float, ...] = ()
    queue_size: int = 32
    request_deadline_s: float = 300.0
    # Idle sequences kept beyond n_parallel so finished conversations keep their KV prefix.
    # Their KV waits in host RAM (prefix_ram_mb), not in cells, so keeping more costs no KV:
    # with 4, bursts of 8 prompts seen before on the 1.5B (one core) found half of them evicted
    # and ran 10.7-13.1 tok/s, against 13.1-13.4 with 12.
    cache_slots: int = 12
    # Kept prefixes wait in host RAM (llama_state_seq_get_data), not in KV cells, up to this
    # many MiB: in the unified cache every step attends up to the highest cell any sequence
    # holds, so prefixes kept in cells slowed a lone stream by 10-15% on the 135M model.
    # 0 keeps them in cells.
    prefix_ram_mb: int = 512
    # Longest llama_decode a prefill chunk may make of the streams' step. Their gap is that plus
    # sampling and delivery (~15 ms), and a step of the same shape swings by 20-30% on a shared
    # box: 0.25 gave gaps of 324-331 ms on the 1.5B (bench (d): <= 300 ms), 0.22 holds it.
    stall_target_s: float = 0.22
    chat_template: str | None = None
    # Repacked CPU weight layouts (llama.cpp's extra buffer types): faster matrix kernels, whose
    # sums round differently from the plain ones a split's RPC worker runs.
    cpu_repack: bool = True
    # Flash attention: faster on CPU and GPU, and what llama-server uses by default.
    flash_attn: bool = True
    # Reuse KV prefixes across requests. Results may differ in the last float bits from a cold
    # prefill (llama.cpp computes a 1-token batch in a different order than a long one).
    prefix_cache: bool = True
    # Longest a generated token may wait to be handed to the event loop (first tokens, last
    # events and errors go at once). Fewer loop wake-ups leave the cores to llama.cpp.
    deliver_every_s: float = 0.05

    @classmethod
    def from_settings(
        cls, settings: Settings, profile: TuningProfile, model_path: Path, model_id: str
    ) -> EngineConfig:
        """Settings overrides (non-zero) beat the tuning profile."""
        n_threads = settings.n_threads or profile.n_threads
        gpu = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else profile.n_gpu_layers
        return cls(
            model_path=model_path,
            model_id=model_id,
            n_ctx=settings.ctx_size or profile.ctx_size,
            n_parallel=settings.n_parallel or profile.n_parallel,
            n_threads=n_threads,
            n_threads_batch=settings.n_threads or profile.n_threads_batch,
            n_batch=profile.n_batch,
            n_ubatch=min(profile.n_ubatch, profile.n_batch),
            n_gpu_layers=gpu,
            cpu_repack=settings.cpu_repack,
            queue_size=settings.queue_size,
            request_deadline_s=settings.request_deadline_s,
        )


class LlamaEngine:
    """The Engine for the local llama.cpp model (see `engine.Engine`)."""

    def __init__(
        self,
        config: EngineConfig,
        model: LoadedModel,
        template: ChatTemplate,
        adapters: AdapterResolver | None,
    ) -> None:
        self.config = config
        self._model = model
        self._template = template
        self._adapters = adapters
        self._n_ctx = config.n_ctx
        self._scheduler: Scheduler[Request] = Scheduler(config.queue_size, config.n_parallel)
        self._worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: EngineConfig,
        *,
        adapters: AdapterResolver | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> AsyncIterator[LlamaEngine]:
        """Load the model (in a thread), start the worker, and stop everything on exit."""
        from mongars_edge.inference import lowlevel

        model = await asyncio.to_thread(
            lowlevel.load_model,
            config.model_path,
            n_gpu_layers=config.n_gpu_layers,
            require_template=config.chat_template is None,
            devices=config.devices,
            tensor_split=config.tensor_split,
            repack=config.cpu_repack,
        )
        try:
            template = ChatTemplate(
                config.chat_template or model.chat_template or "",
                bos_token=model.piece(model.bos_id, special=True).decode("utf-8", "replace"),
                eos_token=model.piece(model.eos_id, special=True).decode("utf-8", "replace"),
            )
            engine = cls(config, model, template, adapters)
            await engine._start(heartbeat)
        except BaseException:
            await asyncio.to_thread(model.free)
            raise
        try:
            yield engine
        finally:
            await engine._stop()

    async def _start(self, heartbeat: Heartbeat | None) -> None:
        from mongars_edge.inference.worker import Worker

        loop = asyncio.get_running_loop()
        self._scheduler.bind(loop)
        self._worker = await asyncio.to_thread(
            Worker, self.config, self._model, self._scheduler, heartbeat
        )
        self._thread = threading.Thread(target=self._worker.run, name="mongars-llama", daemon=True)
        self._thread.start()
        log.info(
            "engine ready",
            extra={
                "model": self.config.model_id,
                "n_ctx": self._n_ctx,
                "parallel": self.config.n_parallel,
            },
        )

    async def _stop(self) -> None:
        self._closed = True
        worker, thread = self._worker, self._thread
        if worker is not None:
            worker.stop()
        if thread is not None:
            await asyncio.to_thread(thread.join)
        while (req := self._scheduler.pop()) is not None:
            self._scheduler.finished()
            req.done = True
            req.queue.put_nowait(EngineClosedError("the engine stopped before this request ran"))
            free_sampler(req.sampler)
        if worker is not None:
            await asyncio.to_thread(worker.free)
        await asyncio.to_thread(self._model.free)

    # -- the Engine protocol ---------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        m = self._model
        return ModelInfo(
            id=self.config.model_id or m.path.stem,
            path=str(m.path),
            architecture=m.architecture,
            n_ctx=self._n_ctx,
            n_ctx_train=m.n_ctx_train,
            n_params=m.n_params,
            size_bytes=m.size_bytes,
            chat_template=self._template.source,
        )

    @property
    def scheduler(self) -> Scheduler[Request]:
        """Queue and idle signal (memory consolidation waits on `wait_idle`)."""
        return self._scheduler

    async def drop_prefix_cache(self) -> int:
        """Forget the KV prefixes of finished requests (benchmarks, memory pressure)."""
        worker = self._worker
        if worker is None:
            return 0
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def command() -> None:
            n = worker.drop_idle_prefixes()
            loop.call_soon_threadsafe(done.set_result, n)

        worker.call(command)
        return await done

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenize(text, add_special=False))

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_special=add_special)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self._template.render(messages, add_generation_prompt=add_generation_prompt)

    def load(self) -> EngineLoad:
        w = self._worker
        return EngineLoad(
            queue_depth=self._scheduler.depth,
            active=self._scheduler.active,
            n_parallel=self.config.n_parallel,
            generation_tok_s=w.gen_tok_s if w else 0.0,
            prompt_tok_s=w.prompt_tok_s if w else 0.0,
        )

    async def prepare(self, request: ChatRequest) -> Prompt:
        """Render and tokenize once, in a thread; see `engine.Engine.prepare`."""
        ticket = _Ticket(self._scheduler)
        try:
            prompt = await asyncio.to_thread(self._prompt, request, ticket)
        except BaseException:
            ticket.release()
            raise
        # Counted as about to arrive until it is streamed here, or until it surely went
        # elsewhere (a peer, a trimmed retry): the worker waits for it before a batch starts.
        asyncio.get_running_loop().call_later(_TICKET_S, ticket.release)
        return prompt

    async def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        """Stream the reply to `request`; see `engine.Engine.stream`."""
        if self._closed or (self._thread is not None and not self._thread.is_alive()):
            raise EngineClosedError("the inference engine is stopped")
        loop = asyncio.get_running_loop()
        chat = as_request(request)
        ticket = request.owner if isinstance(request, Prompt) else None
        mine = isinstance(ticket, _Ticket) and ticket.scheduler is self._scheduler
        self._scheduler.preparing += 1
        try:
            if mine and not _needs_a_thread(chat):
                assert isinstance(request, Prompt)
                req = self._admit(request, loop)  # a few C calls: no thread hop
            else:
                prompt = request if mine and isinstance(request, Prompt) else None
                req = await self._admit_in_thread(chat, prompt, loop)
            req.deadline = time.perf_counter() + self.config.request_deadline_s
            try:
                self._scheduler.submit(
                    req, user=chat.user_id, deadline_s=self.config.request_deadline_s
                )
            except BaseException:
                free_sampler(req.sampler)
                raise
        finally:
            self._scheduler.preparing -= 1
            if mine:
                assert isinstance(ticket, _Ticket)
                ticket.release()
        try:
            while True:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not req.done:
                req.cancelled = True
                if self._scheduler.remove(req):
                    req.done = True
                    free_sampler(req.sampler)
                self._scheduler.wake()

    async def _admit_in_thread(
        self, chat: ChatRequest, prompt: Prompt | None, loop: asyncio.AbstractEventLoop
    ) -> Request:
        def work() -> Request:
            return self._admit(prompt or self._prompt(chat, None), loop)

        prepared = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            return await asyncio.shield(prepared)
        except asyncio.CancelledError:
            prepared.add_done_callback(_free_prepared)  # the thread still builds a sampler
            raise

    def _prompt(self, request: ChatRequest, ticket: _Ticket | None) -> Prompt:
        """The one render and the one tokenization of a request (runs in a thread)."""
        text = self._template.render(
            request.messages,
            add_generation_prompt=True,
            assistant_prefix=request.assistant_prefix,
            tools=request.tools if request.tool_choice != "none" else (),
        )
        tokens = self._model.tokenize(text, add_special=True)
        bos = self._model.bos_id
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]  # the template wrote BOS itself
        if len(tokens) + 1 > self._n_ctx:
            raise PromptTooLongError(len(tokens), self._n_ctx)
        return Prompt(request, text, tuple(tokens), ticket or _Ticket(self._scheduler, held=False))

    def _admit(self, prompt: Prompt, loop: asyncio.AbstractEventLoop) -> Request:
        """Sampler and adapter for a prepared prompt (in a thread when a grammar or an adapter
        has to be read)."""
        from mongars_edge.inference import lowlevel

        request = prompt.request
        adapter = None
        if request.adapter:
            if self._adapters is None:
                from mongars_edge.inference.errors import AdapterNotFoundError

                raise AdapterNotFoundError(f"no adapter store: cannot use {request.adapter!r}")
            adapter = self._adapters(request.adapter)
        grammar = request.grammar
        triggers: tuple[str, ...] = ()
        if request.json_schema is not None:
            grammar = json_schema_grammar(request.json_schema)
        calls = tool_grammar(request.tools, request.tool_choice, self._template.tool_format)
        if calls is not None:
            grammar, triggers = calls.gbnf, calls.triggers
        sampler = lowlevel.build_sampler(self._model, request.sampling, grammar, triggers)
        return Request(request, list(prompt.tokens), sampler, adapter, loop)


class _Ticket:
    """A prompt this engine prepared: counted in `Scheduler.preparing` until released."""

    __slots__ = ("_held", "scheduler")

    def __init__(self, scheduler: Scheduler[Request], *, held: bool = True) -> None:
        self.scheduler = scheduler
        self._held = held
        if held:
            scheduler.preparing += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self.scheduler.preparing -= 1


def _needs_a_thread(request: ChatRequest) -> bool:
    return (
        bool(request.adapter)
        or request.grammar is not None
        or request.json_schema is not None
        or (bool(request.tools) and request.tool_choice != "none")
    )


def _free_prepared(done: asyncio.Future[Request]) -> None:
    if not done.cancelled() and done.exception() is None:
        free_sampler(done.result().sampler)
