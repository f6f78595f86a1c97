"""A scripted Engine: it satisfies the protocol with no model, for router and pipeline unit tests.

Tokens are words; the "template" joins messages line by line. Every call is counted, so a test
can say how often a prompt was prepared, and a script can make a stream fail after n tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from mongars_edge.inference.engine import (
    ChatRequest,
    EngineLoad,
    FinishReason,
    Message,
    ModelInfo,
    Prompt,
    TokenEvent,
    Usage,
    as_request,
)
from mongars_edge.inference.errors import EngineClosedError, PromptTooLongError


@dataclass
class FakeEngine:
    """Answers every request with `reply`, word by word; `fail_after` words, then an error."""

    model: str = "fake-model"
    n_ctx: int = 256
    reply: str = "one two three four five"
    fail_after: int | None = None
    figures: EngineLoad = field(default_factory=lambda: EngineLoad(0, 0, 4, 30.0, 300.0))
    prepared: int = 0
    renders: int = 0
    streamed: list[ChatRequest] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.model, "", "fake", self.n_ctx, self.n_ctx, 0, 0, "")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        self.renders += 1
        return "\n".join(f"{m.role}: {m.content}" for m in messages)

    def load(self) -> EngineLoad:
        return self.figures

    async def prepare(self, request: ChatRequest) -> Prompt:
        self.prepared += 1
        text = self.render(request.messages) + request.assistant_prefix
        tokens = tuple(range(self.count_tokens(text)))
        if len(tokens) + 1 > self.n_ctx:
            raise PromptTooLongError(len(tokens), self.n_ctx)
        return Prompt(request, text, tokens, owner=self)

    async def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        prompt = request if isinstance(request, Prompt) and request.owner is self else None
        if prompt is None:
            prompt = await self.prepare(as_request(request))
        chat = prompt.request
        self.streamed.append(chat)
        words = self.reply.split()[: chat.sampling.max_tokens]
        for i, word in enumerate(words):
            if self.fail_after is not None and i >= self.fail_after:
                raise EngineClosedError("scripted failure")
            yield TokenEvent(word if i == 0 else " " + word, token_id=i)
        usage = Usage(prompt.n_tokens, len(words))
        reason: FinishReason = "length" if len(words) == chat.sampling.max_tokens else "stop"
        yield TokenEvent("", finish_reason=reason, usage=usage)
