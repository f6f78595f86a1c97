"""The chat pipeline: request -> recall -> prompt -> route -> stream -> persist.

`prepare` does everything that can fail with a clear status before a byte is streamed (unknown
conversation, prompt too long); `stream` routes the prompt to `chat_engine()` (local llama.cpp
or a peer: memory is recalled here, on the home box, and only the assembled prompt travels) and
stores the turn when the stream ends, marked `partial` when the client went away mid-reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from mongars_edge.chat import prompts
from mongars_edge.chat.lang import Lang, detect
from mongars_edge.chat.style import StyleBook
from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference.engine import (
    ChatRequest,
    Engine,
    Message,
    Prompt,
    Sampling,
    TokenEvent,
    complete,
)
from mongars_edge.inference.errors import PromptTooLongError
from mongars_edge.inference.tools import Tool, calls_from_store, parse_calls, stored_calls
from mongars_edge.logonce import WarnOnce
from mongars_edge.memory.conversations import NewMessage
from mongars_edge.memory.errors import MemoryStoreError

if TYPE_CHECKING:
    from mongars_edge.inference.local import LocalEngine
    from mongars_edge.memory.consolidate import MemoryWorker
    from mongars_edge.memory.recall import Hit
    from mongars_edge.memory.records import Message as StoredMessage
    from mongars_edge.memory.store import MemoryStore
    from mongars_edge.settings import Settings

log = logging.getLogger(__name__)

_MESSAGE_OVERHEAD: Final = 6  # template tokens around each message (role markers, newlines)
_SAFETY: Final = 16
_TITLE_CHARS: Final = 60
_RECALLED_CHARS: Final = 300
_DEFAULT_LANG: Final[Lang] = "fr"  # the home language of the box
_RECALL_MIN_SIMILARITY: Final = 0.80  # see _worth_recalling
_KEPT_CONVERSATIONS: Final = 4096  # conversations whose prompts are remembered (_Said)
_KEPT_MESSAGES: Final = 256  # messages remembered per conversation
SAMPLING_FIELDS: Final = frozenset(f.name for f in fields(Sampling))
SamplingDefaults = Callable[[str], Mapping[str, float | int]]


@dataclass(frozen=True)
class Turn:
    """What a client asks for; `messages` are the new ones when a conversation is named."""

    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    # The sampling fields the client chose; the others take the model's own defaults from the
    # catalog (Qwen2.5: top_p 0.8, top_k 20, ...). All of them unless said otherwise.
    sampling_set: frozenset[str] = SAMPLING_FIELDS
    # The model asked for (None: the one this box runs).
    model: str | None = None
    conversation_id: int | None = None
    new_conversation: bool = False
    adapter: str | None = None
    memory: bool = True
    json_schema: Mapping[str, Any] | None = None
    grammar: str | None = None
    regenerate: bool = False
    preferred_lang: Lang | None = None
    # Functions the model may call (inference/tools.py) and "auto", "none", "required" or a
    # tool's name.
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"


@dataclass
class Prepared:
    """A turn ready to stream: the prepared prompt and what to store afterwards."""

    turn: Turn
    user_id: int
    conversation_id: int | None
    prompt: Prompt
    lang: Lang
    to_store: list[NewMessage]
    recalled: int
    recall_s: float
    trimmed: int
    started: float = field(default_factory=time.perf_counter)

    @property
    def request(self) -> ChatRequest:
        return self.prompt.request


class PipelineObserver(Protocol):
    """Receives timings for /metrics (implemented by the web edge)."""

    def recall_done(self, seconds: float) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def finished(self, event: TokenEvent | None, status: str) -> None: ...


class ChatPipeline:
    """Open with `async with ChatPipeline.open(...)`; pending writes finish on close."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        store: MemoryStore,
        settings: Settings,
        data_dir: Path,
        *,
        sampling_defaults: SamplingDefaults | None = None,
        persona: Callable[[str], bool] | None = None,
    ) -> None:
        self._engine = engine
        self.store = store
        self.settings = settings
        self._sampling_defaults = sampling_defaults
        self._persona = persona
        self.styles = StyleBook(data_dir / "chat")
        # What each conversation's prompts said, so the next turn's prompt starts with exactly
        # the tokens of the last one and reuses its KV prefix (see _Said). In memory only, as
        # that KV is.
        self._said: OrderedDict[int, _Said] = OrderedDict()
        self.observer: PipelineObserver | None = None
        # Memory extraction after each turn and idle-time consolidation (memory issue).
        self.memory_worker: MemoryWorker | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Each user's turns still being stored: a next turn's history and recall read them.
        self._storing: dict[int, set[asyncio.Task[None]]] = {}
        self._warn = WarnOnce(log)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        engine: Callable[[], Engine],
        store: MemoryStore,
        settings: Settings,
        data_dir: Path,
        *,
        local: LocalEngine | None = None,
        sampling_defaults: SamplingDefaults | None = None,
        persona: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[ChatPipeline]:
        """`local` (the box's own engine) reads turns for memories while the box is idle:
        memory work never goes to a peer. `sampling_defaults(model_id)`: a model's own
        sampling settings, for the fields a request leaves out. `persona(model_id)`: whether
        the box's persona goes into that model's prompts (default: always)."""
        pipeline = cls(
            engine,
            store,
            settings,
            data_dir,
            sampling_defaults=sampling_defaults,
            persona=persona,
        )
        async with contextlib.AsyncExitStack() as stack:
            if local is not None:
                from mongars_edge.memory.consolidate import MemoryWorker

                worker = MemoryWorker(store, _generator(local), local)
                pipeline.memory_worker = await stack.enter_async_context(worker.running())
            try:
                yield pipeline
            finally:
                await pipeline.drain()

    async def drain(self) -> None:
        """Wait for the turns still being written."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- before the first token ---------------------------------------------------------------

    async def prepare(self, turn: Turn, user_id: int) -> Prepared:
        """Recall, language, style and the prompt within the context budget."""
        started = time.perf_counter()
        incoming = list(turn.messages)
        if not turn.regenerate and not any(m.role in ("user", "tool") for m in incoming):
            raise InvalidRequestError(
                "messages must contain at least one user message (or a tool result)"
            )
        conversation_id = turn.conversation_id
        jobs = _Jobs()
        try:
            # Recall (an embedding: most of the time before the first token) and the style file
            # do not depend on the stored history: start them before reading it.
            recall_job: asyncio.Future[tuple[list[Hit], float]] | None = None
            if turn.memory:
                profile_job = jobs.start(asyncio.to_thread(self.styles.get, user_id))
                if not turn.regenerate:
                    recall_job = self._start_recall(jobs, user_id, _last_user(incoming), turn)
            history: list[Message] = []
            in_conversation: set[int] = set()
            if conversation_id is not None:
                await self._stored(user_id)
                stored = await self.store.get_messages(user_id, conversation_id)
                history = _history(stored)
                in_conversation = {m.id for m in stored}
            if turn.regenerate:
                if conversation_id is None:
                    raise InvalidRequestError("regenerate needs a conversation_id")
                while history and history[-1].role == "assistant":
                    history.pop()
                if not history or history[-1].role != "user":
                    raise InvalidRequestError("nothing to regenerate in this conversation")
                incoming = []
                if turn.memory:
                    recall_job = self._start_recall(jobs, user_id, _last_user(history), turn)
            client_system = "\n\n".join(m.content for m in incoming if m.role == "system")
            said = self._said_in(conversation_id)
            dialogue = history + [m for m in incoming if m.role != "system"]
            user_texts = [m.content for m in dialogue if m.role == "user"]
            query = user_texts[-1] if user_texts else ""
            lang = _language(user_texts, turn.preferred_lang)

            style: list[str] = []
            memories: list[str] = []
            recall_s = 0.0
            if turn.memory:
                if recall_job is not None:
                    hits, recall_s = await recall_job
                    # What the conversation already holds (a memory taken from one of its own
                    # messages, a line recalled for an earlier turn) is not said again.
                    memories = said.new_lines(
                        _recalled_line(h) for h in hits if not _from(in_conversation, h)
                    )
                    if self.observer is not None:
                        self.observer.recall_done(recall_s)
                style = said.style_for(lang, (await profile_job).directives(lang))
        finally:
            await jobs.settle()

        engine = self._engine()
        model_id = turn.model or engine.info.id
        sampling = self._sampling(turn, model_id)
        prompted = [*said.as_prompted(history), *dialogue[len(history) :]]
        if turn.new_conversation:
            title = " ".join(query.split())[:_TITLE_CHARS]
            conversation_id = (await self.store.create_conversation(user_id, title)).id

        def request_of(messages: list[Message], max_tokens: int) -> ChatRequest:
            return ChatRequest(
                messages=tuple(messages),
                sampling=replace(sampling, max_tokens=max_tokens),
                adapter=turn.adapter,
                grammar=turn.grammar,
                json_schema=turn.json_schema,
                conversation_id=None if conversation_id is None else str(conversation_id),
                user_id=str(user_id),
                model=turn.model,
                tools=turn.tools,
                tool_choice=turn.tool_choice,
            )

        # Everything, measured once by the engine (one render, one tokenization, in a thread);
        # only a prompt over budget is counted message by message and trimmed.
        n_ctx = engine.info.n_ctx
        budget = n_ctx - max(1, min(sampling.max_tokens, n_ctx // 2)) - _SAFETY
        tools = bool(turn.tools) and turn.tool_choice != "none"
        system = prompts.system_prompt(
            lang,
            style=style,
            client_system=client_system,
            tools=tools,
            persona=self._persona is None or self._persona(model_id),
        )
        messages = _assemble(lang, system, memories, prompted)
        trimmed = 0
        try:
            prompt: Prompt | None = await engine.prepare(request_of(messages, sampling.max_tokens))
        except PromptTooLongError:
            prompt = None
        if prompt is None or prompt.n_tokens > budget:
            messages, trimmed, _ = await asyncio.to_thread(
                _fit, engine, n_ctx, sampling.max_tokens, lang, system, memories, prompted
            )
            prompt = await engine.prepare(request_of(messages, sampling.max_tokens))
        reply = min(sampling.max_tokens, max(1, n_ctx - prompt.n_tokens - _SAFETY))
        prompt = prompt.with_request(request_of(messages, reply))
        if conversation_id is not None:
            said = self._remember(conversation_id, said)
            if dialogue and messages[-1].role == "user":
                said.prompted_as(dialogue[-1].content, messages[-1].content, memories)
        to_store: list[NewMessage] = []
        if conversation_id is not None:
            to_store = [_to_store(m) for m in incoming if m.role != "system"]
        return Prepared(
            turn=turn,
            user_id=user_id,
            conversation_id=conversation_id,
            prompt=prompt,
            lang=lang,
            to_store=to_store,
            recalled=len(memories),
            recall_s=recall_s,
            trimmed=trimmed,
            started=started,
        )

    def _sampling(self, turn: Turn, model_id: str) -> Sampling:
        """The turn's sampling, with the model's own defaults for the fields it left out."""
        if self._sampling_defaults is None or turn.sampling_set >= SAMPLING_FIELDS:
            return turn.sampling
        defaults = self._sampling_defaults(model_id)
        fill = {k: v for k, v in defaults.items() if k not in turn.sampling_set}
        return replace(turn.sampling, **fill) if fill else turn.sampling  # type: ignore[arg-type]

    def _said_in(self, conversation_id: int | None) -> _Said:
        said = self._said.get(conversation_id) if conversation_id is not None else None
        return said if said is not None else _Said()

    def _remember(self, conversation_id: int, said: _Said) -> _Said:
        self._said[conversation_id] = said
        self._said.move_to_end(conversation_id)
        while len(self._said) > _KEPT_CONVERSATIONS:
            self._said.popitem(last=False)
        return said

    def _start_recall(
        self, jobs: _Jobs, user_id: int, query: str, turn: Turn
    ) -> asyncio.Future[tuple[list[Hit], float]] | None:
        if self.settings.recall_limit <= 0 or not query.strip():
            return None

        async def timed() -> tuple[list[Hit], float]:
            await self._stored(user_id)  # not counted as recall time
            t0 = time.perf_counter()
            hits = await self._recall(user_id, query, turn.conversation_id)
            return hits, time.perf_counter() - t0

        return jobs.start(timed())

    async def _recall(self, user_id: int, query: str, conversation_id: int | None) -> list[Hit]:
        from mongars_edge.memory.recall import recall

        try:
            hits = await recall(
                self.store,
                user_id,
                query,
                limit=min(100, self.settings.recall_limit * 3),
                exclude_conversation=conversation_id,
            )
        except MemoryStoreError as exc:
            # A broken embedder must not stop the chat.
            self._warn("recall", "answering without memory: %s", exc)
            return []
        self._warn.forget("recall")
        return [h for h in hits if _worth_recalling(h)][: self.settings.recall_limit]

    # ---- streaming and after ------------------------------------------------------------------

    async def stream(self, prepared: Prepared) -> AsyncGenerator[TokenEvent, None]:
        """Route and stream; the turn is stored when the stream ends, however it ends."""
        engine = self._engine()
        parts: list[str] = []
        final: TokenEvent | None = None
        started = False
        try:
            async for event in self._answer(engine, prepared):
                if not started:
                    started = True
                    if self.observer is not None:
                        self.observer.first_token(time.perf_counter() - prepared.started)
                parts.append(event.text)
                if event.finish_reason is not None:
                    final = event
                yield event
                if final is not None:
                    break
        finally:
            if started:
                status = _status(final)
                if self.observer is not None:
                    self.observer.finished(final, status)
                task = self._spawn(self._persist(prepared, "".join(parts), status, final, engine))
                self._storing_turn(prepared, task)

    async def _answer(self, engine: Engine, prepared: Prepared) -> AsyncIterator[TokenEvent]:
        """The engine's events. After tool results, a small model often calls the same tool
        again with the same arguments instead of answering (and then whatever else comes to
        it). A reply that repeats an answered call is not shown, nor acted on: the model
        answers again without tools, in words."""
        request = prepared.request
        answered = _answered_calls(request.messages) if request.tool_choice == "auto" else set()
        if not answered or not request.tools:
            async for event in _closing(engine.stream(prepared.prompt)):
                yield event
            return
        held: list[TokenEvent] = []
        async for event in _closing(engine.stream(prepared.prompt)):
            held.append(event)
            if event.finish_reason is not None:
                break
        _, calls = parse_calls("".join(e.text for e in held), request.tools)
        if not any((c.name, _canonical(c.arguments)) in answered for c in calls):
            for event in held:
                yield event
            return
        log.info("the model repeated an answered tool call; answering without tools")
        again = replace(request, tool_choice="none", grammar=_NOT_A_CALL)
        async for event in _closing(engine.stream(await engine.prepare(again))):
            yield event

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stored(self, user_id: int) -> None:
        """Wait for the user's turns still being stored, in any conversation. A turn and the
        memories it states are written after its stream ends, and a client that asks again the
        moment a reply ends (an API client, a quick spoken follow-up, a slow SD card) would
        otherwise get a history without it, or a new conversation that recalls nothing of it."""
        tasks = self._storing.get(user_id)
        if tasks:
            await asyncio.wait(set(tasks))  # a cancelled wait leaves the stores running

    def _storing_turn(self, prepared: Prepared, task: asyncio.Task[None]) -> None:
        user_id = prepared.user_id
        self._storing.setdefault(user_id, set()).add(task)

        def stored(_: asyncio.Task[None]) -> None:
            tasks = self._storing.get(user_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._storing[user_id]

        task.add_done_callback(stored)

    async def _persist(
        self,
        prepared: Prepared,
        text: str,
        status: str,
        final: TokenEvent | None,
        engine: Engine,
    ) -> None:
        try:
            if prepared.conversation_id is not None:
                usage = final.usage if final is not None else None
                content, calls = parse_calls(text, prepared.turn.tools)
                answer = NewMessage(
                    "assistant",
                    content if calls else text,
                    tool_calls=stored_calls(calls) if calls else None,
                    tokens=usage.completion_tokens if usage else None,
                    model=engine.info.id,
                    adapter=prepared.turn.adapter,
                    latency_ms=int((time.perf_counter() - prepared.started) * 1000),
                    status=status,
                )
                stored = await self.store.add_messages(
                    prepared.user_id, prepared.conversation_id, [*prepared.to_store, answer]
                )
                if self.memory_worker is not None and prepared.turn.memory:
                    for saved in stored:
                        if saved.role == "user":
                            await self.memory_worker.after_turn(prepared.user_id, saved)
            if prepared.turn.memory and not prepared.turn.regenerate:
                for message in prepared.to_store or prepared.turn.messages:
                    if message.role == "user":
                        await asyncio.to_thread(
                            self.styles.learn, prepared.user_id, message.content
                        )
        except Exception:
            log.exception("could not store a chat turn (conversation %s)", prepared.conversation_id)


def _generator(engine: Engine) -> Callable[[str], Awaitable[str]]:
    """Prompt in, text out, greedy, on the local engine (memory extraction, summaries)."""

    async def generate(prompt: str) -> str:
        request = ChatRequest.of([("user", prompt)], sampling=Sampling.greedy(max_tokens=160))
        return (await complete(engine, request)).text

    return generate


def _status(final: TokenEvent | None) -> str:
    if final is None or final.finish_reason == "cancelled":
        return "partial"
    if final.finish_reason == "error":
        return "error"
    return "complete"


T = TypeVar("T")


class _Jobs:
    """Work started early in prepare(); whatever is still running when it fails is cancelled."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[Any]] = []

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        future = asyncio.ensure_future(coro)
        self._futures.append(future)
        return future

    async def settle(self) -> None:
        for future in self._futures:
            future.cancel()
        await asyncio.gather(*self._futures, return_exceptions=True)


