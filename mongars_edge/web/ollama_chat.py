"""Ollama's /api/chat and /api/generate, through the same chat pipeline as /v1/chat/completions.

Replies stream as NDJSON (one object a line) unless `stream: false`. Tool calls come back with
their arguments as JSON objects, after the text, in one chunk of their own, as Ollama sends
them; the last line has `done: true`, `done_reason` and the counts and durations in ns.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mongars_edge.chat.lang import from_accept_language
from mongars_edge.chat.pipeline import Prepared, Turn
from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference.engine import Message, Sampling, TokenEvent
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.inference.tools import Tool, ToolCall, ToolStream, check_history, parse_calls
from mongars_edge.web.auth import require_user
from mongars_edge.web.http import BadFieldError, JsonReply
from mongars_edge.web.openai import (
    GenerationError,
    check_model,
    gather_or_disconnect,
    guarded,
    start_stream,
)
from mongars_edge.web.schemas import ollama as wire
from mongars_edge.web.schemas.common import decode, encode
from mongars_edge.web.schemas.openai import SAMPLING_FIELDS

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime

T = TypeVar("T")

NDJSON: Final = "application/x-ndjson"
_TAG: Final = ":latest"


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def read_body(request: Request, kind: type[T]) -> T:
    """The JSON body, whatever its Content-Type: Ollama reads it so, and its documented
    `curl -d` examples send curl's default form type."""
    return decode(await request.body(), kind)


def now() -> str:
    """Ollama's `created_at`: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def untagged(name: str) -> str:
    """`qwen2.5-coder-0.5b-instruct:latest` -> the box's id; other tags stay (and 404)."""
    return name.removesuffix(_TAG)


async def chat_model(runtime: Runtime, name: str) -> str | None:
    """check_model on an Ollama name, with Ollama's wording for a model that is not here."""
    try:
        return await check_model(runtime, untagged(name))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f'model "{name}" not found, try pulling it first ({exc})'
        ) from None


# ---- request -> Turn ---------------------------------------------------------------------------


def _calls(i: int, item: wire.OllamaMessage) -> tuple[ToolCall, ...]:
    if not item.tool_calls:
        return ()
    if item.role != "assistant":
        raise BadFieldError(f"messages[{i}].tool_calls", "only assistant messages make calls")
    return tuple(
        ToolCall(
            name=c.function.name,
            arguments=json.dumps(c.function.arguments, ensure_ascii=False),
            # Ollama's calls often carry no id: numbered here so that results can refer to them.
            id=c.id or f"call_{i}_{j}",
        )
        for j, c in enumerate(item.tool_calls)
    )


def _answered(i: int, item: wire.OllamaMessage, waiting: list[ToolCall]) -> str:
    """The id of the call a tool message answers: by id, by tool name, else the earliest."""
    if item.tool_call_id:
        return item.tool_call_id  # check_history refuses an id no call had
    for call in waiting:
        if item.tool_name is None or call.name == item.tool_name:
            waiting.remove(call)
            return call.id
    named = f" to {item.tool_name}" if item.tool_name else ""
    raise BadFieldError(
        f"messages[{i}]", f"a tool result answers no call{named} an assistant message made"
    )


def to_messages(items: list[wire.OllamaMessage]) -> tuple[Message, ...]:
    out = []
    waiting: list[ToolCall] = []
    for i, item in enumerate(items):
        calls = _calls(i, item)
        waiting += calls
        ref = _answered(i, item, waiting) if item.role == "tool" else None
        if ref is not None and item.tool_call_id:
            waiting[:] = [c for c in waiting if c.id != ref]
        out.append(Message(item.role, item.content, tool_calls=calls, tool_call_id=ref))
    messages = tuple(out)
    try:
        check_history(messages)
    except InvalidRequestError as exc:
        raise BadFieldError(getattr(exc, "param", None) or "messages", str(exc)) from None
    return messages


def to_tools(items: list[wire.OllamaTool] | None) -> tuple[Tool, ...]:
    tools = []
    for i, item in enumerate(items or ()):
        f = item.function
        try:
            tools.append(Tool(f.name, f.description or "", f.parameters))
        except InvalidRequestError as exc:
            raise BadFieldError(f"tools[{i}].function.parameters", str(exc)) from None
    if len({t.name for t in tools}) != len(tools):
        raise BadFieldError("tools", "two tools have the same name")
    return tuple(tools)


