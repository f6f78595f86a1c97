"""RemoteEngine: an Engine whose requests run on a peer, streamed back over the mesh link.

Bounded on purpose: a peer that stalls (nothing for `stall_s`), closes the link, or streams
more tokens than asked for ends the stream with PeerUnavailableError, and the router continues
locally from what was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, cast

from mongars_edge.inference.engine import (
    ChatRequest,
    EngineLoad,
    FinishReason,
    Message,
    ModelInfo,
    Prompt,
    Timings,
    TokenEvent,
    Usage,
    as_request,
)
from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import PeerTimeoutError, PeerUnavailableError

if TYPE_CHECKING:
    from mongars_edge.inference.engine import Engine
    from mongars_edge.mesh.node import NodeState

log = logging.getLogger(__name__)

_FINISH = ("stop", "length", "cancelled", "error")
_MAX_CHARS_PER_TOKEN = 64


def to_wire(request: ChatRequest, stream_id: int, model: str) -> codec.InferRequest:
    """The forwarded request: the assembled prompt only (no user or conversation ids)."""
    return codec.InferRequest(
        stream_id=stream_id,
        messages=[(m.role, m.content) for m in request.messages],
        sampling=codec.wire_sampling(request.sampling),
        adapter=request.adapter,
        grammar=request.grammar,
        json_schema=dict(request.json_schema) if request.json_schema is not None else None,
        assistant_prefix=request.assistant_prefix,
        model=model,
        tools=[codec.WireTool(t.name, t.description, dict(t.parameters)) for t in request.tools],
        tool_choice=request.tool_choice,
        tool_turns=codec.tool_turns(request.messages),
    )


class RemoteEngine:
    """Runs requests on one peer; `info`, `render` and `count_tokens` come from the local model."""

    def __init__(self, node: NodeState, node_id: str, local: Engine, stall_s: float) -> None:
        self._node = node
        self.node_id = node_id
        self._local = local
        self._stall_s = stall_s

    @property
    def info(self) -> ModelInfo:
        return self._local.info

    def count_tokens(self, text: str) -> int:
        return self._local.count_tokens(text)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self._local.render(messages, add_generation_prompt=add_generation_prompt)

    def load(self) -> EngineLoad:
        peer = self._node.peers.get(self.node_id)
        t = peer.telemetry if peer else None
        if t is None:
            return EngineLoad(0, 0, 1, 0.0, 0.0)
        return EngineLoad(t.queue_depth, t.active, t.n_parallel, t.gen_tok_s, t.prompt_tok_s)

    async def prepare(self, request: ChatRequest) -> Prompt:
        return await self._local.prepare(request)

    async def stream(self, request: ChatRequest | Prompt) -> AsyncGenerator[TokenEvent, None]:
        # The peer renders and tokenizes with its own copy of the model: only the request goes.
        request = as_request(request)
        link = self._node.links.get(self.node_id)
        if link is None or link.closed.is_set():
            raise PeerUnavailableError(f"no link to {self.node_id}")
        sid = link.new_id()
        queue = self._node.open_stream(link, sid)
        peer = self._node.peers.get(self.node_id)
        if peer:
            peer.inflight += 1
        started = first_at = time.monotonic()
        n = 0
        limit = request.sampling.max_tokens
        done = False
        try:
            link.send(to_wire(request, sid, request.model or self.info.id))
            await link.drain()
            first_wait = max(self._stall_s, 60.0)  # the peer may queue us behind others
            while True:
                try:
                    async with asyncio.timeout(first_wait if n == 0 else self._stall_s):
                        item = await queue.get()
                except TimeoutError:
                    raise PeerTimeoutError(f"peer {self.node_id} stalled") from None
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, codec.TokenChunk):
                    n += 1
                    if n == 1:
                        first_at = time.monotonic()
                    if n > limit or len(item.text) > _MAX_CHARS_PER_TOKEN:
                        raise PeerUnavailableError(f"peer {self.node_id} streamed past the limit")
                    yield TokenEvent(item.text, item.token_id)
                elif isinstance(item, codec.End):
                    done = True
                    now = time.monotonic()
                    elapsed = now - started
                    if peer and n > 1:
                        # The decode rate seen here, token to token: what the claim is checked by.
                        peer.record_result(n - 1, now - first_at, peer.inflight)
                    reason = item.finish_reason if item.finish_reason in _FINISH else "error"
                    yield TokenEvent(
                        "",
                        finish_reason=cast(FinishReason, reason),
                        usage=Usage(item.prompt_tokens, item.completion_tokens),
                        timings=Timings(0.0, 0.0, item.gen_tok_s, elapsed),
                        error=item.error,
                    )
                    return
                elif isinstance(item, codec.Error):
                    done = True
                    raise PeerUnavailableError(f"peer {self.node_id}: {item.message}")
        finally:
            if peer:
                peer.inflight -= 1
            self._node.close_stream(link, sid)
            if not done and not link.closed.is_set():
                with contextlib.suppress(PeerUnavailableError):
                    link.send(codec.Cancel(sid))
