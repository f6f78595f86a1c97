"""Router: an Engine that runs each request where it is predicted to finish first.

Candidates are the local engine and every linked, paired peer with fresh telemetry and the
same model. The prediction is queue wait + prompt time + generation time from measured rates
(a peer's claimed rate is capped by what its past results measured). Tokens from a peer stream
through here; if the peer dies or stalls mid-stream, the local engine continues from the text
already received (`assistant_prefix`), so the caller sees one uninterrupted answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mongars_edge.errors import MongarsError
from mongars_edge.inference.engine import (
    ChatRequest,
    Engine,
    EngineLoad,
    Message,
    ModelInfo,
    TokenEvent,
)
from mongars_edge.inference.errors import ModelNotFoundError

if TYPE_CHECKING:
    from mongars_edge.mesh.peers import Peer
    from mongars_edge.mesh.service import MeshService

log = logging.getLogger(__name__)

DEFAULT_TOK_S: Final = 30.0
DEFAULT_PROMPT_TOK_S: Final = 150.0
EXPECTED_GEN_TOKENS: Final = 200
REMOTE_OVERHEAD_S: Final = 0.05
ADAPTER_FETCH_S: Final = 1.0
# A greedy reply a peer abandoned after at most this many tokens is regenerated here from the
# start (the received part is checked, not re-sent): llama.cpp prefills a text prefix in a
# different float order than it decodes token by token, so continuing after the prefix can
# drift from the uninterrupted greedy answer on near-ties. Longer replies continue after it.
REPLAY_MAX_TOKENS: Final = 256


class _DivergedError(Exception):
    """The local replay does not reproduce what the peer sent."""


@dataclass(frozen=True)
class Choice:
    """One candidate and its predicted finish time in seconds."""

    node_id: str  # "" for this box
    predicted_s: float


def predict(
    queue_depth: int,
    active: int,
    n_parallel: int,
    gen_tok_s: float,
    prompt_tok_s: float,
    prompt_tokens: int,
    gen_tokens: int,
) -> float:
    """Seconds until a new request would finish on a box with this load."""
    rate = gen_tok_s if gen_tok_s > 0 else DEFAULT_TOK_S
    # Prompt processing is always several times faster than generation; a rate below that is
    # an average still warming up from zero (few prefill samples), not a measurement.
    prate = max(prompt_tok_s, 4 * rate) if prompt_tok_s > 0 else DEFAULT_PROMPT_TOK_S
    slots = max(1, n_parallel)
    ahead = queue_depth + active
    running = min(ahead + 1, slots)
    # Continuous batching: aggregate throughput grows sub-linearly with running sequences.
    per_seq = rate * float(running) ** 0.6 / running
    mine = prompt_tokens / prate + gen_tokens / per_seq
    # Requests beyond the slots wait for whole waves of typical requests ahead of them. Counted
    # in whole waves: a burst then fills every box's slots before any box starts another wave,
    # whatever the boxes' measured rates say (they differ by 10-30% from noise alone, and one
    # request too many makes a box run a third wave while the other idles: bench/mesh.py).
    typical = prompt_tokens / prate + EXPECTED_GEN_TOKENS / per_seq
    waves = ahead // slots
    total: float = waves * typical + mine
    return total


class Router:
    """Engine facade over the local engine and the mesh."""

    def __init__(self, local: Engine, mesh: MeshService) -> None:
        self.local = local
        self.mesh = mesh
        self._warned: set[str] = set()
        # Requests this router started locally; the engine's own figures lag behind a burst.
        self._local_inflight = 0

    @property
    def info(self) -> ModelInfo:
        return self.local.info

    def count_tokens(self, text: str) -> int:
        return self.local.count_tokens(text)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self.local.render(messages, add_generation_prompt=add_generation_prompt)

    def load(self) -> EngineLoad:
        return self.local.load()

    def rank(self, request: ChatRequest, prompt_tokens: int) -> list[Choice]:
        """Every usable place for `request`, best first (the local engine only when it holds
        the model asked for)."""
        gen = min(request.sampling.max_tokens, EXPECTED_GEN_TOKENS)
        load = self.local.load()
        model = self.local.info.id
        choices = []
        if request.model in (None, model):
            busy = max(load.queue_depth + load.active, self._local_inflight)
            cost = predict(
                0,
                busy,
                load.n_parallel,
                load.generation_tok_s,
                load.prompt_tok_s,
                prompt_tokens,
                gen,
            )
            choices.append(Choice("", cost))
        for peer in self._usable_peers(request.model or model):
            t = peer.telemetry
            assert t is not None
            busy = max(t.active + t.queue_depth, peer.inflight)
            rate = peer.trusted_tok_s() or (load.generation_tok_s if load.generation_tok_s else 0)
            cost = predict(0, busy, t.n_parallel, rate, t.prompt_tok_s, prompt_tokens, gen)
            cost += REMOTE_OVERHEAD_S + 0.5 * peer.failures
            if request.adapter and request.adapter not in t.adapters:
                cost += ADAPTER_FETCH_S
            if t.throttled:
                cost *= 1.5
            choices.append(Choice(peer.node_id, cost))
        return sorted(choices, key=lambda c: (c.predicted_s, c.node_id != ""))

    def _usable_peers(self, model: str) -> list[Peer]:
        out = []
        for node_id, peer in self.mesh.peers.items():
            if node_id not in self.mesh.links or self.mesh.state.key_of(node_id) is None:
                continue
            t = peer.telemetry
            if peer.fresh() and t is not None and t.model == model and t.accepting:
                out.append(peer)
        return out

    def models(self) -> dict[str, list[str]]:
        """Every model this box or a usable peer holds now -> where ("" is this box)."""
        out: dict[str, list[str]] = {self.local.info.id: [""]}
        for node_id, peer in self.mesh.peers.items():
            if node_id not in self.mesh.links or self.mesh.state.key_of(node_id) is None:
                continue
            t = peer.telemetry
            if peer.fresh() and t is not None and t.model and t.accepting:
                out.setdefault(t.model, []).append(node_id)
        return out

    async def stream(self, request: ChatRequest) -> AsyncIterator[TokenEvent]:
        if request.adapter:
            adapter = await asyncio.to_thread(self.mesh.resolve_adapter, request.adapter)
            request = dataclasses.replace(request, adapter=adapter)
        prompt = self.local.render(request.messages) + request.assistant_prefix
        ranked = self.rank(request, self.local.count_tokens(prompt))
        if not ranked:
            held = ", ".join(sorted(self.models()))
            raise ModelNotFoundError(
                f"no box in this mesh holds the model {request.model!r} now (held: {held})"
            )
        target = ranked[0].node_id
        log.debug(
            "routing %s: %s",
            request.request_id,
            ", ".join(f"{c.node_id or 'local'}={c.predicted_s:.2f}s" for c in ranked),
        )
        if not target:
            self._local_inflight += 1
            try:
                async for event in self.local.stream(request):
                    yield event
            finally:
                self._local_inflight -= 1
            return
        from mongars_edge.mesh.remote import RemoteEngine

        if self.mesh.first_forward_at is None:
            self.mesh.first_forward_at = time.monotonic()
        self.mesh.forwarded += 1
        remote = RemoteEngine(self.mesh, target, self.local, self.mesh.config.stall_s)
        received: list[str] = []
        try:
            async for event in remote.stream(request):
                if event.finish_reason is not None:
                    yield event
                    return
                received.append(event.text)
                yield event
        except MongarsError as exc:
            peer = self.mesh.peers.get(target)
            if peer is not None:
                peer.failures = min(peer.failures + 1, 10)
            self._warn_once(target, f"peer {target} failed after {len(received)} tokens: {exc}")
            if request.model not in (None, self.local.info.id):
                # Only peers hold this model: this box cannot finish the reply.
                if not received:
                    raise
                yield TokenEvent("", finish_reason="error", error=f"peer {target} failed: {exc}")
                return
        left = request.sampling.max_tokens - len(received)
        if left <= 0:
            yield TokenEvent("", finish_reason="length")
            return
        said = "".join(received)
        self._local_inflight += 1
        try:
            if request.sampling.temperature == 0 and len(received) <= REPLAY_MAX_TOKENS:
                try:
                    async for event in self._replay(request, said):
                        yield event
                    return
                except _DivergedError:
                    log.debug("local replay differs from what %s sent; continuing after it", target)
            rest = dataclasses.replace(
                request,
                assistant_prefix=request.assistant_prefix + said,
                sampling=dataclasses.replace(request.sampling, max_tokens=left),
            )
            async for event in self.local.stream(rest):
                yield event
        finally:
            self._local_inflight -= 1

    async def _replay(self, request: ChatRequest, said: str) -> AsyncIterator[TokenEvent]:
        """Greedy: regenerate locally, pass only what comes after `said`; _DivergedError if the
        local tokens do not reproduce it (nothing has been yielded then)."""
        acc = ""
        crossed = False
        stream = self.local.stream(request)
        try:
            async for event in stream:
                if crossed:
                    yield event
                    continue
                new = acc + event.text
                if len(new) <= len(said) and event.finish_reason is None:
                    if not said.startswith(new):
                        raise _DivergedError
                    acc = new
                    continue
                if not new.startswith(said):
                    raise _DivergedError
                crossed = True
                yield dataclasses.replace(event, text=new[len(said) :])
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def _warn_once(self, key: str, text: str) -> None:
        if key in self._warned:
            log.debug("%s; continuing locally", text)
        else:
            self._warned.add(key)
            log.warning("%s; continuing locally", text)
