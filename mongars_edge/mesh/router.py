"""Router: an Engine that runs each request where it is predicted to finish first.

Candidates are the local engine and every linked, paired peer with fresh telemetry and the
same model. The prediction is queue wait + prompt time + generation time from measured rates
(a peer's claimed rate is capped by what its past results measured). Tokens from a peer stream
through here; if the peer dies or stalls mid-stream, the local engine continues from the text
already received (`assistant_prefix`), so the caller sees one uninterrupted answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from mongars_edge.errors import MongarsError
from mongars_edge.inference.engine import (
    ChatRequest,
    Engine,
    EngineLoad,
    Message,
    ModelInfo,
    Prompt,
    TokenEvent,
)
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.mesh.remote import RemoteEngine

if TYPE_CHECKING:
    from mongars_edge.mesh.node import NodeState
    from mongars_edge.mesh.peers import Peer

log = logging.getLogger(__name__)

DEFAULT_TOK_S: Final = 30.0
DEFAULT_PROMPT_TOK_S: Final = 150.0
EXPECTED_GEN_TOKENS: Final = 200
REMOTE_OVERHEAD_S: Final = 0.05
# How often a request held while every slot is busy looks again without being woken.
_HELD_RECHECK_S: Final = 0.25
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
    full: bool = False  # every slot busy: a request sent now would wait in its queue


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
    """Engine facade over the local engine and the mesh node."""

    def __init__(self, local: Engine, node: NodeState) -> None:
        self.local = local
        self.node = node
        # Requests this router started locally; the engine's own figures lag behind a burst.
        self._local_inflight = 0
        # Requests held here while every box's slots are busy, first come first served.
        self._held: deque[asyncio.Event] = deque()

    @property
    def info(self) -> ModelInfo:
        return self.local.info

    def count_tokens(self, text: str) -> int:
        return self.local.count_tokens(text)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self.local.render(messages, add_generation_prompt=add_generation_prompt)

    def load(self) -> EngineLoad:
        return self.local.load()

    async def prepare(self, request: ChatRequest) -> Prompt:
        """The local model renders and counts: that count weighs every place, peers too."""
        return await self.local.prepare(request)

    def rank(self, request: ChatRequest, prompt_tokens: int) -> list[Choice]:
        """Every usable place for `request`, best first (the local engine only when it holds
        the model asked for)."""
        return self._rank(request, prompt_tokens, self._usable_peers(request.model or self.info.id))

    def _rank(self, request: ChatRequest, prompt_tokens: int, peers: list[Peer]) -> list[Choice]:
        gen = min(request.sampling.max_tokens, EXPECTED_GEN_TOKENS)
        load = self.local.load()
        choices = []
        if request.model in (None, self.local.info.id):
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
            choices.append(Choice("", cost, busy >= max(1, load.n_parallel)))
        for peer in peers:
            t = peer.telemetry
            assert t is not None
            busy = max(t.active + t.queue_depth, peer.inflight)
            # Its telemetry lags by a gossip period: a slot our own request just left counts
            # as free; a box busy with others' requests alone counts as full.
            full = peer.inflight >= t.n_parallel or (
                peer.inflight == 0 and t.active + t.queue_depth >= t.n_parallel
            )
            rate = peer.trusted_tok_s() or (load.generation_tok_s if load.generation_tok_s else 0)
            cost = predict(0, busy, t.n_parallel, rate, t.prompt_tok_s, prompt_tokens, gen)
            cost += REMOTE_OVERHEAD_S + 0.5 * peer.failures
            if request.adapter and request.adapter not in t.adapters:
                cost += ADAPTER_FETCH_S
            if t.throttled:
                cost *= 1.5
            choices.append(Choice(peer.node_id, cost, full))
        return sorted(choices, key=lambda c: (c.predicted_s, c.node_id != ""))

    def _usable_peers(self, model: str) -> list[Peer]:
        return [p for p in self.node.usable_peers() if p.telemetry and p.telemetry.model == model]

    def models(self) -> dict[str, list[str]]:
        """Every model this box or a usable peer holds now -> where ("" is this box)."""
        mine = self.node.model_id()  # "" while this box waits for its model to run split
        out: dict[str, list[str]] = {mine: [""]} if mine else {}
        for peer in self.node.usable_peers():
            t = peer.telemetry
            if t is not None and t.model:
                out.setdefault(t.model, []).append(peer.node_id)
        return out

    async def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        prompt = request if isinstance(request, Prompt) else None
        chat = request.request if isinstance(request, Prompt) else request
        if chat.adapter:
            adapter = await asyncio.to_thread(_adapter_sha256, self.node.data_dir, chat.adapter)
            if adapter != chat.adapter:
                chat = dataclasses.replace(chat, adapter=adapter)
                prompt = prompt.with_request(chat) if prompt is not None else None
        local_model = chat.model in (None, self.local.info.id)
        peers = self._usable_peers(chat.model or self.info.id)
        if not peers:
            # No peer could take it: no ranking, and the local engine prepares it (once).
            if not local_model:
                held = ", ".join(sorted(self.models()))
                raise ModelNotFoundError(
                    f"no box in this mesh holds the model {chat.model!r} now (held: {held})"
                )
            async for event in self._local(prompt or chat):
                yield event
            return
        if prompt is None:
            prompt = await self.local.prepare(chat)
        ranked = await self._when_a_slot_frees(chat, prompt.n_tokens)
        target = ranked[0].node_id
        log.debug(
            "routing %s: %s",
            chat.request_id,
            ", ".join(f"{c.node_id or 'local'}={c.predicted_s:.2f}s" for c in ranked),
        )
        if not target:
            async for event in self._local(prompt):
                yield event
            return
        self.node.forwarding()
        remote = RemoteEngine(self.node, target, self.local, self.node.config.stall_s)
        received: list[str] = []
        try:
            try:
                async with contextlib.aclosing(remote.stream(chat)) as events:
                    async for event in events:
                        if event.finish_reason is not None:
                            yield event
                            return
                        received.append(event.text)
                        yield event
            finally:
                self._wake_held()  # the peer's slot is ours no longer
        except MongarsError as exc:
            peer = self.node.peers.get(target)
            if peer is not None:
                peer.failures = min(peer.failures + 1, 10)
            self.node.warn_once(
                f"failover:{target}",
                "peer %s failed after %d tokens: %s; continuing locally",
                target,
                len(received),
                exc,
            )
            if not local_model:
                # Only peers hold this model: this box cannot finish the reply.
                if not received:
                    raise
                yield TokenEvent("", finish_reason="error", error=f"peer {target} failed: {exc}")
                return
        left = chat.sampling.max_tokens - len(received)
        if left <= 0:
            yield TokenEvent("", finish_reason="length")
            return
        said = "".join(received)
        if chat.sampling.temperature == 0 and len(received) <= REPLAY_MAX_TOKENS:
            try:
                async for event in self._replay(prompt, said):
                    yield event
                return
            except _DivergedError:
                log.debug("local replay differs from what %s sent; continuing after it", target)
        rest = dataclasses.replace(
            chat,
            assistant_prefix=chat.assistant_prefix + said,
            sampling=dataclasses.replace(chat.sampling, max_tokens=left),
        )
        async for event in self._local(rest):
            yield event

    async def _local(self, request: ChatRequest | Prompt) -> AsyncGenerator[TokenEvent, None]:
        self._local_inflight += 1
        try:
            async for event in self.local.stream(request):
                yield event
        finally:
            self._local_inflight -= 1
            self._wake_held()

    async def _when_a_slot_frees(self, request: ChatRequest, prompt_tokens: int) -> list[Choice]:
        """The places ranked once one has a free slot. While every box's slots are busy the
        request waits here, not in one box's queue: given to a box on arrival, a burst's tail
        ends on whichever box its longest replies landed on while the other idles (bench/
        mesh.py on the 1.5B: 1.67-1.79x two boxes over one, against 2.0x for two engines
        side by side). Held requests go in arrival order."""
        if not self._held:
            ranked = self.rank(request, prompt_tokens)
            if len(ranked) < 2 or not all(c.full for c in ranked):
                return _free_first(ranked)
        turn = asyncio.Event()
        self._held.append(turn)
        try:
            while True:
                head = self._held[0] is turn
                if head:
                    ranked = self.rank(request, prompt_tokens)
                    if len(ranked) < 2 or not all(c.full for c in ranked):
                        return _free_first(ranked)
                # Woken when a request here or one sent to a peer ends; the head also looks
                # again meanwhile (a peer's own clients, or a lost peer, tell nobody).
                turn.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_HELD_RECHECK_S if head else None):
                        await turn.wait()
        finally:
            self._held.remove(turn)
            self._wake_held()

    def _wake_held(self) -> None:
        """A slot may be free: the first held request looks."""
        if self._held:
            self._held[0].set()

    async def _replay(self, request: ChatRequest | Prompt, said: str) -> AsyncIterator[TokenEvent]:
        """Greedy: regenerate locally, pass only what comes after `said`; _DivergedError if the
        local tokens do not reproduce it (nothing has been yielded then)."""
        acc = ""
        crossed = False
        stream = self._local(request)
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
            await stream.aclose()


def _free_first(ranked: list[Choice]) -> list[Choice]:
    """The places with a free slot first, each group best first. A peer's load in its
    telemetry lags by a gossip period, so a box whose slot just freed can still be predicted
    a wave later than a full one: the free slot is a fact, the prediction an estimate."""
    return sorted(ranked, key=lambda c: c.full)


def _adapter_sha256(data_dir: Path, ref: str) -> str:
    """The full sha256 of a local adapter named by id, prefix or name (blocking: thread)."""
    from mongars_edge.inference.adapters import AdapterStore

    return AdapterStore(data_dir).get(ref).sha256
