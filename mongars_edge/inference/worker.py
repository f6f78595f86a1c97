"""The inference worker thread: owns the llama.cpp context and runs the batching loop.

It never waits on the event loop: requests arrive through the Scheduler (a short lock), and
events leave through `loop.call_soon_threadsafe`, one call per step.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import llama_cpp.llama_cpp as L

from mongars_edge.inference import lowlevel
from mongars_edge.inference.batch import Batch, ChunkSize
from mongars_edge.inference.engine import FinishReason, TokenEvent
from mongars_edge.inference.errors import AdapterError, DeadlineExceededError, EngineClosedError
from mongars_edge.inference.sequences import Active, Request, Slot, finish_event
from mongars_edge.inference.textstream import TextStream

if TYPE_CHECKING:
    from mongars_edge.inference.llama import EngineConfig
    from mongars_edge.inference.lowlevel import LoadedModel
    from mongars_edge.inference.scheduler import Scheduler

log = logging.getLogger(__name__)

_Delivery = list[tuple[Request, TokenEvent | BaseException]]
# Longest wait for requests still being prepared before a batch's first step (_gather_arrivals).
_GATHER_S = 0.05


class Heartbeat(Protocol):
    """What the systemd watchdog wants to hear from the decoder (telemetry.Watchdog)."""

    def beat_inference(self) -> None: ...

    def inference_idle(self) -> None: ...


class Worker:
    """Everything the inference thread owns. Built in a thread (context allocation is slow)."""

    def __init__(
        self,
        config: EngineConfig,
        model: LoadedModel,
        scheduler: Scheduler[Request],
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.heartbeat = heartbeat
        self.config = config
        self.model = model
        self.scheduler = scheduler
        n_slots = config.n_parallel + max(0, config.cache_slots)
        self.ctx = lowlevel.new_context(
            model,
            lowlevel.ContextParams(
                n_ctx=config.kv_cells or config.n_ctx * config.n_parallel,
                n_batch=config.n_batch,
                n_ubatch=config.n_ubatch,
                n_seq_max=n_slots,
                n_threads=config.n_threads,
                n_threads_batch=config.n_threads_batch,
                flash_attn=config.flash_attn,
            ),
        )
        self.mem = L.llama_get_memory(self.ctx)
        # llama.cpp rounds the context up; a sequence is held to what was asked for.
        self.n_ctx = min(config.n_ctx, int(L.llama_n_ctx(self.ctx)))
        self.batch = Batch(config.n_batch)
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self.active: list[Active] = []
        self.loras: dict[Path, Any] = {}
        self.current_adapter: Path | None = None
        self._group_turn = 0
        self._stopping = False
        self.chunk = ChunkSize(config.stall_target_s)
        # Duration of a step of n decoders and no prompt (EWMA), for the chunk size.
        self._decode_s: dict[int, float] = {}
        self.gen_tok_s = 0.0
        self.prompt_tok_s = 0.0
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._gathering_since = 0.0
        self._last_delivery = 0.0

    def call(self, command: Callable[[], None]) -> None:
        """Run `command` on the worker thread before its next step."""
        self._commands.put(command)
        self.scheduler.wake()

    def drop_idle_prefixes(self) -> int:
        """Forget every idle KV prefix (worker thread); returns how many were dropped."""
        n = 0
        while self._evict_idle(in_ram=True):
            n += 1
        return n

    def stop(self) -> None:
        self._stopping = True
        self.scheduler.wake()

    def free(self) -> None:
        """Release llama.cpp memory (after the thread ended)."""
        for slot in self.slots:
            slot.saved = None
        self.batch.free()
        for lora in self.loras.values():
            L.llama_adapter_lora_free(lora)
        self.loras.clear()
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        # Tokens are handed to the loop at most every `deliver_every_s`, except first tokens,
        # last events and errors, which go at once: every wake-up of the loop thread takes a
        # core from llama.cpp's threads on a small board.
        held: _Delivery = []
        try:
            while not self._stopping:
                while not self._commands.empty():
                    self._commands.get()()
                out: _Delivery = []
                self._expire(out)
                self._admit(out)
                self._reap(out)
                if self._gather_arrivals():
                    held.extend(out)
                    continue
                if self.active:
                    self._step(out)
                    if self.heartbeat is not None:
                        self.heartbeat.beat_inference()
                held.extend(out)
                if held and (urgent(out) or not self.active or self._due()):
                    self._deliver(held)
                    held = []
                if not self.active:
                    if self.heartbeat is not None:
                        self.heartbeat.inference_idle()
                    self.scheduler.wait_for_work(0.25)
        except BaseException:
            log.exception("inference worker crashed")
            raise
        finally:
            out = []
            for a in list(self.active):
                self._finish(a, "error", out, error="the engine stopped")
            # Nobody will take what is still queued: tell the waiting streams now.
            while (req := self.scheduler.pop()) is not None:
                self.scheduler.finished()
                req.done = True
                lowlevel.free_sampler(req.sampler)
                out.append((req, EngineClosedError("the inference engine stopped")))
            self._deliver(held + out)

    def _gather_arrivals(self) -> bool:
        """True to wait a moment before the first step of a batch: requests sent together are
        prepared (template, tokens) in threads and reach the queue a few ms apart; prefilled in
        one step they all start together. Once one decodes, a late one would be fed in small
        chunks behind it, and four streams sent at once ran 1.13x one stream instead of 1.35x
        (1.5B model, 2 cores)."""
        if self.scheduler.preparing <= 0 or any(a.pending is not None for a in self.active):
            self._gathering_since = 0.0
            return False
        now = time.perf_counter()
        if not self._gathering_since:
            self._gathering_since = now
        if now - self._gathering_since >= _GATHER_S:
            return False
        self.scheduler.wait_for_work(0.002)
        return True

    def _due(self) -> bool:
        return time.perf_counter() - self._last_delivery >= self.config.deliver_every_s

    def _expire(self, out: _Delivery) -> None:
        for req in self.scheduler.expired():
            req.done = True
            lowlevel.free_sampler(req.sampler)
            out.append((req, DeadlineExceededError("the request waited past its deadline")))

    def _admit(self, out: _Delivery) -> None:
        while len(self.active) < self.config.n_parallel:
            req = self.scheduler.pop()
            if req is None:
                return
            if req.cancelled:
                req.done = True
                lowlevel.free_sampler(req.sampler)
                self.scheduler.finished()
                continue
            try:
                if req.adapter is not None:
                    self._lora(req.adapter)
            except AdapterError as exc:
                req.done = True
                lowlevel.free_sampler(req.sampler)
                self.scheduler.finished()
                out.append((req, exc))
                continue
            slot, n_keep = self._assign_slot(req)
            a = Active(
                req=req,
                slot=slot,
                n_fed=n_keep,
                cached=n_keep,
                text=TextStream(req.request.sampling.stop),
            )
            self.active.append(a)

    def _reap(self, out: _Delivery) -> None:
        now = time.perf_counter()
        for a in list(self.active):
            if a.req.cancelled:
                self._finish(a, "cancelled", out)
            elif now > a.req.deadline:
                self._finish(a, "cancelled", out, error="deadline exceeded")

    # -- slots and prefix reuse ------------------------------------------------------------

    def _assign_slot(self, req: Request) -> tuple[Slot, int]:
        tokens = req.tokens
        limit = len(tokens) - 1  # the last prompt token is always decoded, for its logits

        def common(slot: Slot) -> int:
            if slot.adapter != req.adapter or not self.config.prefix_cache:
                return 0
            n = 0
            for x, y in zip(slot.tokens, tokens, strict=False):
                if x != y:
                    break
                n += 1
            return min(n, limit)

        idle = [s for s in self.slots if not s.busy]
        conv = req.request.conversation_id
        target = next((s for s in idle if conv and s.conversation == conv), None)
        if target is None:
            target = min(idle, key=lambda s: (len(s.tokens) > 0, s.last_used))
        best = max(self.slots, key=common)
        n_target, n_best = common(target), common(best)
        n_keep = 0
        if best is not target and n_best > n_target:
            self._drop(target)
            if self._restore(best, target.seq_id):
                n_keep = n_best
            elif best.saved is None:
                L.llama_memory_seq_cp(self.mem, best.seq_id, target.seq_id, 0, n_best)
                n_keep = n_best
            if n_keep:
                L.llama_memory_seq_rm(self.mem, target.seq_id, n_keep, -1)
            target.tokens = tokens[:n_keep]
        elif (
            n_target
            and (target.saved is None or self._restore(target, target.seq_id))
            and L.llama_memory_seq_rm(self.mem, target.seq_id, n_target, -1)
        ):
            n_keep = n_target
            del target.tokens[n_target:]
        if not n_keep:
            self._drop(target)
        target.saved = None
        target.busy = True
        target.adapter = req.adapter
        target.conversation = conv
        return target, n_keep

    def _drop(self, slot: Slot) -> None:
        """Forget a slot's prefix, in cells or in RAM."""
        L.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        slot.tokens = []
        slot.saved = None

    def _stash(self, slot: Slot) -> None:
        """An idle slot's KV to host RAM, its cells freed (see EngineConfig.prefix_ram_mb)."""
        budget = self.config.prefix_ram_mb * 1024 * 1024
        if not budget or not slot.tokens or slot.saved is not None:
            return
        size = int(L.llama_state_seq_get_size(self.ctx, slot.seq_id))
        buffer = (ctypes.c_uint8 * size)() if 0 < size <= budget else None
        if buffer is None or L.llama_state_seq_get_data(self.ctx, buffer, size, slot.seq_id) == 0:
            self._drop(slot)  # too big to keep, or llama.cpp could not copy it
            return
        slot.saved = buffer
        L.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        stashed = sorted(
            (s for s in self.slots if s.saved is not None and not s.busy),
            key=lambda s: s.last_used,
        )
        while stashed and sum(ctypes.sizeof(s.saved) for s in stashed) > budget:
            self._drop(stashed.pop(0))

    def _restore(self, source: Slot, seq_id: int) -> bool:
        """Put `source`'s stashed KV back into the cells of `seq_id`; False if not stashed or
        it does not fit."""
        if source.saved is None:
            return False
        buffer = source.saved
        L.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        if L.llama_state_seq_set_data(self.ctx, buffer, ctypes.sizeof(buffer), seq_id) == 0:
            L.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            return False
        return True

    def _evict_idle(self, *, in_ram: bool = False) -> bool:
        """Drop the least recently used idle prefix held in cells (and, with `in_ram`, in host
        RAM too); False if there is none."""
        idle = [s for s in self.slots if not s.busy and s.tokens and (in_ram or s.saved is None)]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_used)
        self._drop(victim)
        victim.conversation = None
        return True

    # -- adapters --------------------------------------------------------------------------

    def _lora(self, path: Path) -> Any:
        lora = self.loras.get(path)
        if lora is None:
            lowlevel.take_recent_errors()
            lora = L.llama_adapter_lora_init(self.model.ptr, str(path).encode())
            if not lora:
                why = lowlevel.take_recent_errors() or "unknown reason"
                raise AdapterError(f"llama.cpp cannot load the adapter {path.name} ({why})")
            self.loras[path] = lora
        return lora

    def _use_adapter(self, path: Path | None) -> None:
        if path == self.current_adapter:
            return
        if path is None:
            L.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            arr = (L.llama_adapter_lora_p_ctypes * 1)(self._lora(path))
            scales = (ctypes.c_float * 1)(1.0)
            L.llama_set_adapters_lora(self.ctx, arr, 1, scales)
        self.current_adapter = path

    # -- one step --------------------------------------------------------------------------

    def _pick_group(self) -> list[Active]:
        groups: dict[Path | None, list[Active]] = defaultdict(list)
        for a in self.active:
            groups[a.req.adapter].append(a)
        if len(groups) == 1:
            return next(iter(groups.values()))
        keys = sorted(groups, key=lambda k: "" if k is None else str(k))
        self._group_turn = (self._group_turn + 1) % len(keys)
        return groups[keys[self._group_turn]]

    def _step(self, out: _Delivery) -> None:
        group = self._pick_group()
        self._use_adapter(group[0].req.adapter)
        batch = self.batch
        while True:
            batch.clear()
            decoders = [a for a in group if a.pending is not None]
            for a in decoders:
                a.fed = [a.pending]  # type: ignore[list-item]
                a.out_index = batch.add(a.pending, len(a.slot.tokens), a.slot.seq_id, True)  # type: ignore[arg-type]
            budget = self._prefill_budget(len(decoders))
            prefilling = [a for a in group if a.pending is None]
            for a in prefilling:
                a.fed = []
                a.out_index = -1
                todo = len(a.req.tokens) - a.n_fed
                take = min(todo, budget)
                if take <= 0:
                    continue
                base = len(a.slot.tokens)
                for k in range(take):
                    tok = a.req.tokens[a.n_fed + k]
                    last = k == take - 1 and take == todo
                    i = batch.add(tok, base + k, a.slot.seq_id, last)
                    a.fed.append(tok)
                    if last:
                        a.out_index = i
                budget -= take
            batch.raw.n_tokens = batch.n
            t0 = time.perf_counter()
            rc = L.llama_decode(self.ctx, batch.raw)
            dt = time.perf_counter() - t0
            if rc == 0:
                break
            if rc == 1 and self._evict_idle():
                continue
            # No room even after dropping every idle prefix: the youngest sequence gives way.
            victim = group[-1]
            L.llama_memory_seq_rm(self.mem, victim.slot.seq_id, -1, -1)
            victim.slot.tokens = []
            why = "the context is full" if rc == 1 else f"llama_decode failed ({rc})"
            self._finish(victim, "error", out, error=why)
            return
        self._learn_cost(dt, batch.n, len(decoders))
        now = time.perf_counter()
        for a in group:
            if not a.fed:
                continue
            a.slot.tokens.extend(a.fed)
            if a.pending is None:
                a.n_fed += len(a.fed)
            if a.out_index >= 0:
                token = L.llama_sampler_sample(a.req.sampler, self.ctx, a.out_index)
                self._on_token(a, token, now, out)

    def _prefill_budget(self, n_decoders: int) -> int:
        cap = self.batch.capacity - n_decoders
        if n_decoders == 0:
            return cap  # nobody is waiting for a token: the whole batch goes to prompts
        return self.chunk.budget(cap)

    def _learn_cost(self, dt: float, n_tokens: int, n_decoders: int) -> None:
        n_prefill = n_tokens - n_decoders
        if n_decoders and n_prefill:
            self.chunk.learn(dt, n_prefill, self._decode_s.get(n_decoders, 0.0))
        elif n_decoders:
            last = self._decode_s.get(n_decoders)
            self._decode_s[n_decoders] = dt if last is None else 0.8 * last + 0.2 * dt
        if dt <= 0:
            return
        if n_decoders:
            self.gen_tok_s = 0.9 * self.gen_tok_s + 0.1 * (n_decoders / dt)
        if n_prefill >= 32:
            self.prompt_tok_s = 0.8 * self.prompt_tok_s + 0.2 * (n_prefill / dt)

    def _on_token(self, a: Active, token: int, now: float, out: _Delivery) -> None:
        if not a.t_first:
            a.t_first = now
        a.t_last = now
        if self.model.is_eog(token):
            self._finish(a, "stop", out)
            return
        a.n_gen += 1
        text = a.text.push(self.model.piece(token))
        if a.text.stopped:
            out.append((a.req, TokenEvent(text, token)))
            self._finish(a, "stop", out)
            return
        sampling = a.req.request.sampling
        if a.n_gen >= sampling.max_tokens or len(a.slot.tokens) + 1 >= self.n_ctx:
            out.append((a.req, TokenEvent(text, token)))
            self._finish(a, "length", out, text=a.text.flush())
            return
        if text:
            out.append((a.req, TokenEvent(text, token)))
        else:
            out.append((a.req, TokenEvent("", token)))
        a.pending = token

    def _finish(
        self,
        a: Active,
        reason: FinishReason,
        out: _Delivery,
        *,
        text: str = "",
        error: str | None = None,
    ) -> None:
        self.active.remove(a)
        a.slot.busy = False
        a.slot.last_used = time.perf_counter()
        self._stash(a.slot)
        a.req.done = True
        lowlevel.free_sampler(a.req.sampler)
        self.scheduler.finished(time.perf_counter() - a.t_start)
        if not a.req.cancelled or error is not None:
            out.append((a.req, finish_event(a, reason, text, error)))

    def _deliver(self, out: _Delivery) -> None:
        self._last_delivery = time.perf_counter()
        if not out:
            return
        by_loop: dict[Any, _Delivery] = defaultdict(list)
        for req, item in out:
            by_loop[req.loop].append((req, item))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(_put_all, items)


def urgent(out: _Delivery) -> bool:
    """Events that must not wait: errors, last events, and a stream's first token."""
    for req, item in out:
        if not isinstance(item, TokenEvent) or item.finish_reason is not None:
            return True
        if not req.first_sent:
            req.first_sent = True
            return True
    return False


def _put_all(items: _Delivery) -> None:
    for req, item in items:
        req.queue.put_nowait(item)