#: A reply that does not open like a call (JSON, a fence, a tag): for answering in words.
_NOT_A_CALL: Final = "root ::= [^{<\\[` \\t\\n] .*\n"


async def _closing(events: AsyncIterator[TokenEvent]) -> AsyncIterator[TokenEvent]:
    """Closing the engine's stream is what cancels the generation: always close it."""
    try:
        async for event in events:
            yield event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except ValueError:
        return arguments


def _answered_calls(messages: Sequence[Message]) -> set[tuple[str, str]]:
    """(name, arguments) of the calls the history already holds results for."""
    results = {m.tool_call_id for m in messages if m.role == "tool"}
    return {
        (c.name, _canonical(c.arguments)) for m in messages for c in m.tool_calls if c.id in results
    }


def _last_user(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def _history(stored: Sequence[StoredMessage]) -> list[Message]:
    """Stored messages as prompt history; of several answers to one question, the last counts
    (an answer that called tools, and the tools' results, stay: the next answer reads them)."""
    out: list[Message] = []
    for m in stored:
        if m.role not in ("user", "assistant", "tool"):
            continue
        calls = calls_from_store(m.tool_calls)
        if m.role == "tool":
            out.append(Message("tool", m.content, tool_call_id=m.tool_call_id))
            continue
        if m.role == "assistant" and out and out[-1].role == "assistant" and not out[-1].tool_calls:
            out[-1] = Message("assistant", m.content, tool_calls=calls)
            continue
        out.append(Message(m.role, m.content, tool_calls=calls))
    return _answered(out)


def _to_store(m: Message) -> NewMessage:
    return NewMessage(
        m.role,
        m.content,
        tool_calls=stored_calls(m.tool_calls) if m.tool_calls else None,
        tool_call_id=m.tool_call_id,
    )


def _language(user_texts: Sequence[str], preferred: Lang | None) -> Lang:
    """The newest user message decides; else the conversation so far; else the client's."""
    for text in reversed(user_texts[-4:]):
        found = detect(text).lang
        if found is not None:
            return found
    return preferred or _DEFAULT_LANG


class _Said:
    """What one conversation's prompts said beyond its stored messages.

    A turn's prompt is its stored history plus the new message, with the memories recalled for
    it riding on that message and the style directives in the system message. Stored, the
    message is what the user typed; rendered again next turn without its memories, the prompt
    would part from the cached one at that message, and a style directive learned meanwhile
    would change the very first tokens. Remembering both keeps every turn's prompt a
    continuation of the last one, so its KV prefix is reused (bench/http_api.py (e)).
    """

    def __init__(self) -> None:
        self._style: dict[str, list[str]] = {}
        self._prompted: OrderedDict[str, str] = OrderedDict()
        self._recalled: set[str] = set()

    def style_for(self, lang: Lang, learned: list[str]) -> list[str]:
        return self._style.setdefault(lang, learned)

    def prompted_as(self, typed: str, sent: str, recalled: list[str]) -> None:
        if sent != typed:
            self._prompted[typed] = sent
            while len(self._prompted) > _KEPT_MESSAGES:
                self._prompted.popitem(last=False)
            if len(self._recalled) < _KEPT_MESSAGES:
                self._recalled.update(recalled)

    def new_lines(self, lines: Iterable[str]) -> list[str]:
        """Recalled lines this conversation's prompts have not carried yet."""
        return [line for line in dict.fromkeys(lines) if line not in self._recalled]

    def as_prompted(self, history: list[Message]) -> list[Message]:
        return [
            Message(m.role, self._prompted[m.content])
            if m.role == "user" and m.content in self._prompted
            else m
            for m in history
        ]


def _from(messages: set[int], hit: Hit) -> bool:
    """Whether `hit` comes from these messages only (a memory of the conversation itself)."""
    return bool(hit.source_message_ids) and messages >= set(hit.source_message_ids)


def _worth_recalling(hit: Hit) -> bool:
    """What goes into a prompt: memories and what the user stated, when they bear on the query.

    Measured with the Qwen2.5 0.5B (bench/quality.py): past questions and the box's own past
    answers, recalled "about the user", made it answer them instead of the new question ("What
    is 45 plus 38?" -> "The user knows that 12 times 7 equals 84"). And top-k with no floor
    always fills the prompt: e5-small scores unrelated short sentences 0.70-0.80 against a
    query, related ones 0.80-0.95, so below the floor a hit needs a full-text match too.
    """
    if hit.source == "message" and (hit.kind != "user" or _only_a_question(hit.text)):
        return False
    return (hit.similarity or 0.0) >= _RECALL_MIN_SIMILARITY or hit.text_rank is not None


def _only_a_question(text: str) -> bool:
    stripped = text.strip()
    return stripped.endswith("?") and not any(mark in stripped[:-1] for mark in ".!\n")


def _recalled_line(hit: Hit) -> str:
    text = " ".join(hit.text.split())
    if len(text) > _RECALLED_CHARS:
        text = text[: _RECALLED_CHARS - 1] + "…"
    return text


def _assemble(
    lang: Lang, system: str, memories: list[str], dialogue: list[Message]
) -> list[Message]:
    """The whole prompt, as `_fit` makes it when everything fits. An empty `system` sends
    none (the model's template keeps its own)."""
    kept = list(dialogue)
    if kept and kept[-1].role == "user" and memories:
        last = kept[-1]
        kept[-1] = Message(last.role, prompts.with_memories(lang, memories, last.content))
    # A history that starts with an answer confuses small models: start with a question.
    while len(kept) > 1 and kept[0].role == "assistant":
        kept.pop(0)
    return [*_system(system), *_answered(kept)]


def _system(text: str) -> list[Message]:
    return [Message("system", text)] if text else []


def _fit(
    engine: Engine,
    n_ctx: int,
    max_tokens: int,
    lang: Lang,
    system_text: str,
    memories: list[str],
    dialogue: list[Message],
) -> tuple[list[Message], int, int]:
    """Messages that fit the context with room for the reply: the newest turns are kept,
    recalled memories (on the newest user message) go before history does, and a last message
    that cannot fit is an error. Returns (messages, messages trimmed, max_tokens for the reply)."""
    reserve = max(1, min(max_tokens, n_ctx // 2))
    budget = n_ctx - reserve - _SAFETY

    def cost(message: Message) -> int:
        return engine.count_tokens(message.content) + _MESSAGE_OVERHEAD

    system = _system(system_text)
    original = dialogue[-1] if dialogue else None
    if original is None or original.role != "user":
        memories = []
    while True:
        last = original
        if last is not None and memories:
            last = Message(last.role, prompts.with_memories(lang, memories, last.content))
        used = sum(map(cost, system)) + (cost(last) if last is not None else 0)
        if used <= budget or not memories:
            break
        memories = memories[:-1]
    if used > budget:
        raise PromptTooLongError(used + reserve, n_ctx)
    kept: list[Message] = [last] if last is not None else []
    for message in reversed(dialogue[:-1]):
        c = cost(message)
        if used + c > budget:
            break
        kept.append(message)
        used += c
    kept.reverse()
    # A history that starts with an answer confuses small models: start with a question.
    while len(kept) > 1 and kept[0].role == "assistant":
        used -= cost(kept.pop(0))
    kept = _answered(kept)
    trimmed = len(dialogue) - len(kept)
    reply = min(max_tokens, max(1, n_ctx - used - _SAFETY))
    return [*system, *kept], trimmed, reply


def _answered(messages: list[Message]) -> list[Message]:
    """Without tool results whose call was trimmed away (a template would show an answer to
    nothing, and the request would be refused)."""
    made = {c.id for m in messages for c in m.tool_calls}
    return [m for m in messages if m.role != "tool" or m.tool_call_id in made]