def to_sampling(
    options: wire.OllamaOptions | None, default_max: int
) -> tuple[Sampling, frozenset[str]]:
    """Ollama's options as the engine's sampling, and the fields the client chose (the model's
    own defaults fill the others)."""
    o = options or wire.OllamaOptions()
    chosen = {"max_tokens", "seed", "stop"}
    values: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = getattr(o, name)
        if value is not None:
            values[name] = value
            chosen.add(name)
    # Ollama: a negative seed is a random one; -1 / -2 predict "until done" (the box's limit).
    seed = o.seed & 0xFFFFFFFF if o.seed is not None and o.seed >= 0 else None
    max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else default_max
    sampling = replace(
        Sampling(), **values, seed=seed, max_tokens=max_tokens, stop=tuple(o.stop or ())
    )
    return sampling, frozenset(chosen)


def _json_schema(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if isinstance(fmt, str):  # "json"
        return {"type": "object"}
    return fmt


def chat_turn(body: wire.OllamaChatRequest, accept_language: str | None, default_max: int) -> Turn:
    """A decoded /api/chat body as a pipeline Turn (the model is checked by the caller)."""
    tools = to_tools(body.tools)
    schema = _json_schema(body.format)
    if tools and schema is not None:
        raise BadFieldError("format", "cannot be combined with tools")
    sampling, chosen = to_sampling(body.options, default_max)
    return Turn(
        messages=to_messages(body.messages),
        tools=tools,
        tool_choice="auto" if tools else "none",
        sampling=sampling,
        sampling_set=chosen,
        json_schema=schema,
        preferred_lang=from_accept_language(accept_language),
    )


def generate_turn(
    body: wire.OllamaGenerateRequest, accept_language: str | None, default_max: int
) -> Turn:
    messages = [Message("system", body.system)] if body.system else []
    messages.append(Message("user", body.prompt or ""))
    sampling, chosen = to_sampling(body.options, default_max)
    return Turn(
        messages=tuple(messages),
        sampling=sampling,
        sampling_set=chosen,
        json_schema=_json_schema(body.format),
        preferred_lang=from_accept_language(accept_language),
    )


# ---- answers -----------------------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _metrics(last: TokenEvent, started: float, load_s: float) -> dict[str, Any]:
    """Ollama's counts and durations of the last event (ns)."""
    usage, timings = last.usage, last.timings
    prompt = usage.prompt_tokens if usage else 0
    generated = usage.completion_tokens if usage else 0
    prompt_s = eval_s = 0.0
    if timings is not None:
        prompt_s = max(0.0, timings.ttft_s - timings.queued_s)
        eval_s = (
            generated / timings.generation_tok_s
            if timings.generation_tok_s > 0
            else max(0.0, timings.total_s - timings.ttft_s)
        )
    return {
        "done_reason": "length" if last.finish_reason == "length" else "stop",
        "total_duration": _ns(time.perf_counter() - started),
        "load_duration": _ns(load_s),
        "prompt_eval_count": prompt,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": generated,
        "eval_duration": _ns(eval_s),
    }


def _out_calls(calls: list[ToolCall]) -> list[wire.OllamaOutToolCall]:
    return [
        wire.OllamaOutToolCall(
            id=c.id,
            function=wire.OllamaOutCall(name=c.name, arguments=c.argument_object(), index=i),
        )
        for i, c in enumerate(calls)
    ]


# Builds one chunk: (text, calls, done, metrics) -> the route's reply object.
_Make = Callable[[str, list[ToolCall], bool, dict[str, Any]], Any]


def _chat_maker(model: str) -> _Make:
    def make(text: str, calls: list[ToolCall], done: bool, metrics: dict[str, Any]) -> Any:
        message = wire.OllamaOutMessage(content=text)
        if calls:
            message.tool_calls = _out_calls(calls)
        return wire.OllamaChatChunk(
            model=model, created_at=now(), message=message, done=done, **metrics
        )

    return make


def _generate_maker(model: str) -> _Make:
    def make(text: str, calls: list[ToolCall], done: bool, metrics: dict[str, Any]) -> Any:
        return wire.OllamaGenerateChunk(
            model=model, created_at=now(), response=text, done=done, **metrics
        )

    return make


async def _ndjson(
    make: _Make,
    prepared: Prepared,
    first: TokenEvent,
    events: AsyncGenerator[TokenEvent, None],
    started: float,
    load_s: float,
) -> AsyncIterator[bytes]:
    async def all_events() -> AsyncIterator[TokenEvent]:
        yield first
        async for event in events:
            yield event

    turn = prepared.turn
    split = ToolStream(turn.tools if turn.tool_choice != "none" else ())
    try:
        async for event in guarded(all_events()):
            shown = split.feed(event.text) if event.text else ""
            if shown:
                yield encode(make(shown, [], False, {})) + b"\n"
            if event.finish_reason is None:
                continue
            rest, calls = split.finish()
            if rest:
                yield encode(make(rest, [], False, {})) + b"\n"
            if event.finish_reason in ("error", "cancelled"):
                failed = f"generation failed: {event.error or event.finish_reason}"
                yield encode(wire.OllamaError(error=failed)) + b"\n"
                break
            if calls:
                yield encode(make("", calls, False, {})) + b"\n"
            yield encode(make("", [], True, _metrics(event, started, load_s))) + b"\n"
            break
    finally:
        # Runs on a client disconnect too (the task is cancelled): the engine stops.
        await events.aclose()


async def _answer(
    request: Request, runtime: Runtime, turn: Turn, make: _Make, stream: bool, load_s: float
) -> Response:
    started = time.perf_counter() - load_s
    principal = await require_user(request)
    prepared = await runtime.chat.prepare(turn, principal.user_id)
    first, events = await start_stream(runtime, prepared)
    if stream:
        lines = _ndjson(make, prepared, first, events, started, load_s)
        return StreamingResponse(lines, media_type=NDJSON, headers={"Cache-Control": "no-cache"})
    gathered = await gather_or_disconnect(request, first, events)
    if gathered is None:
        return Response(status_code=499)  # nobody is listening; the turn was kept as partial
    text, last = gathered
    if last.finish_reason in ("error", "cancelled"):
        raise GenerationError(f"generation failed: {last.error or last.finish_reason}")
    calls: list[ToolCall] = []
    if turn.tools and turn.tool_choice != "none":
        content, calls = parse_calls(text, turn.tools)
        text = content if calls else text
    return JsonReply(make(text, calls, True, _metrics(last, started, load_s)))


def _load_reason(keep_alive: float | str | None) -> str:
    # keep_alive 0 is Ollama's "unload": answered as Ollama does, but the box keeps its model.
    return "unload" if keep_alive in (0, "0", "0s") else "load"


async def _loaded(runtime: Runtime, name: str) -> tuple[str | None, float]:
    began = time.perf_counter()
    wanted = await chat_model(runtime, name)
    return wanted, time.perf_counter() - began


async def chat(request: Request) -> Response:
    await require_user(request)
    runtime = _runtime(request)
    body = await read_body(request, wire.OllamaChatRequest)
    turn = chat_turn(
        body, request.headers.get("accept-language"), runtime.settings.reply_max_tokens
    )
    wanted, load_s = await _loaded(runtime, body.model)
    if not body.messages:
        # Ollama's way to load a model: the box has it loaded now (check_model did).
        return JsonReply(
            wire.OllamaChatChunk(
                model=body.model,
                created_at=now(),
                message=wire.OllamaOutMessage(content=""),
                done=True,
                done_reason=_load_reason(body.keep_alive),
            )
        )
    turn = replace(turn, model=wanted)
    return await _answer(
        request, runtime, turn, _chat_maker(body.model), body.stream is not False, load_s
    )


async def generate(request: Request) -> Response:
    await require_user(request)
    runtime = _runtime(request)
    body = await read_body(request, wire.OllamaGenerateRequest)
    turn = generate_turn(
        body, request.headers.get("accept-language"), runtime.settings.reply_max_tokens
    )
    wanted, load_s = await _loaded(runtime, body.model)
    if not body.prompt:
        # Ollama's way to load a model: the box has it loaded now (check_model did).
        return JsonReply(
            wire.OllamaGenerateChunk(
                model=body.model,
                created_at=now(),
                response="",
                done=True,
                done_reason=_load_reason(body.keep_alive),
            )
        )
    turn = replace(turn, model=wanted)
    return await _answer(
        request, runtime, turn, _generate_maker(body.model), body.stream is not False, load_s
    )
