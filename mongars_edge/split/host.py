"""SplitEngine: a model split across boxes, run in a supervised child (see child.py).

llama.cpp's RPC client aborts its process when a worker's connection breaks, so the split
model lives in a child process; this Engine is its face in the box. It renders and counts
with the model's vocabulary (loaded here without weights), sends each request to the child as
the mesh sends one to a peer, and streams the tokens back.

Supervised: a child that dies (a worker lost, an abort) ends the requests in flight with a
SplitError naming the worker; meanwhile requests are refused with the numbers (or go to a
fallback engine the box can hold alone), and when every worker answers HELLO again a new child
loads the model and splitting resumes. A worker of another RPC protocol is refused before
ggml ever connects to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from mongars_edge.inference.engine import (
    ChatRequest,
    EngineLoad,
    Message,
    ModelInfo,
    Prompt,
    Timings,
    TokenEvent,
    Usage,
    as_request,
)
from mongars_edge.inference.errors import PromptTooLongError
from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import CodecError
from mongars_edge.mesh.remote import to_wire
from mongars_edge.split import rpc
from mongars_edge.split.process import Child, RequestCount, read_frame, spawn
from mongars_edge.split.rpc import SplitError
from mongars_edge.split.wire import HostHello, HostSpec, decode_hello

if TYPE_CHECKING:
    from mongars_edge.inference.engine import Engine
    from mongars_edge.inference.llama import EngineConfig
    from mongars_edge.inference.lowlevel import LoadedModel
    from mongars_edge.inference.templates import ChatTemplate
    from mongars_edge.split.plan import SplitPlan

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S: Final = 1800.0
_RETRY_CAP_S: Final = 60.0
_FINISH: Final = ("stop", "length", "cancelled", "error")
_ENGINE_FIELDS: Final = (
    "n_ctx",
    "n_parallel",
    "kv_cells",
    "n_threads",
    "n_threads_batch",
    "n_batch",
    "n_ubatch",
    "queue_size",
    "request_deadline_s",
    "cache_slots",
    "prefix_ram_mb",
    "stall_target_s",
    "flash_attn",
    "cpu_repack",
    "prefix_cache",
    "deliver_every_s",
)


class SplitLostError(SplitError):
    """The split's child or one of its workers was lost; the box goes on without it."""

    kind = "split_lost"


