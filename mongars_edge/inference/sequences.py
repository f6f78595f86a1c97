"""What one request becomes inside the local engine: shared by the loop side and the worker thread.

`Request` is built by `LlamaEngine` on the loop side and handed to the worker through the
Scheduler; `Slot` and `Active` belong to the worker thread alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mongars_edge.inference.engine import ChatRequest, FinishReason, Timings, TokenEvent, Usage


@dataclass(eq=False)
class Request:
    """One admitted request, shared by the loop (queue, cancelled) and the worker."""

    request: ChatRequest
    tokens: list[int]
    sampler: Any
    adapter: Path | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    t_submit: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    cancelled: bool = False
    done: bool = False
    first_sent: bool = False  # worker thread only


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence id and the tokens whose KV it holds."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    adapter: Path | None = None
    conversation: str | None = None
    last_used: float = 0.0
    busy: bool = False
    # The KV of `tokens`, copied to host RAM when the slot went idle (its cells are free then);
    # None while the KV is in the cache's cells.
    saved: Any = None


@dataclass(eq=False)
class Active:
    """A running sequence (worker thread only)."""

    req: Request
    slot: Slot
    n_fed: int  # prompt tokens already in the KV cache
    cached: int
    text: Any  # TextStream
    pending: int | None = None  # sampled, not yet decoded
    n_gen: int = 0
    out_index: int = -1
    fed: list[int] = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)
    t_first: float = 0.0
    t_last: float = 0.0


def finish_event(
    a: Active, reason: FinishReason, text: str = "", error: str | None = None
) -> TokenEvent:
    """The last event of a stream, with usage and timings."""
    now = time.perf_counter()
    req = a.req
    gen_s = (a.t_last - a.t_first) if a.t_first else 0.0
    rate = (a.n_gen - 1) / gen_s if a.n_gen > 1 and gen_s > 0 else 0.0
    return TokenEvent(
        text=text,
        finish_reason=reason,
        usage=Usage(len(req.tokens), a.n_gen, a.cached),
        timings=Timings(
            queued_s=a.t_start - req.t_submit,
            ttft_s=(a.t_first - req.t_submit) if a.t_first else 0.0,
            generation_tok_s=rate,
            total_s=now - req.t_submit,
        ),
        error=error,
    )


def free_sampler(sampler: Any) -> None:
    """Release a llama.cpp sampler chain (any thread; the request no longer runs)."""
    from mongars_edge.inference import lowlevel

    lowlevel.free_sampler(sampler)
