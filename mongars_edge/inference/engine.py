"""The Engine protocol and the plain data that crosses it: requests, sampling, token events."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference.tools import Tool, ToolCall, check_choice, check_history

FinishReason = Literal["stop", "length", "cancelled", "error"]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One chat message; an assistant's may carry tool calls, a `tool` message answers one."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRequestError(f"unknown message role {self.role!r}; use one of {ROLES}")


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; temperature 0 means greedy (deterministic)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.top_k < 0:
            problems.append("top_k must be >= 0")
        if not 0 <= self.min_p <= 1:
            problems.append("min_p must be in [0, 1]")
        if self.repeat_penalty <= 0:
            problems.append("repeat_penalty must be > 0")
        if self.max_tokens < 1:
            problems.append("max_tokens must be >= 1")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise InvalidRequestError("invalid sampling: " + "; ".join(problems))

    @classmethod
    def greedy(cls, max_tokens: int = 512, stop: tuple[str, ...] = ()) -> Sampling:
        """Deterministic argmax decoding."""
        return cls(temperature=0.0, max_tokens=max_tokens, stop=stop)


def _new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request as the engine sees it (already recalled and budgeted).

    `assistant_prefix` is text the assistant has already said (e.g. streamed by a peer that
    failed): the engine continues after it instead of starting a new reply.
    """

    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    adapter: str | None = None
    grammar: str | None = None
    json_schema: Mapping[str, Any] | None = None
    conversation_id: str | None = None
    user_id: str | None = None
    request_id: str = field(default_factory=_new_request_id)
    assistant_prefix: str = ""
    # The model asked for; None: whichever model the local engine holds. The router sends a
    # request for another model to a peer that holds it.
    model: str | None = None
    # Functions the model may call, and whether it must: "auto", "none", "required" or the
    # name of one tool (see inference/tools.py).
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequestError("a chat request needs at least one message")
        if self.grammar is not None and self.json_schema is not None:
            raise InvalidRequestError("give a grammar or a JSON schema, not both")
        if self.tools and self.tool_choice != "none" and (self.grammar or self.json_schema):
            raise InvalidRequestError(
                "tools cannot be combined with a grammar or a JSON response format"
            )
        check_choice(self.tool_choice, self.tools)
        check_history(self.messages)

    @classmethod
    def of(cls, messages: Sequence[tuple[str, str]], **kwargs: Any) -> ChatRequest:
        """Build from (role, content) pairs."""
        return cls(messages=tuple(Message(r, c) for r, c in messages), **kwargs)


@dataclass(frozen=True)
class Prompt:
    """A request as one model reads it: the template rendered once and tokenized once.

    `Engine.prepare` makes it in a worker thread; the router weighs places by `n_tokens` and
    hands it on, and the engine that made it runs `tokens` as they are. `owner` is what that
    engine needs to know the prompt for its own (opaque to everyone else); another engine, or
    the same one after a model swap, prepares the request again.
    """

    request: ChatRequest
    text: str
    tokens: tuple[int, ...]
    owner: object = field(default=None, compare=False, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def with_request(self, request: ChatRequest) -> Prompt:
        """The same prompt for a request that differs only in how it samples."""
        return dataclasses.replace(self, request=request)


def as_request(item: ChatRequest | Prompt) -> ChatRequest:
    return item.request if isinstance(item, Prompt) else item


@dataclass(frozen=True)
class Usage:
    """Token counts of one request; `cached_tokens` of the prompt came from the prefix cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    """Where the time of one request went (seconds; rates in tokens per second)."""

    queued_s: float
    ttft_s: float
    generation_tok_s: float
    total_s: float


@dataclass(frozen=True)
class TokenEvent:
    """A piece of streamed text; the last event of a stream has `finish_reason` set."""

    text: str
    token_id: int | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class ModelInfo:
    """What is loaded."""

    id: str
    path: str
    architecture: str
    n_ctx: int
    n_ctx_train: int
    n_params: int
    size_bytes: int
    chat_template: str


@dataclass(frozen=True)
class EngineLoad:
    """Load figures for /metrics and the mesh (to predict a finish time)."""

    queue_depth: int
    active: int
    n_parallel: int
    generation_tok_s: float
    prompt_tok_s: float

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.queue_depth > 0


@runtime_checkable
class Engine(Protocol):
    """Something that turns chat requests into token streams: local llama.cpp or a peer."""

    @property
    def info(self) -> ModelInfo: ...

    async def prepare(self, request: ChatRequest) -> Prompt:
        """Render and tokenize `request` once, in a worker thread (PromptTooLongError when it
        leaves no room for a reply)."""
        ...

    def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        """Stream the reply; stop iterating (or cancel the task) to cancel the request.

        Given a Prompt this engine prepared, runs its tokens as they are; given a request (or
        someone else's Prompt), prepares it first.

        Raises before the first event for requests that cannot start (QueueFullError,
        PromptTooLongError, AdapterNotFoundError, GrammarError); a failure after tokens
        were streamed ends the stream with finish_reason "error".
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model counts them (fast; any thread)."""
        ...

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The prompt text the chat template makes of `messages`."""
        ...

    def load(self) -> EngineLoad:
        """Current load figures."""
        ...


@dataclass
class Completion:
    """A whole reply gathered from a stream (tests, CLI, non-streaming API)."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage | None
    timings: Timings | None
    error: str | None


async def complete(engine: Engine, request: ChatRequest | Prompt) -> Completion:
    """Run a request to the end and gather its text."""
    parts: list[str] = []
    ids: list[int] = []
    async for event in engine.stream(request):
        parts.append(event.text)
        if event.token_id is not None:
            ids.append(event.token_id)
        if event.finish_reason is not None:
            return Completion(
                "".join(parts), ids, event.finish_reason, event.usage, event.timings, event.error
            )
    return Completion("".join(parts), ids, "error", None, None, "stream ended without a finish")