class SplitEngine:
    """An Engine over a model whose last layers live on RPC workers (module docstring)."""

    def __init__(
        self,
        config: EngineConfig,
        plan: SplitPlan,
        *,
        vocab: LoadedModel,
        template: ChatTemplate,
        fallback: Engine | None = None,
        retry_s: float = 2.0,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.plan = plan
        self._vocab = vocab
        self._template = template
        self.fallback = fallback
        self._retry_s = retry_s
        self._python = python
        self._child: Child | None = None
        self._hello: HostHello | None = None
        self._ids = itertools.count(1)
        self._resume: asyncio.Task[None] | None = None
        self._closed = False
        self._serving = asyncio.Event()
        self.scheduler = RequestCount()
        self.lost_reason = ""
        self.load_s = 0.0
        self.losses = 0
        self._gen_tok_s = 0.0

    # -- start, loss, resume, stop ---------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: EngineConfig,
        plan: SplitPlan,
        *,
        fallback: Engine | None = None,
        retry_s: float = 2.0,
    ) -> AsyncIterator[SplitEngine]:
        """Check the workers, start the child and wait until the model is loaded across them;
        SplitError (nothing left running) when it cannot be."""
        from mongars_edge.inference import lowlevel
        from mongars_edge.inference.templates import ChatTemplate

        vocab = await asyncio.to_thread(lowlevel.load_model, config.model_path, vocab_only=True)
        try:
            template = ChatTemplate(
                config.chat_template or vocab.chat_template or "",
                bos_token=vocab.piece(vocab.bos_id, special=True).decode("utf-8", "replace"),
                eos_token=vocab.piece(vocab.eos_id, special=True).decode("utf-8", "replace"),
            )
            engine = cls(
                config, plan, vocab=vocab, template=template, fallback=fallback, retry_s=retry_s
            )
            try:
                await engine._start_child()
                yield engine
            finally:
                await engine.close()
        finally:
            await asyncio.to_thread(vocab.free)

    async def check_workers(self) -> None:
        """Every worker answers HELLO in our RPC protocol (SplitError naming what is wrong)."""
        for place in self.plan.remote:
            theirs = await asyncio.to_thread(rpc.hello, place.endpoint)
            rpc.check_version(place.endpoint, theirs)

    async def _start_child(self) -> None:
        await self.check_workers()
        spec = HostSpec(
            model_path=str(self.config.model_path),
            model_id=self.config.model_id,
            endpoints=[p.endpoint for p in self.plan.remote],
            n_remote_layers=self.plan.n_remote_layers,
            tensor_split=list(self.plan.tensor_split),
            engine={name: getattr(self.config, name) for name in _ENGINE_FIELDS},
        )
        t0 = time.monotonic()
        child = await spawn(spec, self._python)
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                payload = await read_frame(child.reader)
            hello = decode_hello(payload) if payload is not None else None
        except (TimeoutError, msgspec.DecodeError) as exc:
            await child.kill()
            raise SplitError(f"the split host did not load {self.config.model_id}: {exc}") from None
        except BaseException:  # cancelled while loading (the box is closing)
            await asyncio.shield(child.kill())
            raise
        if hello is None or hello.error:
            await child.kill()
            why = hello.error if hello is not None else child.why()
            raise SplitError(
                f"{self.config.model_id} could not be loaded across "
                f"{', '.join(p.where for p in self.plan.remote)}: {why}"
            )
        self.load_s = time.monotonic() - t0
        self._hello, self._child, self.lost_reason = hello, child, ""
        self._serving.set()
        child.tasks.append(asyncio.ensure_future(self._pump(child)))
        log.info(
            "split model loaded",
            extra={
                "model": self.config.model_id,
                "placement": self.plan.summary(),
                "load_s": round(self.load_s, 1),
            },
        )

    async def _pump(self, child: Child) -> None:
        """Route the child's frames to their streams; on its end, the loss."""
        while (payload := await read_frame(child.reader)) is not None:
            try:
                msg = codec.decode(payload)
            except CodecError as exc:
                log.warning("split child sent a bad frame: %s", exc)
                continue
            queue = child.streams.get(getattr(msg, "stream_id", -1))
            if queue is not None:
                queue.put_nowait(msg)
        await child.proc.wait()
        await asyncio.sleep(0)  # let the stderr pump read the last words
        self._lost(child, child.why())

    def _lost(self, child: Child, why: str) -> None:
        if self._child is not child or self._closed:
            return
        self._child = None
        self._serving.clear()
        self.losses += 1
        workers = ", ".join(p.where for p in self.plan.remote)
        self.lost_reason = f"the split across {workers} was lost ({why})"
        log.warning("%s: retrying every %g s", self.lost_reason, self._retry_s)
        error = SplitLostError(f"{self.lost_reason}; this request could not finish")
        for queue in child.streams.values():
            queue.put_nowait(error)
        child.writer.close()
        self._resume = asyncio.ensure_future(self._resume_when_back())

    async def _resume_when_back(self) -> None:
        wait = self._retry_s
        while not self._closed:
            await asyncio.sleep(wait)
            try:
                await self._start_child()
            except rpc.WorkerUnreachableError as exc:
                log.debug("split not back yet: %s", exc)  # a HELLO is cheap: ask as often
                continue
            except SplitError as exc:
                log.debug("split not back yet: %s", exc)
                # A worker that answers but cannot hold its layers costs a whole load: back off.
                wait = min(wait * 2, max(self._retry_s, _RETRY_CAP_S))
                continue
            log.info("split resumed", extra={"model": self.config.model_id})
            return

    async def close(self) -> None:
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
            await asyncio.gather(self._resume, return_exceptions=True)
        child, self._child = self._child, None
        if child is not None:
            for queue in child.streams.values():
                queue.put_nowait(SplitLostError("the split engine stopped"))
            child.writer.close()  # the child exits when its socket closes
            try:
                async with asyncio.timeout(10):
                    await child.proc.wait()
            except TimeoutError:
                log.warning("split child did not exit: killed")
            await child.kill()

    @property
    def serving(self) -> bool:
        """The split model is loaded and its workers reachable (as far as is known)."""
        return self._child is not None

    async def wait_serving(self) -> None:
        """Until the split model is loaded and serving (again)."""
        await self._serving.wait()

    def placement(self) -> dict[str, Any]:
        """Which layers live where, for /health."""
        out: dict[str, Any] = {
            "model": self.config.model_id,
            "state": "serving" if self.serving else "lost",
            **self.plan.to_dict(),
            "load_s": round(self.load_s, 1),
            "losses": self.losses,
        }
        if self.lost_reason:
            out["problem"] = self.lost_reason
        return out

    def refusal(self) -> str:
        """Why a request cannot run while the split is lost: with the numbers."""
        local = self.plan.local
        away = sum(p.need_mb for p in self.plan.remote)
        return (
            f"{self.lost_reason or 'the split is not loaded'}: {self.config.model_id} needs "
            f"~{self.plan.need_mb} MiB and this box holds {local.budget_mb} MiB ({local.layers} "
            f"of its {self.plan.n_layer} layers); the other ~{away} MiB lived on the workers. "
            "Splitting resumes when they answer again"
        )

    # -- the Engine protocol ---------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        h = self._hello
        v = self._vocab
        return ModelInfo(
            id=self.config.model_id,
            path=str(self.config.model_path),
            architecture=h.architecture if h else v.architecture,
            n_ctx=self.config.n_ctx,
            n_ctx_train=v.n_ctx_train,
            n_params=h.n_params if h else v.n_params,
            size_bytes=h.size_bytes if h else v.size_bytes,
            chat_template=self._template.source,
        )

    def count_tokens(self, text: str) -> int:
        return len(self._vocab.tokenize(text, add_special=False))

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return self._vocab.tokenize(text, add_special=add_special)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self._template.render(messages, add_generation_prompt=add_generation_prompt)

    def load(self) -> EngineLoad:
        return EngineLoad(
            queue_depth=0,
            active=self.scheduler.active,
            n_parallel=self.config.n_parallel,
            generation_tok_s=self._gen_tok_s,
            prompt_tok_s=0.0,
        )

    async def drop_prefix_cache(self) -> int:
        return 0  # the child keeps its own; nothing to drop from here

    async def prepare(self, request: ChatRequest) -> Prompt:
        return await asyncio.to_thread(self._prompt, request)

    def _prompt(self, request: ChatRequest) -> Prompt:
        text = self._template.render(
            request.messages,
            add_generation_prompt=True,
            assistant_prefix=request.assistant_prefix,
            tools=request.tools if request.tool_choice != "none" else (),
        )
        tokens = self._vocab.tokenize(text, add_special=True)
        if len(tokens) + 1 > self.config.n_ctx:
            raise PromptTooLongError(len(tokens), self.config.n_ctx)
        return Prompt(request, text, tuple(tokens))

    async def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        child = self._child
        if child is None:
            if self.fallback is None:
                raise SplitLostError(self.refusal())
            async for event in self.fallback.stream(as_request(request)):
                yield event
            return
        chat = as_request(request)
        if isinstance(request, ChatRequest) or request.n_tokens + 1 > self.config.n_ctx:
            await self.prepare(chat)  # PromptTooLongError before anything is sent
        sid = next(self._ids)
        queue: asyncio.Queue[codec.Msg | BaseException] = asyncio.Queue()
        child.streams[sid] = queue
        self.scheduler.enter()
        started = time.monotonic()
        done = False
        try:
            child.send(to_wire(chat, sid, self.config.model_id))
            await child.writer.drain()
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if isinstance(item, codec.TokenChunk):
                    yield TokenEvent(item.text, item.token_id)
                elif isinstance(item, codec.End):
                    done = True
                    self._gen_tok_s = item.gen_tok_s or self._gen_tok_s
                    reason = item.finish_reason if item.finish_reason in _FINISH else "error"
                    yield TokenEvent(
                        "",
                        finish_reason=reason,  # type: ignore[arg-type]
                        usage=Usage(item.prompt_tokens, item.completion_tokens),
                        timings=Timings(0.0, 0.0, item.gen_tok_s, time.monotonic() - started),
                        error=item.error,
                    )
                    return
                elif isinstance(item, codec.Error):
                    done = True
                    raise SplitError(f"the split host refused the request: {item.message}")
        except (ConnectionError, OSError) as exc:
            raise SplitLostError(f"the split host is gone ({exc})") from None
        finally:
            self.scheduler.leave()
            child.streams.pop(sid, None)
            if not done and self._child is child:
                with contextlib.suppress(ConnectionError, OSError):
                    child.send(codec.Cancel(sid))
